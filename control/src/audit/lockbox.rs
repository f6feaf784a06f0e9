//! Where checkpoints are kept: an S3 bucket, each object written with Object Lock retention so
//! that no one (in `compliance` mode, not even the bucket's owner) can delete or overwrite a
//! version before its time; or, for `hemvist dev`, a folder.
//!
//! `object_store` cannot set the Object Lock headers nor list an object's versions, and the
//! AWS SDK would bring a second HTTP and TLS stack (with a C build) into the tree, so the four
//! requests used here are signed with SigV4 in this file and sent with the `reqwest` client
//! the nodes already use for S3. A checkpoint hidden behind a delete marker is still found:
//! listing reads every version.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::{CheckpointStore, LockMode};

/// One stored version of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Relative to the store's prefix.
    pub name: String,
    pub version: Option<String>,
}

/// An object's body and the lock the store reports on it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub lock_mode: Option<String>,
    pub locked_until: Option<String>,
}

pub enum Lockbox {
    Folder(PathBuf),
    S3(Box<S3Box>),
}

pub struct S3Box {
    client: reqwest::Client,
    endpoint: reqwest::Url,
    bucket: String,
    prefix: String,
    region: String,
    key_id: String,
    secret: String,
    lock: LockMode,
    lock_days: u32,
}

