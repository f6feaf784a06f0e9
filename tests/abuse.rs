//! What the internet does to a node's sign-in and forms, against real `hemvist` processes:
//! floods of wrong passwords (memory stays bounded and comes back), guessing one account
//! (throttled after 100 failures a minute), forged or replayed sign-in tokens, form posts from
//! other sites, bytes that are not UTF-8, hostile `next` values, and answers that a browser or
//! a proxy could cache or sniff.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};
use support::cluster::{raw_status, Cluster, EU_NORTH, US_EAST};
use support::session::{client, csrf_in};

const PASSWORD: &str = "correct horse battery";

/// A sign-in form as a browser holds it: its cookie and its field, which must match.
struct SigninForm {
    cookie: String,
    token: String,
}

fn set_cookie(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn signin_form(http: &Client, base: &str, org: &str) -> SigninForm {
    let resp = http
        .get(format!("{base}/o/{org}/signin"))
        .send()
        .expect("sign-in form");
    assert_eq!(resp.status().as_u16(), 200);
    let cookie = set_cookie(&resp, "hv_signin").expect("sign-in cookie");
    let token = csrf_in(&resp.text().unwrap()).expect("form token");
    SigninForm { cookie, token }
}

/// POSTs the sign-in form as a browser on `origin` would.
fn post_signin(
    http: &Client,
    base: &str,
    org: &str,
    form: &SigninForm,
    fields: &[(&str, &str)],
    origin: &str,
) -> Response {
    let mut all = vec![("_csrf", form.token.as_str())];
    all.extend_from_slice(fields);
    http.post(format!("{base}/o/{org}/signin"))
        .header("cookie", &form.cookie)
        .header("origin", origin)
        .form(&all)
        .send()
        .expect("sign-in answers")
}

fn attempt(http: &Client, base: &str, org: &str, email: &str, password: &str) -> Response {
    let form = signin_form(http, base, org);
    post_signin(
        http,
        base,
        org,
        &form,
        &[("email", email), ("password", password)],
        base,
    )
}

/// A signed-in user as a browser holds them: the session cookie and the page's CSRF token.
struct Browser {
    http: Client,
    base: String,
    org: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    fn sign_in(base: &str, org: &str, email: &str) -> Browser {
        let http = client();
        let resp = attempt(&http, base, org, email, PASSWORD);
        assert_eq!(resp.status().as_u16(), 303, "sign in to {org}");
        let cookie = set_cookie(&resp, "hv_session").expect("session cookie");
        let page = http
            .get(format!("{base}/o/{org}/"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .text()
            .unwrap();
        let csrf = csrf_in(&page).expect("page token");
        Browser {
            http,
            base: base.to_string(),
            org: org.to_string(),
            cookie,
            csrf,
        }
    }

    fn post(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Response {
        let mut req = self
            .http
            .post(format!("{}/o/{}{path}", self.base, self.org))
            .header("cookie", &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().expect("POST answers")
    }

    fn form_body(&self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        all.iter()
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = self
            .http
            .get(format!("{}/o/{}{path}", self.base, self.org))
            .header("cookie", &self.cookie);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().expect("GET answers")
    }

    fn total(&self, q: &str) -> u64 {
        let found: Value = self
            .get(
                &format!("/?q={}", percent(q)),
                &[("accept", "application/json")],
            )
            .json()
            .unwrap();
        found["total"].as_u64().expect("a total")
    }
}

fn percent(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn org_with_user(c: &Cluster, org: &str) -> (String, String) {
    c.create_org_ready(org, json!({"region": "eu-north"}));
    let email = format!("ada@{org}.example");
    c.add_user(org, &email, PASSWORD);
    (c.node_url("eu-north"), email)
}

/// The pid of the node process in `region`, found by its config file on its command line.
fn node_pid(c: &Cluster, region: &str) -> u32 {
    let id = c
        .nodes
        .values()
        .find(|n| n.region == region)
        .map(|n| n.id.clone())
        .expect("a node in the region");
    let config = c.dir.path().join(format!("node-{id}.toml"));
    let config = config.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == config.as_bytes()))
        })
        .expect("the node's process")
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

fn node_log(c: &Cluster, region: &str) -> String {
    let id = &c
        .nodes
        .values()
        .find(|n| n.region == region)
        .expect("a node")
        .id;
    std::fs::read_to_string(c.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
}

#[test]
fn a_flood_of_wrong_passwords_keeps_memory_bounded_and_gives_it_back() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "flood");
    let pid = node_pid(&c, "eu-north");
    let start = rss_mib(pid);

    let peak = Arc::new(AtomicU64::new(start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut statuses = Vec::new();
    for _round in 0..3 {
        let http = client();
        let forms: Vec<SigninForm> = (0..64)
            .map(|_| signin_form(&http, &base, "flood"))
            .collect();
        let go = Arc::new(Barrier::new(forms.len()));
        let attempts: Vec<_> = forms
            .into_iter()
            .map(|form| {
                let (go, base, email) = (go.clone(), base.clone(), email.clone());
                std::thread::spawn(move || {
                    let http = client();
                    go.wait();
                    let resp = post_signin(
                        &http,
                        &base,
                        "flood",
                        &form,
                        &[("email", &email), ("password", "wrong password")],
                        &base,
                    );
                    (resp.status().as_u16(), header(&resp, "retry-after"))
                })
            })
            .collect();
        statuses.extend(attempts.into_iter().map(|a| a.join().unwrap()));
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let peak = peak.load(Ordering::Relaxed);
    println!("node RSS: {start} MiB before the flood, {peak} MiB at most during it");
    assert!(
        peak < 300 && peak < start + 200,
        "RSS went from {start} MiB to {peak} MiB"
    );
    for (status, retry_after) in &statuses {
        match status {
            401 => {}
            429 => assert!(retry_after.is_some(), "429 without Retry-After"),
            other => panic!("a wrong password answered {other}"),
        }
    }
    let checked = statuses.iter().filter(|(s, _)| *s == 401).count() as u64;
    assert!(checked >= 3, "some attempts were checked: {statuses:?}");
    assert!(checked < 192, "the pool turned some away: {statuses:?}");
    assert_eq!(c.metric(&base, "hemvist_signin_failures_total"), checked);
    assert!(c.metric(&base, "hemvist_signin_rejected_busy_total") >= 1);
    c.wait_for("the checks to finish", || {
        (c.metric(&base, "hemvist_signin_checks") == 0).then_some(())
    });
    c.wait_for("memory to come back", || {
        (rss_mib(pid) < start + 100).then_some(())
    });
    // The real user is not locked out by guesses the pool turned away; only checked failures
    // count, and a hundred of them in the window would lock the account by design.
    let resp = attempt(&client(), &base, "flood", &email, PASSWORD);
    let want = if checked < 100 { 303 } else { 429 };
    assert_eq!(
        resp.status().as_u16(),
        want,
        "after {checked} checked failures"
    );
}

#[test]
fn the_101st_wrong_guess_in_a_minute_is_refused_with_retry_after() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "guess");
    let http = client();
    for i in 0..100 {
        let resp = attempt(&http, &base, "guess", &email, &format!("guess {i}"));
        assert_eq!(resp.status().as_u16(), 401, "guess {i}");
    }
    let resp = attempt(&http, &base, "guess", &email, "guess 100");
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = header(&resp, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    // Within the window even the right password waits: the account, not the guess, is limited.
    let resp = attempt(&http, &base, "guess", &email, PASSWORD);
    assert_eq!(resp.status().as_u16(), 429);
    let resp = attempt(&http, &base, "guess", " ADA@guess.example ", "x");
    assert_eq!(
        resp.status().as_u16(),
        429,
        "the same account, spelled otherwise"
    );
    // Another account is its own budget.
    let resp = attempt(&http, &base, "guess", "someone@guess.example", "x");
    assert_eq!(resp.status().as_u16(), 401);

    assert_eq!(c.metric(&base, "hemvist_signin_failures_total"), 101);
    assert_eq!(c.metric(&base, "hemvist_signin_throttled_total"), 3);
    let log = node_log(&c, "eu-north");
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sign-in failed"))
        .collect();
    assert_eq!(failures.len(), 101, "one line per failure");
    assert!(failures
        .iter()
        .all(|l| l.contains("guess") && l.contains("127.0.0.1") && l.contains("account=")));
    assert!(log.contains("sign-in throttled"));
    assert!(
        !log.contains("guess 17") && !log.contains(PASSWORD) && !log.contains(&email),
        "no password or email in the log"
    );
}

#[test]
fn sign_in_tokens_are_the_servers_own_and_work_once() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "tokens");
    c.create_org_ready("other", json!({"region": "eu-north"}));
    let http = client();
    let creds = [("email", email.as_str()), ("password", PASSWORD)];

    // An equal cookie and field that the server never issued.
    for forged in ["t0ken", "x", &"0".repeat(80)] {
        let form = SigninForm {
            cookie: format!("hv_signin={forged}"),
            token: forged.to_string(),
        };
        let resp = post_signin(&http, &base, "tokens", &form, &creds, &base);
        assert_eq!(resp.status().as_u16(), 403, "forged {forged}");
    }
    // A real token of another org.
    let theirs = signin_form(&http, &base, "other");
    let resp = post_signin(&http, &base, "tokens", &theirs, &creds, &base);
    assert_eq!(resp.status().as_u16(), 403, "another org's token");
    // A real token without its cookie, or with another form's cookie.
    let (a, b) = (
        signin_form(&http, &base, "tokens"),
        signin_form(&http, &base, "tokens"),
    );
    let mixed = SigninForm {
        cookie: b.cookie.clone(),
        token: a.token.clone(),
    };
    let resp = post_signin(&http, &base, "tokens", &mixed, &creds, &base);
    assert_eq!(resp.status().as_u16(), 403, "cookie of another form");

    // A real token works once; a wrong password's answer brings a new form.
    let wrong = [("email", email.as_str()), ("password", "nope")];
    let resp = post_signin(&http, &base, "tokens", &a, &wrong, &base);
    assert_eq!(resp.status().as_u16(), 401);
    let again = SigninForm {
        cookie: set_cookie(&resp, "hv_signin").expect("a new cookie"),
        token: csrf_in(&resp.text().unwrap()).expect("a new token"),
    };
    assert_ne!(again.token, a.token);
    let resp = post_signin(&http, &base, "tokens", &a, &creds, &base);
    assert_eq!(resp.status().as_u16(), 403, "a used token");
    let resp = post_signin(&http, &base, "tokens", &again, &creds, &base);
    assert_eq!(resp.status().as_u16(), 303);
    assert!(set_cookie(&resp, "hv_session").is_some());
    let resp = post_signin(&http, &base, "tokens", &again, &creds, &base);
    assert_eq!(resp.status().as_u16(), 403, "replayed after success");
    assert!(set_cookie(&resp, "hv_session").is_none());
    assert!(c.metric(&base, "hemvist_csrf_refused_total") >= 7);
}

#[test]
fn form_posts_from_other_sites_are_refused() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "origins");
    let u = Browser::sign_in(&base, "origins", &email);
    let sibling = c.node_url("us-east");
    let evil = "http://evil.example";
    let refused: [&[(&str, &str)]; 6] = [
        &[("origin", evil)],
        &[("origin", &sibling)],
        &[("origin", "null")],
        &[("referer", "http://evil.example/o/origins/")],
        &[("origin", evil), ("referer", &base)],
        &[],
    ];
    for headers in refused {
        let resp = u.post("/contacts", u.form_body(&[("name", "Forged")]), headers);
        assert_eq!(resp.status().as_u16(), 403, "{headers:?}");
    }
    let resp = u.post("/signout", u.form_body(&[]), &[("origin", evil)]);
    assert_eq!(resp.status().as_u16(), 403, "sign-out from elsewhere");
    let form = signin_form(&u.http, &base, "origins");
    let resp = post_signin(
        &u.http,
        &base,
        "origins",
        &form,
        &[("email", &email), ("password", PASSWORD)],
        evil,
    );
    assert_eq!(resp.status().as_u16(), 403, "sign-in from elsewhere");
    assert_eq!(u.total("forged"), 0, "nothing was stored");

    let ours = format!("{base}/o/origins/contacts/new");
    for headers in [
        &[("origin", base.as_str())][..],
        &[("referer", ours.as_str())][..],
    ] {
        let resp = u.post("/contacts", u.form_body(&[("name", "Welcome")]), headers);
        assert_eq!(resp.status().as_u16(), 303, "{headers:?}");
    }
    assert_eq!(u.total("welcome"), 2);
    assert!(c.metric(&base, "hemvist_origin_refused_total") >= 8);
}

