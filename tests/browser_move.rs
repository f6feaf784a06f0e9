//! A signed-in user in a real browser (Debian's headless Chromium, driven by Playwright:
//! `tests/browser/move.cjs`) while their org moves from Stockholm to Frankfurt: they keep
//! working, signed in, and end up at the new home; a browser that comes back once the old home
//! has forgotten the org is told plainly why it must sign in again.
//!
//! The new home answers on another host name (`localhost`) than the old one (`127.0.0.1`): a
//! browser keeps cookies per host, not per port, so two nodes on 127.0.0.1 would share the
//! session cookie and the test would prove nothing.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and playwright-core in `.deps/`: `scripts/setup`
//! installs both (`scripts/test` runs it). Without them this test fails, saying so.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::browser;
use support::cluster::{Cluster, ADMIN_TOKEN, EU_CENTRAL, EU_NORTH};
use support::s3::S3;
use support::session::{client, sign_in};
use support::story::names_in;

const ORG: &str = "fjordbok";
const EMAIL: &str = "ingrid@fjordbok.example";
const PASSWORD: &str = "correct horse battery";
/// Added before the move; after it, from the page left open; from a form left open across it.
const BEFORE: &str = "Astrid Fjell";
const AFTER: &str = "Bjørn Fjell";
const LEFT_OPEN: &str = "Cecilie Fjell";
/// Every contact's city: a search for it finds all of them.
const CITY: &str = "Bergen";
/// Each run of the script, browser start included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);

fn run_script(envs: &[(&str, String)]) -> String {
    browser::run_script("move.cjs", envs, SCRIPT_TIMEOUT)
}