impl Lockbox {
    pub fn open(c: &CheckpointStore) -> anyhow::Result<Lockbox> {
        if let Some(folder) = c.url.strip_prefix("file://") {
            return Ok(Lockbox::Folder(PathBuf::from(folder)));
        }
        let rest = c
            .url
            .strip_prefix("s3://")
            .context("checkpoints url must be s3:// or file://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("[audit.checkpoints] url {}: no bucket", c.url);
        }
        let endpoint = c
            .endpoint
            .as_deref()
            .context("[audit.checkpoints] endpoint is required")?;
        let endpoint = reqwest::Url::parse(endpoint).context("[audit.checkpoints] endpoint")?;
        hemvist_net::tls::install_crypto();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(ca) = &c.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            builder = builder.tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("parse {}", ca.display()))?,
            );
        }
        Ok(Lockbox::S3(Box::new(S3Box {
            client: builder.build()?,
            endpoint,
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
            region: c.s3_region.clone(),
            key_id: c.access_key_id.clone().context(
                "no access key for the checkpoint store: set HEMVIST_AUDIT_S3_ACCESS_KEY_ID",
            )?,
            secret: c.secret_access_key.clone().context(
                "no secret key for the checkpoint store: set HEMVIST_AUDIT_S3_SECRET_ACCESS_KEY",
            )?,
            lock: c.lock,
            lock_days: c.lock_days,
        })))
    }

    /// Writes `name`; returns the version the store gave it, if it keeps versions.
    pub async fn put(
        &self,
        name: &str,
        body: Vec<u8>,
        now_ms: i64,
    ) -> anyhow::Result<Option<String>> {
        match self {
            Lockbox::Folder(dir) => {
                let path = dir.join(name);
                let parent = path.parent().context("checkpoint path")?.to_path_buf();
                tokio::fs::create_dir_all(&parent).await?;
                let tmp = path.with_extension("tmp");
                tokio::fs::write(&tmp, &body).await?;
                tokio::fs::rename(&tmp, &path).await?;
                Ok(None)
            }
            Lockbox::S3(s3) => s3.put(name, body, now_ms).await,
        }
    }

    /// Every stored version of every object under `under`, by name.
    pub async fn list(&self, under: &str) -> anyhow::Result<Vec<Stored>> {
        match self {
            Lockbox::Folder(dir) => {
                let mut out = Vec::new();
                let mut stack = vec![dir.join(under)];
                while let Some(d) = stack.pop() {
                    let Ok(mut entries) = tokio::fs::read_dir(&d).await else {
                        continue;
                    };
                    while let Some(e) = entries.next_entry().await? {
                        let p = e.path();
                        if e.file_type().await?.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "json") {
                            let rel = p.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
                            out.push(Stored {
                                name: rel,
                                version: None,
                            });
                        }
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
            Lockbox::S3(s3) => s3.list(under).await,
        }
    }

    pub async fn get(&self, s: &Stored) -> anyhow::Result<Fetched> {
        match self {
            Lockbox::Folder(dir) => Ok(Fetched {
                body: tokio::fs::read(dir.join(&s.name)).await?,
                lock_mode: None,
                locked_until: None,
            }),
            Lockbox::S3(s3) => s3.get(s).await,
        }
    }
}

impl S3Box {
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    async fn put(&self, name: &str, body: Vec<u8>, now_ms: i64) -> anyhow::Result<Option<String>> {
        let digest = Sha256::digest(&body);
        // A checksum is required with Object Lock headers (AWS accepts it in place of
        // Content-MD5 when the algorithm is named).
        let mut headers = vec![
            (
                "x-amz-checksum-sha256".to_string(),
                base64::engine::general_purpose::STANDARD.encode(digest),
            ),
            (
                "x-amz-sdk-checksum-algorithm".to_string(),
                "SHA256".to_string(),
            ),
        ];
        let mode = match self.lock {
            LockMode::Compliance => Some("COMPLIANCE"),
            LockMode::Governance => Some("GOVERNANCE"),
            LockMode::Off => None,
        };
        if let Some(mode) = mode {
            let until = now_ms / 1000 + i64::from(self.lock_days) * 86_400;
            headers.push(("x-amz-object-lock-mode".into(), mode.into()));
            headers.push((
                "x-amz-object-lock-retain-until-date".into(),
                iso_time(until),
            ));
        }
        let resp = self
            .send(reqwest::Method::PUT, &self.key(name), &[], headers, body)
            .await?;
        let version = header(&resp, "x-amz-version-id");
        check(resp, "PUT", name).await?;
        if mode.is_some() && version.is_none() {
            bail!("the checkpoint store kept no version of {name}: Object Lock needs a bucket with versioning and Object Lock enabled");
        }
        Ok(version)
    }

    async fn list(&self, under: &str) -> anyhow::Result<Vec<Stored>> {
        let prefix = self.key(under);
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let versioned = self.lock != LockMode::Off;
        let mut out = Vec::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        for _page in 0..100_000 {
            let mut query = vec![("prefix".to_string(), prefix.clone())];
            if versioned {
                query.push(("versions".into(), String::new()));
                if let Some(k) = &markers.0 {
                    query.push(("key-marker".into(), k.clone()));
                }
                if let Some(v) = &markers.1 {
                    query.push(("version-id-marker".into(), v.clone()));
                }
            } else {
                query.push(("list-type".into(), "2".into()));
                if let Some(t) = &markers.0 {
                    query.push(("continuation-token".into(), t.clone()));
                }
            }
            let resp = self
                .send(reqwest::Method::GET, "", &query, Vec::new(), Vec::new())
                .await?;
            let xml = check(resp, "LIST", &prefix).await?;
            let xml = String::from_utf8_lossy(&xml).into_owned();
            let block = if versioned { "Version" } else { "Contents" };
            for b in blocks(&xml, block) {
                let Some(key) = tag(b, "Key") else { continue };
                out.push(Stored {
                    name: key.get(strip..).unwrap_or_default().to_string(),
                    version: tag(b, "VersionId").filter(|v| v != "null"),
                });
            }
            if tag(&xml, "IsTruncated").as_deref() != Some("true") {
                out.sort_by(|a, b| a.name.cmp(&b.name));
                return Ok(out);
            }
            markers = if versioned {
                (tag(&xml, "NextKeyMarker"), tag(&xml, "NextVersionIdMarker"))
            } else {
                (tag(&xml, "NextContinuationToken"), None)
            };
        }
        bail!("listing {prefix} did not end")
    }

    async fn get(&self, s: &Stored) -> anyhow::Result<Fetched> {
        let query: Vec<(String, String)> = s
            .version
            .iter()
            .map(|v| ("versionId".to_string(), v.clone()))
            .collect();
        let resp = self
            .send(
                reqwest::Method::GET,
                &self.key(&s.name),
                &query,
                Vec::new(),
                Vec::new(),
            )
            .await?;
        let lock_mode = header(&resp, "x-amz-object-lock-mode");
        let locked_until = header(&resp, "x-amz-object-lock-retain-until-date");
        let body = check(resp, "GET", &s.name).await?;
        Ok(Fetched {
            body,
            lock_mode,
            locked_until,
        })
    }

    /// One SigV4-signed, path-style request.
    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(String, String)],
        mut headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> anyhow::Result<reqwest::Response> {
        let path = if key.is_empty() {
            format!("/{}", encode(&self.bucket, false))
        } else {
            format!("/{}/{}", encode(&self.bucket, false), encode(key, false))
        };
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (encode(k, true), encode(v, true)))
            .collect();
        pairs.sort();
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let host = match self.endpoint.port() {
            Some(p) => format!("{}:{p}", self.endpoint.host_str().unwrap_or_default()),
            None => self.endpoint.host_str().unwrap_or_default().to_string(),
        };
        let now = time::OffsetDateTime::now_utc();
        let amz_date = format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let day = &amz_date[..8];
        let payload = hex::encode(Sha256::digest(&body));
        headers.push(("host".into(), host));
        headers.push(("x-amz-content-sha256".into(), payload.clone()));
        headers.push(("x-amz-date".into(), amz_date.clone()));
        headers.sort();
        let canonical_headers: String = headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect();
        let signed: String = headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let canonical = format!(
            "{}\n{path}\n{query}\n{canonical_headers}\n{signed}\n{payload}",
            method.as_str()
        );
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut k = hmac(format!("AWS4{}", self.secret).as_bytes(), day.as_bytes());
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.key_id
        );
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        url.set_query(if query.is_empty() { None } else { Some(&query) });
        let mut req = self
            .client
            .request(method, url)
            .header("authorization", auth);
        for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
            req = req.header(k.as_str(), v.as_str());
        }
        Ok(req.body(body).send().await?)
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// SigV4's URI encoding: everything but the unreserved characters (and `/` in a path).
fn encode(s: &str, slash_too: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash_too => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `2033-12-01T20:00:00Z` for seconds since 1970.
fn iso_time(secs: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The body of a 2xx answer, or the store's error code and message.
async fn check(resp: reqwest::Response, what: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    let status = resp.status();
    let body = resp.bytes().await?.to_vec();
    if status.is_success() {
        return Ok(body);
    }
    let text = String::from_utf8_lossy(&body);
    bail!(
        "checkpoint store: {what} {name}: {status} {} {}",
        tag(&text, "Code").unwrap_or_default(),
        tag(&text, "Message").unwrap_or_default()
    )
}

/// The insides of every `<name>…</name>` in `xml`.
fn blocks<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

/// The text of the first `<name>` in `xml`, unescaped.
fn tag(xml: &str, name: &str) -> Option<String> {
    blocks(xml, name).first().map(|t| {
        t.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_sigv4_wants() {
        assert_eq!(encode("a b/c~d", false), "a%20b/c~d");
        assert_eq!(encode("a b/c", true), "a%20b%2Fc");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_764_057_600), "2025-11-25T08:00:00Z");
    }

    #[test]
    fn reads_a_version_listing() {
        let xml = "<ListVersionsResult><IsTruncated>false</IsTruncated>\
            <Version><Key>p/checkpoints/s/000000000001.json</Key><VersionId>v1</VersionId></Version>\
            <DeleteMarker><Key>p/checkpoints/s/000000000001.json</Key><VersionId>d1</VersionId></DeleteMarker>\
            <Version><Key>a&amp;b</Key><VersionId>null</VersionId></Version></ListVersionsResult>";
        let v = blocks(xml, "Version");
        assert_eq!(v.len(), 2);
        assert_eq!(tag(v[0], "VersionId").as_deref(), Some("v1"));
        assert_eq!(tag(v[1], "Key").as_deref(), Some("a&b"));
    }
}
