//! Verbs for writes that carry an idempotency key: a post with any headers as a script or a
//! browser sends it (the answer's status, Location, `Idempotent-Replayed` and body), the keys and
//! hidden fields of the node's forms, and what a tenant's file holds (contacts by name, key
//! records).

use super::cluster::Cluster;
use super::session::{client, UserSession};

/// One answer to a post.
#[derive(Debug)]
pub struct Posted {
    pub status: u16,
    pub location: Option<String>,
    /// The answer says it is the first answer again (`Idempotent-Replayed: true`).
    pub replayed: bool,
    pub body: String,
}

impl Posted {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl UserSession {
    /// POSTs a form under the org with the session's CSRF token and these extra headers (an
    /// `Idempotency-Key`, `Accept: application/json`); never follows a redirect.
    pub fn post_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Posted {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        if !fields.iter().any(|(k, _)| *k == "_csrf") {
            all.push(("_csrf", &self.csrf));
        }
        let mut req = client()
            .post(format!("{}/o/{}{path}", self.base, self.org))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .form(&all);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().expect("POST answers");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (location, replayed) = (header("location"), header("idempotent-replayed"));
        Posted {
            status: resp.status().as_u16(),
            location,
            replayed: replayed.as_deref() == Some("true"),
            body: resp.text().unwrap_or_default(),
        }
    }

    /// As a script sends it: JSON answers, the key in the `Idempotency-Key` header.
    pub fn post_json_keyed(&self, path: &str, key: &str, fields: &[(&str, &str)]) -> Posted {
        self.post_with(
            path,
            fields,
            &[("accept", "application/json"), ("idempotency-key", key)],
        )
    }
}

/// Every hidden field of a page's forms, in order, as (name, value); values are unescaped for
/// the few entities maud writes.
pub fn hidden_fields_in(page: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let v = tag[at..].split('"').next()?;
        Some(
            v.replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    page.split("<input")
        .skip(1)
        .filter_map(|rest| rest.split('>').next())
        .filter(|tag| tag.contains("type=\"hidden\""))
        .filter_map(|tag| Some((attr(tag, "name")?, attr(tag, "value")?)))
        .collect()
}

/// The idempotency key of the (first) write form in a page.
pub fn form_key_in(page: &str) -> Option<String> {
    hidden_fields_in(page)
        .into_iter()
        .find(|(name, _)| name == "idempotency_key")
        .map(|(_, v)| v)
}

impl Cluster {
    fn tenant_query(&self, region: &str, org: &str, sql: &str, arg: &str) -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            self.tenant_file(region, org),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the tenant's file");
        let params: &[&dyn rusqlite::ToSql] = if sql.contains("?1") { &[&arg] } else { &[] };
        conn.query_row(sql, params, |r| r.get(0))
            .expect("query the tenant's file")
    }

    /// How many contacts of this name the org's file on a region's node holds.
    pub fn contacts_named(&self, region: &str, org: &str, name: &str) -> i64 {
        self.tenant_query(
            region,
            org,
            "SELECT COUNT(*) FROM contacts WHERE name = ?1",
            name,
        )
    }

    /// How many idempotency keys the org's file on a region's node remembers.
    pub fn idempotency_records(&self, region: &str, org: &str) -> i64 {
        self.tenant_query(region, org, "SELECT COUNT(*) FROM idempotency_keys", "")
    }
}