fn header(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The `hv_session` cookie a `Set-Cookie` of this answer sets, if one does.
fn session_set(resp: &reqwest::blocking::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("hv_session=") && !v.contains("Max-Age=0"))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

#[test]
fn a_signed_in_browser_keeps_working_across_a_move() {
    let (chromium, node_modules) = browser::prerequisites();

    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, 300);
    // The new home under another host name, same port: its public URL names `localhost`.
    let central = c.node_url("eu-central");
    let port = central.rsplit(':').next().expect("a port").to_string();
    let new_home = format!("http://localhost:{port}");
    c.kill_node("eu-central");
    let config = c.node_config("eu-central");
    let text = std::fs::read_to_string(&config).expect("node config");
    std::fs::write(&config, format!("public_url = \"{new_home}\"\n{text}")).expect("config");
    c.start_node("eu-central");
    c.wait_for("eu-central registered as localhost", || {
        let (_, nodes) = c.admin("GET", "/nodes", None);
        nodes.as_array().and_then(|all| {
            all.iter()
                .any(|n| n["healthy"] == true && n.to_string().contains(&new_home))
                .then_some(())
        })
    });

    c.create_org_ready(
        ORG,
        json!({"region": "eu-north", "residency": "EU", "name": "Fjord Bok AS"}),
    );
    c.add_user(ORG, EMAIL, PASSWORD);
    let old_home = c.node_url("eu-north");
    // A second session, signed in (and used) before the move, for the checks a browser cannot
    // make on its own.
    let before = sign_in(&old_home, ORG, EMAIL, PASSWORD).expect("sign in");

    let artifacts = std::env::var_os("HEMVIST_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| browser::repo().join("tests/artifacts"));
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    for stale in std::fs::read_dir(&artifacts).expect("artifacts").flatten() {
        if stale.file_name().to_string_lossy().starts_with("move") {
            let _ = std::fs::remove_file(stale.path());
        }
    }
    let state = c.dir.path().join("browser-state.json");
    let control = c.control_url();
    let envs = |phase: &str| {
        vec![
            ("NODE_PATH", node_modules.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
            ("HEMVIST_PHASE", phase.to_string()),
            ("HEMVIST_OLD", old_home.clone()),
            ("HEMVIST_NEW", new_home.clone()),
            ("HEMVIST_CONTROL", control.clone()),
            ("HEMVIST_TOKEN", ADMIN_TOKEN.to_string()),
            ("HEMVIST_ORG", ORG.to_string()),
            ("HEMVIST_EMAIL", EMAIL.to_string()),
            ("HEMVIST_PASSWORD", PASSWORD.to_string()),
            (
                "HEMVIST_CONTACTS",
                json!({"before": BEFORE, "after": AFTER, "left_open": LEFT_OPEN, "city": CITY})
                    .to_string(),
            ),
            ("HEMVIST_STATE", state.display().to_string()),
            ("HEMVIST_ARTIFACTS", artifacts.display().to_string()),
        ]
    };

    // The browser signs in, adds a contact, moves the org itself (admin API) and goes on.
    run_script(&envs("move"));
    let org = c.org(ORG).expect("org");
    assert_eq!(org.node, "eu-central-1", "the org moved");
    let names = names_in(&c.tenant_file("eu-central", ORG));
    for name in [BEFORE, AFTER, LEFT_OPEN] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} at the new home: {names:?}"
        );
    }
    assert!(
        !c.tenant_file("eu-north", ORG).exists(),
        "the old home dropped its copy"
    );
    let browser_cookies: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("browser state"))
            .expect("browser state is JSON");
    let browser_session = browser_cookies["cookies"]
        .as_array()
        .and_then(|all| {
            all.iter()
                .find(|k| k["name"] == "hv_session" && k["domain"] == "127.0.0.1")
        })
        .and_then(|k| k["value"].as_str())
        .expect("the browser's session cookie at the old home")
        .to_string();

    // What the browser did, step by step over plain HTTP: the old home hands the session off
    // in the address, sealed (the token is not in it), and the new home takes it once.
    let http = client();
    let secret = |cookie: &str| cookie.rsplit('.').next().unwrap_or_default().to_string();
    let handed = |path: &str| {
        let resp = http
            .get(format!("{old_home}/o/{ORG}{path}"))
            .header("cookie", &before.cookie)
            .send()
            .expect("old home answers");
        assert_eq!(resp.status().as_u16(), 307, "{path}");
        header(&resp, "location").expect("a Location")
    };
    let location = handed("/?q=Fjell");
    assert!(
        location.starts_with(&format!("{new_home}/o/{ORG}/?q=Fjell&hv_handoff=")),
        "{location}"
    );
    assert!(!location.contains(&secret(&before.cookie)), "{location}");
    assert!(!location.contains("hv_moved"), "{location}");
    let first = http.get(&location).send().expect("new home answers");
    assert_eq!(first.status().as_u16(), 303);
    assert_eq!(
        header(&first, "location").as_deref(),
        Some(format!("/o/{ORG}/?q=Fjell").as_str()),
        "sent on without the hand-off in the address"
    );
    assert_eq!(
        session_set(&first).as_deref(),
        Some(before.cookie.as_str()),
        "the same session, now as a cookie of the new home"
    );
    let again = http.get(&location).send().expect("new home answers");
    assert_eq!(again.status().as_u16(), 303, "a hand-off is taken once");
    assert_eq!(
        header(&again, "location").as_deref(),
        Some(format!("/o/{ORG}/?q=Fjell&hv_moved=1").as_str())
    );
    assert_eq!(session_set(&again), None);
    // A browser signed in at the new home already keeps its own session.
    let there = sign_in(&new_home, ORG, EMAIL, PASSWORD).expect("sign in at the new home");
    let kept = http
        .get(handed("/"))
        .header("cookie", &there.cookie)
        .send()
        .expect("new home answers");
    assert_eq!(kept.status().as_u16(), 303);
    assert_eq!(
        header(&kept, "location").as_deref(),
        Some(format!("/o/{ORG}/").as_str())
    );
    assert_eq!(session_set(&kept), None, "no other session replaces it");
    let garbage = http
        .get(format!(
            "{new_home}/o/{ORG}/?hv_handoff=zz%00{}",
            "a".repeat(5000)
        ))
        .send()
        .expect("new home answers");
    assert_eq!(
        garbage.status().as_u16(),
        303,
        "a garbage hand-off is dropped"
    );
    assert_eq!(session_set(&garbage), None);

    // A form sent on (307) is taken from the old home's pages, and from no other site's.
    let post = |origin: &str, name: &str| {
        let resp = http
            .post(format!("{old_home}/o/{ORG}/contacts"))
            .header("cookie", &before.cookie)
            .header("origin", &old_home)
            .form(&[("_csrf", before.csrf.as_str()), ("name", name)])
            .send()
            .expect("old home answers");
        assert_eq!(resp.status().as_u16(), 307);
        let location = header(&resp, "location").expect("a Location");
        assert!(location.contains("hv_handoff="), "{location}");
        http.post(&location)
            .header("origin", origin)
            .form(&[("_csrf", before.csrf.as_str()), ("name", name)])
            .send()
            .expect("new home answers")
    };
    let foreign = post("http://evil.example", "Forged Fjell");
    assert_eq!(
        foreign.status().as_u16(),
        403,
        "a hand-off does not open the Origin check to every site"
    );
    assert_eq!(
        session_set(&foreign),
        None,
        "a refused form signs no one in"
    );
    let sent_on = post(&old_home, "Posted Fjell");
    assert_eq!(sent_on.status().as_u16(), 303, "{:?}", sent_on.text());
    assert!(session_set(&sent_on).is_some());
    let names = names_in(&c.tenant_file("eu-central", ORG));
    assert!(names.iter().any(|n| n == "Posted Fjell"), "{names:?}");
    assert!(!names.iter().any(|n| n == "Forged Fjell"), "{names:?}");

    // No session token in any log.
    for region in ["eu-north", "eu-central"] {
        let log = c.node_log(region);
        for token in [&browser_session, &before.cookie] {
            assert!(
                !log.contains(&secret(token)),
                "{region}'s log holds a session token"
            );
        }
    }

    // The old home restarts and so forgets the org's key: it can no longer hand a session
    // off, and says so in the address; the browser lands on the new home's sign-in page, told
    // why.
    c.restart_node("eu-north");
    let resp = http
        .get(format!("{old_home}/o/{ORG}/"))
        .header("cookie", &before.cookie)
        .send()
        .expect("old home answers");
    assert_eq!(resp.status().as_u16(), 307);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("{new_home}/o/{ORG}/?hv_moved=1"))
    );
    let resp = http
        .get(format!("{old_home}/o/{ORG}/"))
        .send()
        .expect("old home answers");
    assert_eq!(
        header(&resp, "location"),
        Some(format!("{new_home}/o/{ORG}/")),
        "a stranger is sent on as before"
    );
    run_script(&envs("notice"));

    for shot in ["move.png", "move-notice.png"] {
        let path = artifacts.join(shot);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "screenshot {} is missing", path.display());
    }
}
