//! The tamper-evident audit log, end to end: a real control plane process writing signed
//! checkpoints to moto's S3 server (which enforces Object Lock) and, in the second scenario, to
//! `s3s-fs` (which checks every request's SigV4 signature). The store file is then edited,
//! pruned, reordered, rewritten with fresh hashes and cut short, as someone owning the control
//! plane's disk could; `hemvist audit verify` names each damage, and a locked checkpoint cannot
//! be deleted.

mod support;

use std::time::Duration;

use hemvist_control::store::sql::Value as SqlValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::cluster::{Cluster, EU_NORTH};
use support::moto::Moto;

const SIGNING_KEY: &str = "7f0e1d2c3b4a59687786950413223140aabbccddeeff00112233445566778899";
const BUCKET: &str = "hemvist-audit";

fn verdict(c: &Cluster) -> Value {
    let (_, out, err) = c.cli(&["audit", "verify", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit verify --json: {e}: {out} {err}"))
}

/// Waits until the newest checkpoint covers the chain's head, and returns the verdict.
fn covered(c: &Cluster) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = verdict(c);
        if v["checkpoints"]["newest"]["seq"] == v["head_seq"] && v["head_seq"].as_i64() > Some(0) {
            return v;
        }
        if std::time::Instant::now() > deadline {
            let log: Vec<String> = c
                .control_log()
                .lines()
                .filter(|l| l.contains("audit"))
                .map(str::to_string)
                .collect();
            panic!("no checkpoint of the chain's head: {v}\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn damaged(c: &Cluster) -> (i64, String) {
    let v = verdict(c);
    assert_eq!(v["ok"], false, "the damage went unnoticed: {v}");
    let (ok, out, _) = c.cli(&["audit", "verify"]);
    assert!(!ok, "audit verify exits 1 on damage: {out}");
    assert!(out.contains("first bad entry:"), "{out}");
    (
        v["first_bad"]["seq"].as_i64().unwrap(),
        v["first_bad"]["problem"].as_str().unwrap().to_string(),
    )
}

fn assert_ok(c: &Cluster) {
    let v = verdict(c);
    assert_eq!(v["ok"], true, "{v}");
}

/// What the store computes for each entry: SHA-256 over the length-prefixed fields.
fn chain_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    org: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        org,
        detail,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn start_with_checkpoints(store: &str, env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::start(&[EU_NORTH]);
    c.kill_control();
    c.add_control_config(&format!(
        "[audit]\ncheckpoint_interval_ms = 200\n\n[audit.checkpoints]\n{store}\n"
    ));
    c.start_control_with_env(env);
    c.wait_nodes_healthy(1);
    c
}

#[test]
fn every_kind_of_tampering_is_named_and_locked_checkpoints_catch_a_cut_or_a_rewrite() {
    let moto = Moto::start();
    moto.create_locked_bucket(BUCKET);
    let env = [
        ("HEMVIST_AUDIT_SIGNING_KEY", SIGNING_KEY),
        ("HEMVIST_AUDIT_S3_ACCESS_KEY_ID", "audit-writer"),
        ("HEMVIST_AUDIT_S3_SECRET_ACCESS_KEY", "audit-writer-secret"),
    ];
    let c = start_with_checkpoints(
        &format!(
            "url = \"s3://{BUCKET}/control\"\nendpoint = {:?}\nlock = \"compliance\"\nlock_days = 1",
            moto.endpoint
        ),
        &env,
    );
    for org in ["alfa", "bravo", "charlie"] {
        c.create_org_ready(org, json!({"region": "eu-north", "residency": "EU"}));
    }
    let v = covered(&c);
    assert_eq!(v["ok"], true, "{v}");
    let newest = &v["checkpoints"]["newest"];
    assert_eq!(newest["lock_mode"], "COMPLIANCE", "{v}");
    assert!(newest["locked_until"].is_string(), "{v}");
    assert!(v["warnings"].as_array().unwrap().is_empty(), "{v}");
    let head = v["head_seq"].as_i64().unwrap();
    assert!(head >= 5, "enough entries to tamper with: {v}");
    let (ok, out, err) = c.cli(&["audit", "verify"]);
    assert!(
        ok && out.starts_with("ok:") && out.contains("COMPLIANCE"),
        "{out} {err}"
    );

    // `audit log`: by org, oldest first, as JSON.
    let (ok, out, _) = c.cli(&["audit", "log", "--org", "bravo", "--json"]);
    assert!(ok);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["org"] == "bravo"), "{out}");
    assert!(entries
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));

    // Object Lock holds: a checkpoint's version cannot be deleted, and a delete marker does
    // not hide it from verify, which reads every version.
    let versions = moto.versions(BUCKET, "control/checkpoints/");
    assert!(!versions.is_empty());
    let (key, version) = &versions[0];
    assert_eq!(
        moto.delete(BUCKET, key, Some(version)),
        403,
        "a locked version was deleted"
    );
    // The same principal may delete an unlocked version: the refusal above is the lock's.
    let unlocked = moto.put(BUCKET, "control/scratch.txt", b"not a checkpoint");
    assert_eq!(
        moto.delete(BUCKET, "control/scratch.txt", Some(&unlocked)),
        204
    );
    assert_eq!(
        moto.delete(BUCKET, key, None),
        204,
        "a delete marker can be added"
    );
    let v = verdict(&c);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["checkpoints"]["found"].as_u64().unwrap() as usize,
        moto.versions(BUCKET, "control/checkpoints/").len(),
        "every version was read: {v}"
    );

    let db = c.store_conn();
    db.execute_batch("CREATE TABLE audit_saved AS SELECT * FROM audit")
        .unwrap();
    let restore = || {
        db.execute_batch("DELETE FROM audit; INSERT INTO audit SELECT * FROM audit_saved")
            .unwrap();
        assert_ok(&c);
    };

    // Edited: one field of entry 3.
    db.execute(
        "UPDATE audit SET detail = '{\"edited\":true}' WHERE seq = 3",
        [],
    )
    .unwrap();
    let (seq, problem) = damaged(&c);
    assert_eq!(seq, 3, "{problem}");
    assert!(
        problem.contains("changed after it was written"),
        "{problem}"
    );
    restore();

    // Deleted: entry 4.
    db.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    let (seq, problem) = damaged(&c);
    assert_eq!(seq, 4, "{problem}");
    assert!(problem.contains("missing"), "{problem}");
    restore();

    // Reordered: entries 2 and 3 swap places.
    db.execute_batch(
        "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;
         UPDATE audit SET seq = 3 WHERE seq = -2;",
    )
    .unwrap();
    let (seq, problem) = damaged(&c);
    assert_eq!(seq, 2, "{problem}");
    assert!(problem.contains("does not follow entry 1"), "{problem}");
    restore();

    // Rewritten from entry 2 on with fresh hashes, as someone who knows the algorithm would:
    // the chain alone is consistent again; only the checkpoints tell.
    let rows: Vec<(i64, i64, String, String, Option<String>, String)> = db
        .prepare("SELECT seq, at_ms, actor, action, org, detail FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut prev: String = db
        .query_row("SELECT hash FROM audit WHERE seq = 1", [], |r| r.get(0))
        .unwrap();
    for (seq, at, actor, action, org, detail) in rows.iter().skip(1) {
        let detail = if *seq == 2 {
            "{\"rewritten\":true}".to_string()
        } else {
            detail.clone()
        };
        let hash = chain_hash(
            &prev,
            *seq,
            *at,
            actor,
            action,
            org.as_deref().unwrap_or(""),
            &detail,
        );
        db.execute(
            "UPDATE audit SET detail = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
            vec![
                SqlValue::Int(*seq),
                SqlValue::Text(detail.clone()),
                SqlValue::Text(prev.clone()),
                SqlValue::Text(hash.clone()),
            ],
        )
        .unwrap();
        prev = hash;
    }
    let (seq, problem) = damaged(&c);
    assert!(
        seq <= 2,
        "the damage starts at entry 2 or before: {seq} {problem}"
    );
    assert!(problem.contains("were rewritten"), "{problem}");
    // And the writer does not launder it into a fresh checkpoint.
    c.wait_for("the writer refusing to sign the rewritten chain", || {
        c.control_log()
            .contains("no longer holds what its last checkpoint signed")
            .then_some(())
    });
    restore();

    // Cut short to a consistent shorter chain: only the checkpoint of the head tells.
    db.execute("DELETE FROM audit WHERE seq > ?1", [head - 2])
        .unwrap();
    let (seq, problem) = damaged(&c);
    assert!(seq >= head - 1, "{seq} {problem}");
    assert!(problem.contains("cut short"), "{problem}");
}

