//! Secrets stay secret, with the real processes: no byte of a password-derived value in a log,
//! an id or an answer; no data key on a node's disk; the control plane's key is the one that
//! counts; admin tokens are named, revocable and named in the audit log; a store of another
//! system, or a missing backup, is never mixed in silently; and the operator's verbs need only
//! `--control` and `--token`, from any folder.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, ADMIN_TOKEN, BIN, EU_NORTH};
use support::s3::{self, S3};
use support::session::sign_in;

const PASSWORDS: [&str; 2] = ["correct horse battery", "Tr0ub4dor&3-staple"];

/// Every file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn wait_shipped(c: &Cluster) {
    let eu = c.node_url("eu-north");
    c.wait_for("the node to ship everything", || {
        (c.metric(&eu, "hemvist_backup_dirty_tenants") == 0).then_some(())
    });
}

/// An org in Stockholm with a user, `n` contacts written by them, all shipped.
fn org_with_shipped_writes(c: &Cluster, org: &str, n: usize) {
    c.create_org_ready(org, json!({"region": "eu-north"}));
    let email = format!("ada@{org}.example");
    c.add_user(org, &email, PASSWORDS[0]);
    let u = sign_in(&c.node_url("eu-north"), org, &email, PASSWORDS[0]).unwrap();
    c.write_n(&u, "Kept", n, Duration::ZERO);
    wait_shipped(c);
}

/// `hemvist restore ORG` with only the control plane's URL and a token (the store comes from
/// the control plane), into `out`; the CLI's stderr on failure.
fn restore_from_control(c: &Cluster, org: &str, out: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["restore", org, "--at", "now", "--out"])
        .arg(out)
        .args(["--control", &c.control_url(), "--token", ADMIN_TOKEN])
        .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env_remove("HEMVIST_DATA")
        .current_dir(dir.path())
        .output()
        .expect("run hemvist restore");
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn no_key_or_password_derived_value_is_on_a_nodes_disk_in_a_log_or_in_an_answer() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, 200);
    c.create_org_ready("fika", json!({"region": "eu-north"}));
    let emails = ["ada@fika.example", "bo@fika.example"];
    for (email, password) in emails.iter().zip(PASSWORDS) {
        c.add_user("fika", email, password);
    }
    let eu = c.node_url("eu-north");
    let u = sign_in(&eu, "fika", emails[0], PASSWORDS[0]).expect("sign in");
    let before = c.write_n(&u, "Before", 10, Duration::ZERO);
    wait_shipped(&c);

    // A restart: the node comes back without any key on disk, gets it from the control plane,
    // and ships what it is written after.
    c.restart_node("eu-north");
    c.wait_nodes_healthy(1);
    let u = sign_in(&eu, "fika", emails[1], PASSWORDS[1]).expect("sign in after restart");
    let after = c.write_n(&u, "After", 10, Duration::ZERO);
    assert_eq!(before.acked.len() + after.acked.len(), 20);
    wait_shipped(&c);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fika.db");
    restore_from_control(&c, "fika", &out).expect("restore with the control plane's key");
    let conn = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n, 20,
        "writes from before and after the restart are in the backup"
    );

    // The org's data key: nowhere on the node's disk, neither as hex nor as bytes.
    let (_, key) = c.admin("GET", "/orgs/fika/data-key", None);
    let hex = key["data_key"].as_str().unwrap().to_string();
    assert_eq!(hex.len(), 64);
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let node_files = files(&c.node_data("eu-north"));
    assert!(
        node_files.len() >= 3,
        "the node's folder holds its state and tenants"
    );
    for (path, bytes) in &node_files {
        for needle in [hex.as_bytes(), hex.to_uppercase().as_bytes(), &raw] {
            assert!(
                !contains(bytes, needle),
                "{} holds the org's data key",
                path.display()
            );
        }
    }

    // Nothing derived from a password in any log line, id or answer: not the password, not
    // its argon2 hash or salt, not the digest the old command ids were made of.
    let mut seen = String::new();
    seen.push_str(&c.control_log());
    seen.push_str(&c.node_log("eu-north"));
    for path in ["/orgs", "/orgs/fika", "/nodes", "/regions", "/tokens"] {
        seen.push_str(&c.admin("GET", path, None).1.to_string());
    }
    for args in [
        &["orgs", "show", "fika"][..],
        &["orgs", "list"],
        &["orgs", "show", "fika", "--json"],
    ] {
        let (ok, out, err) = c.cli(args);
        assert!(ok, "{err}");
        seen.push_str(&out);
    }
    assert!(
        seen.contains("add-user-fika-"),
        "the users' commands are in what was read"
    );
    let tenant =
        rusqlite::Connection::open(c.node_data("eu-north").join("tenants/fi/fika.db")).unwrap();
    let hashes: Vec<String> = tenant
        .prepare("SELECT password_hash FROM users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(hashes.len(), 2);
    for (email, password) in emails.iter().zip(PASSWORDS) {
        assert!(!seen.contains(password), "a password shows");
        use sha2_digest::old_id_digest;
        assert!(
            !seen.contains(&old_id_digest(email, password)),
            "the old password-derived id shows"
        );
    }
    assert!(!seen.contains("$argon2"), "a password hash shows");
    for h in &hashes {
        for part in h.split('$').filter(|p| p.len() >= 16) {
            assert!(
                !seen.contains(part),
                "a part of a password hash shows: {part}"
            );
        }
    }
    assert!(
        !seen.contains(&hex),
        "the data key shows outside its audited route"
    );
}

