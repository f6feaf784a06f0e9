//! An org user's session against a real node, as a browser would hold it: the session cookie
//! and the page's CSRF token, over plain HTTP (no redirects followed, so tests see them).

use std::time::Duration;

use serde_json::Value;

pub struct UserSession {
    pub base: String,
    pub org: String,
    pub cookie: String,
    pub csrf: String,
    http: reqwest::blocking::Client,
}

pub fn client() -> reqwest::blocking::Client {
    super::http()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// The value of `name="_csrf"` in a page.
pub fn csrf_in(page: &str) -> Option<String> {
    let at = page.find("name=\"_csrf\" value=\"")? + "name=\"_csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}

fn set_cookie(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

/// Signs in through the real form (GET for the form's token, POST the credentials).
pub fn sign_in(base: &str, org: &str, email: &str, password: &str) -> Result<UserSession, u16> {
    let http = client();
    let form = http
        .get(format!("{base}/o/{org}/signin"))
        .send()
        .expect("sign-in form");
    assert_eq!(form.status().as_u16(), 200, "sign-in form of {org}");
    let signin_cookie = set_cookie(&form, "hv_signin").expect("sign-in cookie");
    let token = csrf_in(&form.text().unwrap()).expect("form token");
    let resp = http
        .post(format!("{base}/o/{org}/signin"))
        .header("cookie", &signin_cookie)
        .header("origin", base)
        .form(&[
            ("_csrf", token.as_str()),
            ("email", email),
            ("password", password),
        ])
        .send()
        .expect("sign in");
    if resp.status().as_u16() != 303 {
        return Err(resp.status().as_u16());
    }
    let cookie = set_cookie(&resp, "hv_session").expect("session cookie");
    let mut s = UserSession {
        base: base.to_string(),
        org: org.to_string(),
        cookie,
        csrf: String::new(),
        http,
    };
    let (status, _, page) = s.get("/");
    assert_eq!(status, 200, "the search page after signing in");
    s.csrf = csrf_in(&page).expect("page token");
    Ok(s)
}

impl UserSession {
    fn url(&self, path: &str) -> String {
        format!("{}/o/{}{path}", self.base, self.org)
    }

    /// GET a path under the org: (status, Location, body).
    pub fn get(&self, path: &str) -> (u16, Option<String>, String) {
        self.get_with(&self.url(path), &[])
    }

    /// GET any URL with this session's cookie and extra headers.
    pub fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
        let mut req = self.http.get(url).header("cookie", &self.cookie);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().expect("GET answers");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, location, resp.text().unwrap_or_default())
    }

    /// The JSON answer of a path under the org.
    pub fn json(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.get_with(&self.url(path), &[("accept", "application/json")]);
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// POST a form with the session's CSRF token; the status, or `None` if the node did not
    /// answer (killed, or not listening).
    pub fn try_post(&self, path: &str, fields: &[(&str, &str)]) -> Option<u16> {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("_csrf", &self.csrf));
        self.http
            .post(self.url(path))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .form(&all)
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// As [`UserSession::try_post`], with the answer's Location.
    pub fn try_post_seen(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Option<(u16, Option<String>)> {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("_csrf", &self.csrf));
        let resp = self
            .http
            .post(self.url(path))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .form(&all)
            .send()
            .ok()?;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Some((resp.status().as_u16(), location))
    }

    /// POST a form (the session's CSRF token added unless `csrf` is given).
    pub fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        csrf: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        all.push(("_csrf", csrf.unwrap_or(&self.csrf)));
        let resp = self
            .http
            .post(self.url(path))
            .header("cookie", &self.cookie)
            .header("origin", &self.base)
            .form(&all)
            .send()
            .expect("POST answers");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, location, resp.text().unwrap_or_default())
    }
}
