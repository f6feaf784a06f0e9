//! The operator's client of the control plane's JSON API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;

use crate::ApiArgs;

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Where `hemvist dev` writes what scripts need, to pick the running demo up by default.
pub fn dev_json() -> Option<serde_json::Value> {
    let dir = std::env::var_os("HEMVIST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".hemvist"));
    let text = std::fs::read_to_string(dir.join("dev.json")).ok()?;
    serde_json::from_str(&text).ok()
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        // The running dev's dev.json only when no control plane is named at all: a token meant
        // for one system is never sent to another.
        let dev = if args.control.is_none() && args.token.is_none() {
            dev_json()
        } else {
            None
        };
        let from_dev = |key: &str| {
            dev.as_ref()
                .and_then(|d| d.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let Some(base) = args.control.clone().or_else(|| from_dev("control_url")) else {
            bail!("no control plane given: pass --control URL or set HEMVIST_CONTROL (or run `hemvist dev` here)");
        };
        let Some(token) = args.token.clone().or_else(|| from_dev("admin_token")) else {
            bail!("no admin token given: pass --token or set HEMVIST_TOKEN");
        };
        let ca = args
            .ca
            .clone()
            .or_else(|| from_dev("ca_file").map(PathBuf::from));
        Self::connect(&base, &token, ca.as_deref())
    }

    /// A client of the control plane at `base` with an admin token; over https, the control
    /// plane's certificate must chain to `ca` if given, else to the system's roots.
    pub fn connect(base: &str, token: &str, ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("read CA file {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parse CA file {}", ca.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().context("build HTTP client")?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The control plane's URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A GET whose body the caller streams (no overall time limit: an export may be large);
    /// an error answer becomes its message.
    pub async fn get_raw(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let resp = self
            .http
            .get(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .with_context(|| format!("GET {path} at {}", self.base))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        Ok(resp)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = self.http.get(format!("{}/api/v1{path}", self.base));
        self.send(req).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let req = self
            .http
            .post(format!("{}/api/v1{path}", self.base))
            .json(body);
        self.send(req).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = self.http.delete(format!("{}/api/v1{path}", self.base));
        self.send(req).await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("reach the control plane at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .context("read the control plane's answer")?;
        if !status.is_success() {
            let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| v.pointer("/error/message"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            let kind = parsed
                .as_ref()
                .and_then(|v| v.pointer("/error/kind"))
                .and_then(|m| m.as_str())
                .unwrap_or("error")
                .to_string();
            bail!("{kind} ({}): {message}", status.as_u16());
        }
        serde_json::from_slice(&bytes).context("parse the control plane's answer")
    }
}