/// The first 8 bytes of SHA-256(email \0 password), as the AddUser command ids once carried.
mod sha2_digest {
    pub fn old_id_digest(email: &str, password: &str) -> String {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{}\0{}", email.to_lowercase(), password).as_bytes());
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

#[test]
fn destroying_the_control_planes_key_makes_a_restore_fail_clearly() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH], &s3, 200);
    org_with_shipped_writes(&c, "gone", 5);
    let dir = tempfile::tempdir().unwrap();
    restore_from_control(&c, "gone", &dir.path().join("before.db")).expect("restore");

    // Without the confirmation, nothing is destroyed.
    let (status, body) = c.admin("DELETE", "/orgs/gone/data-key", None);
    assert_eq!(status, 400, "{body}");
    restore_from_control(&c, "gone", &dir.path().join("still.db")).expect("still restores");

    let (status, body) = c.admin("DELETE", "/orgs/gone/data-key?confirm=gone", None);
    assert_eq!(status, 200, "{body}");
    let err = restore_from_control(&c, "gone", &dir.path().join("after.db")).unwrap_err();
    assert!(err.contains("destroyed"), "{err}");
    assert!(!dir.path().join("after.db").exists());

    // The node forgets its copy too: what is written now is not sealed with a key nobody holds
    // any more, and nothing goes out unsealed either.
    c.wait_for("the node to forget the key", || {
        c.node_log("eu-north")
            .contains("data key revoked")
            .then_some(())
    });
    // What holds data (snapshots, segments, packs); index objects only list packs written
    // before, and may still be on their way.
    let data_objects = || {
        s3.objects("hemvist")
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e != "hvi"))
            .count()
    };
    let objects = data_objects();
    let u = sign_in(
        &c.node_url("eu-north"),
        "gone",
        "ada@gone.example",
        PASSWORDS[0],
    )
    .unwrap();
    let after = c.write_n(&u, "Unsealed", 3, Duration::ZERO);
    assert_eq!(after.acked.len(), 3, "the org still serves its users");
    let eu = c.node_url("eu-north");
    c.wait_for("the writes to wait for a key", || {
        (c.metric(&eu, "hemvist_backup_dirty_tenants") == 1).then_some(())
    });
    // Five backup intervals: long enough for a pass to have shipped them, had it had a key.
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(
        data_objects(),
        objects,
        "something was shipped: {:?}",
        s3.objects("hemvist")
    );
    let (_, org) = c.admin("GET", "/orgs/gone", None);
    let actions: Vec<&str> = org["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(actions.contains(&"data_key.destroyed"), "{actions:?}");
}

