//! An org user's session as a browser holds it: signed in through the real form, then adding
//! contacts through the real form (session cookie, the page's CSRF token, the page's `Origin`),
//! with redirects not followed, so the writer sees every 307 and 503.
//!
//! The same session works at the org's new home after a move: sessions live in the org's
//! database, which moves with it.

use std::time::Duration;

use anyhow::{bail, Context};

/// Everything but letters, digits and `-_.` escaped, as a form field.
const FIELD: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, FIELD).to_string()
}

pub struct Session {
    http: reqwest::Client,
    pub org: String,
    cookie: String,
    csrf: String,
}

/// What a node answered a form post.
pub enum Answer {
    /// 303: the contact is stored.
    Acked,
    /// 307: the org lives elsewhere now; the same request goes to this URL.
    Moved(String),
    /// 503: retryable (a move's fence, or no lease for a moment).
    Unavailable,
    /// Anything else: the write is refused.
    Refused(u16),
    /// No answer at all (refused connection, timeout): whether it was stored is unknown.
    Silent,
}

impl Answer {
    pub fn describe(&self) -> String {
        match self {
            Answer::Acked => "303".into(),
            Answer::Moved(to) => format!("307 -> {}", origin_of(to)),
            Answer::Unavailable => "503".into(),
            Answer::Refused(status) => status.to_string(),
            Answer::Silent => "no answer".into(),
        }
    }
}

fn cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

fn csrf_in(page: &str) -> Option<String> {
    let at = page.find("name=\"_csrf\" value=\"")? + "name=\"_csrf\" value=\"".len();
    Some(page[at..].split('"').next()?.to_string())
}

/// `scheme://host:port` of a URL on a node.
pub fn origin_of(url: &str) -> &str {
    url.find("/o/").map_or(url, |at| &url[..at])
}

/// Signs in at `base` (the org's home), trying again for a while: the user may still be on
/// its way to the node.
pub async fn sign_in(
    base: &str,
    org: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<Session> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut last = String::new();
    for _ in 0..40 {
        let form = http.get(format!("{base}/o/{org}/signin")).send().await?;
        let Some(signin) = cookie(&form, "hv_signin") else {
            last = format!("the sign-in form answered {}", form.status());
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let token = csrf_in(&form.text().await?).context("the sign-in form has no token")?;
        let resp = http
            .post(format!("{base}/o/{org}/signin"))
            .header("cookie", signin)
            .header("origin", base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "_csrf={}&email={}&password={}",
                enc(&token),
                enc(email),
                enc(password)
            ))
            .send()
            .await?;
        let Some(session) = cookie(&resp, "hv_session") else {
            last = format!("signing in answered {}", resp.status());
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        let page = http
            .get(format!("{base}/o/{org}/"))
            .header("cookie", &session)
            .send()
            .await?
            .text()
            .await?;
        let csrf = csrf_in(&page).context("the search page has no token")?;
        return Ok(Session {
            http,
            org: org.to_string(),
            cookie: session,
            csrf,
        });
    }
    bail!("could not sign in to {org} at {base}: {last}")
}

impl Session {
    /// Posts the new-contact form to `url` (the org's `/contacts` on some node).
    pub async fn add_contact(&self, url: &str, name: &str) -> Answer {
        let body = format!("_csrf={}&name={}&city=Uppsala", enc(&self.csrf), enc(name));
        let sent = self
            .http
            .post(url)
            .header("cookie", &self.cookie)
            // The node accepts form posts from its own pages only.
            .header("origin", origin_of(url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let Ok(resp) = sent else {
            return Answer::Silent;
        };
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read to the end, so the connection is reused.
        let _ = resp.bytes().await;
        match (status, location) {
            (303, _) => Answer::Acked,
            (307, Some(to)) => Answer::Moved(to),
            (503, _) => Answer::Unavailable,
            (other, _) => Answer::Refused(other),
        }
    }
}