#[test]
fn bytes_that_are_not_utf8_are_refused_and_next_always_leads_home() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "bytes");
    let u = Browser::sign_in(&base, "bytes", &email);
    let origin = [("origin", base.as_str())];
    let token = format!("_csrf={}", u.csrf);
    for body in [
        format!("{token}&name=Bad%FF%FEName").into_bytes(),
        [format!("{token}&name=Raw").as_bytes(), b"\xff\xfe"].concat(),
        format!("{token}&name=Fine&notes=%C3%28").into_bytes(),
        format!("{token}&name%FF=Fine").into_bytes(),
    ] {
        let resp = u.post("/contacts", body.clone(), &origin);
        assert_eq!(
            resp.status().as_u16(),
            400,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let resp = u.post("/contacts", u.form_body(&[("name", "Åsa Kept")]), &origin);
    assert_eq!(resp.status().as_u16(), 303);
    let id = header(&resp, "location")
        .and_then(|l| {
            l.split("/contacts/")
                .nth(1)?
                .split('?')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .expect("contact id");
    let resp = u.post(
        &format!("/contacts/{id}"),
        format!("{token}&name=%FF").into_bytes(),
        &origin,
    );
    assert_eq!(resp.status().as_u16(), 400);
    let found: Value = u
        .get("/", &[("accept", "application/json")])
        .json()
        .unwrap();
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["hits"][0]["name"], "Åsa Kept");
    assert!(!found.to_string().contains('\u{fffd}'));

    let home = "/o/bytes/";
    for next in [
        "/o/bytes/\r\nSet-Cookie: evil=1",
        "/o/bytes/\n",
        "/o/bytes/\0",
        "/o/bytes/\t",
        "/o/bytes/../other/",
        "/o/bytes/%2e%2e/other/",
        "/o/bytes/.%2E/other/",
        "/o/bytes/./contacts/new",
        "/o/other/",
        "//evil.example/o/bytes/",
        "https://evil.example/o/bytes/",
        "/o/bytes//evil.example",
        "/o/bytes/\\evil.example",
        "/o/bytes/%2f%2fevil.example",
        "",
    ] {
        let http = client();
        let form = signin_form(&http, &base, "bytes");
        let resp = post_signin(
            &http,
            &base,
            "bytes",
            &form,
            &[("email", &email), ("password", PASSWORD), ("next", next)],
            &base,
        );
        assert_eq!(resp.status().as_u16(), 303, "{next:?}");
        assert_eq!(header(&resp, "location").as_deref(), Some(home), "{next:?}");
    }
    // A good next is kept, and the form never offers a bad one.
    let http = client();
    let form = signin_form(&http, &base, "bytes");
    let resp = post_signin(
        &http,
        &base,
        "bytes",
        &form,
        &[
            ("email", &email),
            ("password", PASSWORD),
            ("next", "/o/bytes/contacts/new?x=%C3%85"),
        ],
        &base,
    );
    assert_eq!(
        header(&resp, "location").as_deref(),
        Some("/o/bytes/contacts/new?x=%C3%85")
    );
    let page = http
        .get(format!(
            "{base}/o/bytes/signin?next=%2Fo%2Fbytes%2F..%2Fother%2F"
        ))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("name=\"next\" value=\"/o/bytes/\""), "{page}");
    // The path itself, sent raw: the node answers, and nothing it says is a 5xx.
    let addr = base.trim_start_matches("http://");
    let status = raw_status(
        addr,
        "GET",
        b"/o/bytes/signin?next=/o/bytes/%0d%0a",
        "",
        b"",
    );
    assert_eq!(status, 200);
}

#[test]
fn tenant_answers_are_neither_cached_nor_sniffed() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let (base, email) = org_with_user(&c, "nocache");
    c.create_org_ready("faraway", json!({"region": "us-east"}));
    let u = Browser::sign_in(&base, "nocache", &email);
    let http = client();
    let anonymous = |path: &str, accept: &str| {
        http.get(format!("{base}{path}"))
            .header("accept", accept)
            .send()
            .unwrap()
    };
    let answers: Vec<(String, Response)> = vec![
        ("search page".into(), u.get("/", &[])),
        (
            "search JSON".into(),
            u.get("/?q=a", &[("accept", "application/json")]),
        ),
        ("fragment".into(), u.get("/?q=a", &[("hx-request", "true")])),
        ("new contact".into(), u.get("/contacts/new", &[])),
        (
            "missing contact".into(),
            u.get("/contacts/99", &[("accept", "application/json")]),
        ),
        (
            "sign-in form".into(),
            anonymous("/o/nocache/signin", "text/html"),
        ),
        (
            "not signed in".into(),
            anonymous("/o/nocache/", "application/json"),
        ),
        (
            "sign in first".into(),
            anonymous("/o/nocache/", "text/html"),
        ),
        ("elsewhere".into(), anonymous("/o/faraway/", "text/html")),
        ("unknown org".into(), anonymous("/o/nobody/", "text/html")),
        ("bad org".into(), anonymous("/o/BAD/", "application/json")),
        ("no page".into(), anonymous("/nothing", "text/html")),
        ("metrics".into(), anonymous("/metrics", "text/plain")),
    ];
    for (what, resp) in &answers {
        assert_eq!(
            header(resp, "cache-control").as_deref(),
            Some("no-store"),
            "{what}: {}",
            resp.status()
        );
        assert_eq!(
            header(resp, "x-content-type-options").as_deref(),
            Some("nosniff"),
            "{what}"
        );
    }
    let resp = u.post(
        "/contacts",
        u.form_body(&[("name", "Cached?")]),
        &[("origin", &base)],
    );
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(header(&resp, "cache-control").as_deref(), Some("no-store"));
    // The static script is the one thing a browser may keep.
    let js = anonymous("/static/htmx-2.0.11.min.js", "*/*");
    assert!(header(&js, "cache-control").is_some_and(|v| v.contains("immutable")));
    assert_eq!(
        header(&js, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
}