#[test]
fn admin_tokens_are_named_hashed_revocable_and_named_in_the_audit_log() {
    let c = Cluster::start(&[EU_NORTH]);
    let (status, made) = c.admin("POST", "/tokens", Some(json!({"name": "ops-laptop"})));
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    let (status, _) = c.admin("POST", "/tokens", Some(json!({"name": "ops-laptop"})));
    assert_eq!(status, 409, "a name is never reused");

    // The new token works, and what it does is attributed to its name.
    let (status, created) = c.admin_with_token(
        "POST",
        "/orgs",
        Some(json!({"id": "acme", "name": "Acme AB", "region": "eu-north"})),
        Some(&token),
    );
    assert_eq!(status, 201, "{created}");
    let (_, org) = c.admin("GET", "/orgs/acme", None);
    let placed = org["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "org.placed")
        .expect("placement audited")
        .clone();
    assert_eq!(placed["detail"]["requested_by"], "ops-laptop", "{placed}");

    // The store keeps only a hash; the list never shows a token.
    let (_, list) = c.admin("GET", "/tokens", None);
    assert!(!list.to_string().contains(&token), "{list}");
    let db = c.store_bytes();
    assert!(
        !contains(&db, token.as_bytes()),
        "the token rests in plain text"
    );

    // Revoked, it opens nothing; the revocation is audited with who did it.
    let (status, _) = c.admin("POST", "/tokens/ops-laptop/revoke", None);
    assert_eq!(status, 200);
    let (status, _) = c.admin_with_token("GET", "/orgs", None, Some(&token));
    assert_eq!(status, 401);
    let (ok, out, err) = c.cli(&["tokens", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ops-laptop") && out.contains("config"),
        "{out}"
    );
}

#[test]
fn a_store_of_another_system_or_a_missing_backup_is_never_used_silently() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, 200);
    org_with_shipped_writes(&c, "safe", 5);
    // The node wrote the system's id into the store when it registered.
    let marker = s3.bucket_dir.join("hemvist/hemvist-system.json");
    c.wait_for("the system marker", || marker.is_file().then_some(()));
    c.wait_for("the control plane to know the org has backups", || {
        c.org("safe")?.backed_up_ms.map(|_| ())
    });
    let (_, system) = c.admin("GET", "/system", None);
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(
        text.contains(system["system_id"].as_str().unwrap()),
        "{text}"
    );

    // The node loses its disk and is pointed at a store prefix that holds nothing: it must not
    // answer the org's `host` with an empty tenant.
    c.kill_node("eu-north");
    std::fs::remove_dir_all(c.node_data("eu-north")).unwrap();
    let config = c.node_config("eu-north");
    let good = std::fs::read_to_string(&config).unwrap();
    let wrong = good.replace("/hemvist\"", "/elsewhere\"");
    assert_ne!(wrong, good);
    std::fs::write(&config, &wrong).unwrap();
    c.start_node("eu-north");
    c.wait_for("the host command to fail loudly", || {
        let org = c.org("safe")?;
        org.commands
            .iter()
            .any(|cmd| {
                cmd.kind == "host"
                    && cmd
                        .error
                        .as_deref()
                        .is_some_and(|e| e.contains("refusing to create an empty tenant"))
            })
            .then_some(())
    });
    assert!(!c.node_data("eu-north").join("tenants/sa/safe.db").exists());

    // Pointed back at the right store, it restores the org with everything in it.
    c.kill_node("eu-north");
    std::fs::write(&config, &good).unwrap();
    c.start_node("eu-north");
    c.wait_org_ready("safe");
    let u = sign_in(
        &c.node_url("eu-north"),
        "safe",
        "ada@safe.example",
        PASSWORDS[0],
    )
    .unwrap();
    let (_, found) = u.json("/?q=kept");
    assert_eq!(found["total"], 5, "{found}");

    // A store that names another system is refused by the restore before any object is read.
    std::fs::write(
        &marker,
        r#"{"system_id":"0123456789abcdef0123456789abcdef","created_by":"elsewhere","created_ms":0}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = restore_from_control(&c, "safe", &dir.path().join("x.db")).unwrap_err();
    assert!(err.contains("another hemvist system"), "{err}");
}

#[test]
fn every_verb_runs_from_an_empty_folder_with_only_control_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("elsewhere");
    let (child, dev) = support::dev::start_dev(dir.path(), &data, &[]);
    let control = dev["control_url"].as_str().unwrap().to_string();
    let token = dev["admin_token"].as_str().unwrap().to_string();
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--control", &control, "--token", &token])
            .env_remove("HEMVIST_DATA")
            .env_remove("HEMVIST_CONTROL")
            .env_remove("HEMVIST_TOKEN")
            .current_dir(empty.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let wait_backed_up = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, _, err) = run(&["backups", "nordlys"]);
            if ok {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    for args in [
        &["regions"][..],
        &["nodes"],
        &["nodes", "list"],
        &["nodes", "undrain", "eu-north-1"],
        &["ops", "list"],
        &["orgs", "list"],
        &["orgs", "show", "nordlys"],
        &["tokens", "list"],
        &[
            "orgs", "create", "fresh", "--name", "Fresh AB", "--region", "eu-north", "--wait",
        ],
        &[
            "users",
            "add",
            "fresh",
            "--email",
            "ada@fresh.example",
            "--password",
            "correct horse battery",
        ],
    ] {
        let (ok, out, err) = run(args);
        assert!(ok, "{args:?}: {err}");
        assert!(!out.is_empty(), "{args:?} printed nothing");
    }
    // A drain that has nowhere to go (one node per region here) is refused, saying why.
    let (ok, _, err) = run(&["nodes", "drain", "eu-north-1"]);
    assert!(!ok && err.contains("no other healthy node"), "{err}");
    wait_backed_up();
    let (ok, out, err) = run(&["restore", "nordlys", "--out", "nordlys.db"]);
    assert!(ok, "{err}");
    assert!(out.contains("restored nordlys"), "{out}");
    assert!(empty.path().join("nordlys.db").is_file());
    assert!(!empty.path().join(".hemvist").exists());

    // A reader that goes away early ends every verb quietly, with success.
    for verb in [
        "backups nordlys",
        "orgs list",
        "regions",
        "orgs show nordlys",
    ] {
        // `true` has gone before the verb writes its first byte: every write meets a closed pipe.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; \"{BIN}\" {verb} --control {control} --token {token} | true"
            ))
            .current_dir(empty.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{verb} | head: {err}");
        assert!(!err.contains("panicked"), "{verb} | head: {err}");
    }
    let _: Value = dev;
    support::dev::stop_dev(child);
}

