//! GDPR export, end to end: a real control plane and node process, real SQLite files. An org
//! written to all the while is exported as a SQLite file and as JSON lines through the admin
//! API; each export is consistent (`integrity_check` ok, rows per table exactly as its manifest
//! says, every write acknowledged before it present), holds no session, idempotency key or
//! password hash, is checked by the CLI against its SHA-256, is audited, and leaves nothing in
//! the node's staging folder. A node asked without a valid ticket refuses.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH};
use support::session::sign_in;
use support::story::Writer;

const PASSWORD: &str = "correct horse battery";

#[test]
fn an_org_exported_under_writes_is_consistent_complete_and_audited() {
    let c = Cluster::start(&[EU_NORTH]);
    c.create_org_ready("fjord", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("fjord", "ada@fjord.example", PASSWORD);
    let user = sign_in(
        &c.node_url("eu-north"),
        "fjord",
        "ada@fjord.example",
        PASSWORD,
    )
    .unwrap();
    let before = c.write_n(&user, "before", 40, Duration::ZERO);
    assert_eq!(before.acked.len(), 40);
    let writing = Writer::start(user, "during");
    assert!(writing.wait_acked(5));

    let out = c.dir.path().join("fjord.db");
    let (ok, stdout, err) = c.cli(&["orgs", "export", "fjord", "--out", out.to_str().unwrap()]);
    assert!(ok, "export: {stdout}\n{err}");
    let jsonl = c.dir.path().join("fjord.jsonl");
    let (ok, stdout, err) = c.cli(&[
        "orgs",
        "export",
        "fjord",
        "--format",
        "jsonl",
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    assert!(ok, "export jsonl: {stdout}\n{err}");
    let answers = writing.stop();
    assert!(support::story::acked(&answers).len() > 5, "writes went on");

    // The SQLite file: consistent, and exactly what its manifest says.
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(c.dir.path().join("fjord.db.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["format"], "sqlite");
    let db = rusqlite::Connection::open(&out).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let tables = manifest["tables"].as_object().unwrap();
    assert!(tables.contains_key("contacts"), "{manifest}");
    for (t, n) in tables {
        let have: i64 = db
            .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
            .unwrap();
        assert_eq!(Some(have as u64), n.as_u64(), "rows of {t}");
    }
    let names: Vec<String> = db
        .prepare("SELECT name FROM contacts")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for n in before.names() {
        assert!(
            names.iter().any(|x| x == n),
            "{n} acknowledged before the export is missing"
        );
    }
    let sessions: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 0, "sessions exported");
    let hashes: i64 = db
        .query_row(
            "SELECT count(*) FROM users WHERE password_hash <> ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hashes, 0, "password hashes exported");
    let users: i64 = db
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 1, "the org's users are its data");

    // The JSON lines: one per row, per table as the manifest says.
    let manifest_j: Value = serde_json::from_str(
        &std::fs::read_to_string(c.dir.path().join("fjord.jsonl.manifest.json")).unwrap(),
    )
    .unwrap();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&jsonl).unwrap().lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        *counted
            .entry(v["table"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert!(v["row"].is_object());
    }
    for (t, n) in manifest_j["tables"].as_object().unwrap() {
        assert_eq!(
            counted.get(t).copied().unwrap_or(0),
            n.as_u64().unwrap(),
            "jsonl rows of {t}"
        );
    }
    assert!(
        !counted.keys().any(|t| t.contains("fts")),
        "full-text index rows exported: {counted:?}"
    );

    // Both audited with their digests; nothing left in staging.
    let (ok, stdout, _) = c.cli(&["audit", "log", "--org", "fjord", "--json"]);
    assert!(ok);
    let log: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let exported: Vec<&Value> = log
        .iter()
        .filter(|e| e["action"] == "org.exported")
        .collect();
    assert_eq!(exported.len(), 2, "{stdout}");
    assert_eq!(exported[0]["detail"]["sha256"], manifest["sha256"]);
    assert_eq!(exported[0]["detail"]["region"], "eu-north");
    // The residency report shows where the export was staged, in the org's region.
    let (ok, stdout, err) = c.cli(&["audit", "report", "--org", "fjord"]);
    assert!(ok, "{stdout}\n{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let staged: Vec<&Value> = report["orgs"][0]["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "export")
        .collect();
    assert_eq!(staged.len(), 2, "{report}");
    assert!(staged
        .iter()
        .all(|i| i["region"] == "eu-north" && i["allowed"] == true));
    assert!(staged
        .iter()
        .all(|i| i["from_ms"].as_i64() <= i["to_ms"].as_i64()));
    let staging = c.node_data("eu-north").join("exports");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "staging left behind: {left:?}");

    // The node refuses without a valid ticket; a refused export writes no file.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 60_000;
    let resp = support::http()
        .build()
        .unwrap()
        .get(format!(
            "{}/internal/v1/exports/fjord?format=sqlite&expires_ms={expires}",
            c.node_url("eu-north")
        ))
        .bearer_auth("00".repeat(32))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let nowhere = c.dir.path().join("nobody.db");
    let (ok, _, err) = c.cli(&[
        "orgs",
        "export",
        "nobody",
        "--out",
        nowhere.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no org nobody"), "{err}");
    assert!(!nowhere.exists());
}