#[test]
fn checkpoints_in_a_store_without_object_lock_are_signed_requests_and_the_verdict_says_unlocked() {
    let s3 = support::s3::S3::start();
    let env = [
        ("HEMVIST_AUDIT_SIGNING_KEY", SIGNING_KEY),
        ("HEMVIST_AUDIT_S3_ACCESS_KEY_ID", support::s3::ACCESS_KEY),
        (
            "HEMVIST_AUDIT_S3_SECRET_ACCESS_KEY",
            support::s3::SECRET_KEY,
        ),
    ];
    let c = start_with_checkpoints(
        &format!(
            "url = \"s3://{}/audit\"\nendpoint = {:?}\nlock = \"off\"",
            support::s3::BUCKET,
            s3.endpoint
        ),
        &env,
    );
    c.create_org_ready("delta", json!({"region": "eu-north", "residency": "EU"}));
    let v = covered(&c);
    assert_eq!(v["ok"], true, "{v}");
    assert!(
        v["warnings"].to_string().contains("not under Object Lock"),
        "{v}"
    );
    // s3s-fs checked every signature: the objects are there, under the prefix.
    let dir = s3.bucket_dir.join("audit/checkpoints");
    assert!(dir.is_dir(), "no checkpoints in {}", dir.display());
    let public_key = v["checkpoints"]["public_key"].as_str().unwrap();
    assert_eq!(public_key.len(), 64);
    assert!(
        !c.control_log().contains(SIGNING_KEY),
        "the signing key was logged"
    );
}