#[test]
fn a_dropped_tenant_leaves_the_trash_after_its_grace_period_and_that_is_audited() {
    let c = Cluster::start_with_node_config(&[EU_NORTH], "trash_grace_secs = 2\n");
    c.create_org_ready("old", json!({"region": "eu-north"}));
    // What `drop` leaves behind: the tenant's files under their generation and drop time.
    let trash = c.node_data("eu-north").join("trash");
    std::fs::create_dir_all(&trash).unwrap();
    let dropped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let young = trash.join(format!("old.g1-{dropped_ms}.db"));
    let aged = trash.join("old.g1-1000.db");
    for f in [&young, &aged] {
        std::fs::write(f, b"SQLite format 3\0").unwrap();
    }
    c.wait_for("the aged file to go", || (!aged.exists()).then_some(()));
    assert!(
        young.exists(),
        "a file younger than the grace period was deleted"
    );
    let audited = c.wait_for("the purge to be audited", || {
        let (_, org) = c.admin("GET", "/orgs/old", None);
        org["audit"]
            .as_array()?
            .iter()
            .find(|a| a["action"] == "tenant.purged")
            .cloned()
    });
    assert_eq!(audited["detail"]["label"], "g1-1000", "{audited}");
    assert_eq!(audited["actor"], "eu-north-1", "{audited}");
    // The young one goes too, once its own grace period is over.
    c.wait_for("the young file to go", || (!young.exists()).then_some(()));
}
