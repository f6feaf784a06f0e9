//! A branch's pages in a real browser (Debian's headless Chromium, driven by Playwright:
//! `tests/browser/branch.cjs`), against real `hemvist` processes and a real S3-compatible server:
//! the banner says it is a branch, of what, as of when and until when (warning inside its
//! warning window), and its "Keep alive" button pushes the expiry out, as the control plane
//! then says too.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and playwright-core in `.deps/`: `scripts/setup`
//! installs both (`scripts/test` runs it). Without them this test fails, saying so.

mod support;

use std::time::Duration;

use serde_json::json;
use support::browser;
use support::cluster::{Cluster, ADMIN_TOKEN, EU_NORTH};
use support::s3::S3;

const PASSWORD: &str = "correct horse battery";

#[test]
fn a_branch_shows_its_banner_and_its_keepalive_button_pushes_the_expiry_out() {
    let (chromium, node_modules) = browser::prerequisites();
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH], &s3, 300);
    c.create_org_ready("lagom", json!({"region": "eu-north", "name": "Lagom AB"}));
    c.add_user("lagom", "alma@lagom.example", PASSWORD);
    // Ten minutes to live: inside the default one-hour warning window from the start.
    let (ok, out, err) = c.cli(&[
        "branch", "create", "lagom", "--name", "demo", "--ttl", "10m", "--wait",
    ]);
    assert!(ok, "{out}\n{err}");
    let artifacts = browser::artifacts();
    browser::run_script(
        "branch.cjs",
        &[
            ("NODE_PATH", node_modules.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
            ("HEMVIST_BASE", c.node_url("eu-north")),
            ("HEMVIST_CONTROL", c.control_url()),
            ("HEMVIST_TOKEN", ADMIN_TOKEN.to_string()),
            ("HEMVIST_ORG", "lagom--demo".to_string()),
            ("HEMVIST_PARENT", "lagom".to_string()),
            ("HEMVIST_EMAIL", "alma@lagom.example".to_string()),
            ("HEMVIST_PASSWORD", PASSWORD.to_string()),
            ("HEMVIST_ARTIFACTS", artifacts.display().to_string()),
        ],
        Duration::from_secs(120),
    );
    // The press is in the audit log, with who pressed it.
    let (_, all) = c.admin("GET", "/audit?limit=1000", None);
    let kept = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "branch.kept_alive" && a["org"] == "lagom--demo")
        .cloned()
        .expect("the keepalive is audited");
    assert!(
        kept["actor"]
            .as_str()
            .unwrap_or_default()
            .contains("alma@lagom.example"),
        "{kept}"
    );
}
