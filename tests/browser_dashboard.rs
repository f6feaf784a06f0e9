//! The operators' dashboard at the control plane's `/`, in a real browser (Debian's headless
//! Chromium, driven by Playwright: `tests/browser/dashboard.cjs`): signed in with a named
//! token, it finds an org by typing part of its name, moves it with a confirmation that names
//! it, follows the move live to its end and finds it in the audit log; no console error, no
//! foreign request; screenshots at desktop and phone width. And over plain HTTP: pages need a
//! session, and a change needs the session's CSRF token from this origin.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and playwright-core in `.deps/`: `scripts/setup`
//! installs both (`scripts/test` runs it). Without them this test fails, saying so.

mod support;

use std::time::Duration;

use serde_json::json;
use support::browser;
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH};
use support::s3::S3;

const ORG: &str = "fjordbok";

#[test]
fn an_operator_finds_an_org_moves_it_and_sees_it_in_the_audit_log() {
    let (chromium, node_modules) = browser::prerequisites();
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, 300);
    c.create_org_ready(
        ORG,
        json!({"name": "Fjordbok Förlag AB", "region": "eu-north", "residency": "EU"}),
    );
    for (id, name) in [("fika", "Fika AB"), ("rheinwerk", "Rheinwerk GmbH")] {
        c.create_org_ready(id, json!({"name": name, "region": "eu-central"}));
    }
    let (status, token) = c.admin("POST", "/tokens", Some(json!({"name": "ops-ingrid"})));
    assert_eq!(status, 201, "{token}");
    let secret = token["token"]
        .as_str()
        .expect("the token, once")
        .to_string();

    let out = browser::run_script(
        "dashboard.cjs",
        &[
            ("HEMVIST_CONTROL", c.control_url()),
            ("HEMVIST_TOKEN", secret),
            ("HEMVIST_ORG", ORG.into()),
            ("HEMVIST_ORG_NAME_PART", "jordbo".into()),
            ("HEMVIST_TO", "eu-central".into()),
            ("HEMVIST_ACTOR", "ops-ingrid".into()),
            (
                "HEMVIST_ARTIFACTS",
                browser::artifacts().display().to_string(),
            ),
            ("NODE_PATH", node_modules.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
        Duration::from_secs(150),
    );
    assert!(out.contains("ok:"), "{out}");
    let org = c.org(ORG).expect("org");
    assert_eq!(org.home_region, "eu-central", "the move happened");
}

#[test]
fn dashboard_pages_need_a_session_and_changes_need_its_csrf_token() {
    let c = Cluster::start(&[EU_NORTH, EU_CENTRAL]);
    c.create_org_ready("acme", json!({"name": "Acme AB", "region": "eu-north"}));
    let http = support::http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let control = c.control_url();
    for path in ["/", "/orgs", "/orgs/acme", "/operations", "/audit"] {
        let resp = http.get(format!("{control}{path}")).send().unwrap();
        assert_eq!(resp.status().as_u16(), 303, "{path}");
        assert_eq!(resp.headers()["location"], "/signin", "{path}");
    }
    let resp = http
        .get(format!("{control}/orgs/search?q=ac"))
        .header("hx-request", "true")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["hx-redirect"], "/signin");

    // Signing in sets a session cookie that names nothing of the token.
    let resp = http
        .post(format!("{control}/signin"))
        .form(&[("token", support::cluster::ADMIN_TOKEN)])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("hv_ops=") && set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(support::cluster::ADMIN_TOKEN), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{control}/orgs/acme"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let body = page.text().unwrap();
    assert!(
        body.contains("Acme AB") && body.contains("Move acme"),
        "{body}"
    );
    let search = http
        .get(format!("{control}/orgs/search?q=%25%27%22%3Cscript%3E"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(search.status().as_u16(), 200);
    assert!(!search.text().unwrap().contains("<script>"), "escaped");

    // A move without the session's CSRF token, or from another origin, does nothing.
    for (csrf, origin) in [
        ("wrong", None),
        ("", None),
        ("x", Some("http://evil.example")),
    ] {
        let mut req = http
            .post(format!("{control}/orgs/acme/move"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf), ("to", "eu-central"), ("confirm", "acme")]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        assert_eq!(
            req.send().unwrap().status().as_u16(),
            403,
            "{csrf} {origin:?}"
        );
    }
    let (_, ops) = c.admin("GET", "/operations", None);
    assert_eq!(ops, json!([]), "nothing was started");
    // Nodes say what their disk has free; the fleet page shows it, and each node's backup lag.
    let nodes = c.wait_for("every node's disk reported", || {
        let (_, nodes) = c.admin("GET", "/nodes", None);
        let all = nodes.as_array()?.clone();
        all.iter()
            .all(|n| n["disk_free_bytes"].as_u64().is_some_and(|f| f > 0))
            .then_some(all)
    });
    assert!(nodes.iter().all(|n| n["disk_low"] == false), "{nodes:?}");
    let fleet = http
        .get(format!("{control}/"))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        fleet.contains("Disk free") && fleet.contains("iB"),
        "{fleet}"
    );
    // Behind a proxy that terminates TLS and says so, the cookie is for HTTPS only.
    let proxied = http
        .post(format!("{control}/signin"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", support::cluster::ADMIN_TOKEN)])
        .send()
        .unwrap();
    let set_proxied = proxied.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(set_proxied.contains("; Secure"), "{set_proxied}");
    assert!(!set.contains("Secure"), "plain HTTP here: {set}");
    // Another site's page cannot sign a browser in.
    let foreign = http
        .post(format!("{control}/signin"))
        .header("origin", "http://evil.example")
        .form(&[("token", support::cluster::ADMIN_TOKEN)])
        .send()
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    assert!(foreign.headers().get("set-cookie").is_none());
    // A session ends with its token: revoked, its cookie opens nothing.
    let (status, made) = c.admin("POST", "/tokens", Some(json!({"name": "ops-temp"})));
    assert_eq!(status, 201, "{made}");
    let temp = http
        .post(format!("{control}/signin"))
        .form(&[("token", made["token"].as_str().unwrap())])
        .send()
        .unwrap();
    let temp_cookie = temp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let open = |cookie: &str| {
        http.get(format!("{control}/orgs"))
            .header("cookie", cookie)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(open(&temp_cookie), 200);
    let (status, _) = c.admin("POST", "/tokens/ops-temp/revoke", None);
    assert_eq!(status, 200);
    assert_eq!(open(&temp_cookie), 303, "a revoked token's session ended");
    // Signed out, the cookie is worth nothing.
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the page's CSRF token")
        .to_string();
    let out = http
        .post(format!("{control}/signout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(out.status().as_u16(), 303);
    let after = http
        .get(format!("{control}/orgs"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(after.status().as_u16(), 303);
    let (_, audit) = c.admin("GET", "/audit", None);
    assert!(audit.to_string().contains("dashboard.signed_in"), "{audit}");
}

#[test]
fn the_dashboard_pages_through_every_org_and_filters_the_audit_log() {
    let c = Cluster::start(&[EU_NORTH]);
    // More orgs than one page (25) holds.
    for i in 0..30 {
        let (status, body) =
            c.create_org(json!({"id": format!("org-{i:02}"), "name": format!("Org {i}")}));
        assert_eq!(status, 201, "{body}");
    }
    let http = support::http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let control = c.control_url();
    let resp = http
        .post(format!("{control}/signin"))
        .form(&[("token", support::cluster::ADMIN_TOKEN)])
        .send()
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let get = |path: &str| {
        let resp = http
            .get(format!("{control}{path}"))
            .header("cookie", &cookie)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.text().unwrap()
    };
    let first = get("/orgs");
    assert!(
        first.contains("org-00") && first.contains("org-24") && !first.contains("org-25"),
        "{first}"
    );
    assert!(
        first.contains("href=\"/orgs?after=org-24\""),
        "a next page: {first}"
    );
    let second = get("/orgs?after=org-24");
    assert!(
        second.contains("org-25") && second.contains("org-29") && !second.contains("org-24<"),
        "{second}"
    );
    assert!(!second.contains("Next page"), "the last page: {second}");
    // The audit log by action: every org's placement, and nothing else.
    let created = get("/audit?action=org.placed");
    assert_eq!(
        created
            .matches("<td class=\"action\">org.placed</td>")
            .count(),
        30,
        "{created}"
    );
    assert!(!created.contains("dashboard.signed_in"), "{created}");
    let one = get("/audit?org=org-07&action=org.");
    assert_eq!(one.matches("<td class=\"action\">").count(), 1, "{one}");
}
