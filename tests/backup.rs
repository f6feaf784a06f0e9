//! Continuous backup against a real S3-compatible server (s3s-fs over HTTP on loopback, behind a
//! fault layer), with real node processes: kill -9 under writes, restore exactly at points in
//! time, damaged objects named, faults retried without loss, idle tenants silent.

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH};
use support::s3::{self, S3};
use support::session::{sign_in, UserSession};

const PASSWORD: &str = "correct horse battery";
const INTERVAL_MS: u64 = 300;

fn org_with_user(c: &Cluster, org: &str) -> UserSession {
    c.create_org_ready(org, json!({"region": "eu-north"}));
    let email = format!("ada@{org}.example");
    c.add_user(org, &email, PASSWORD);
    sign_in(&c.node_url("eu-north"), org, &email, PASSWORD).expect("sign in")
}

fn add_contact(u: &UserSession, name: &str) {
    let (status, _, body) = u.post("/contacts", &[("name", name), ("city", "Uppsala")], None);
    assert_eq!(status, 303, "adding {name}: {body}");
}

/// Runs `hemvist restore` against the test's S3 server; the restored file's contact names, or
/// the CLI's error.
fn restore(c: &Cluster, s3: &S3, org: &str, at: &str, out: &Path) -> Result<Vec<String>, String> {
    restore_with(c, s3, org, at, out, &[])
}

fn restore_with(
    c: &Cluster,
    s3: &S3,
    org: &str,
    at: &str,
    out: &Path,
    extra: &[&str],
) -> Result<Vec<String>, String> {
    let store = format!("s3://{}/hemvist", s3::BUCKET);
    let output = std::process::Command::new(support::cluster::BIN)
        .args(["restore", org, "--at", at, "--out"])
        .arg(out)
        .args(extra)
        .args(["--store", &store, "--endpoint", &s3.endpoint])
        .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env("HEMVIST_DATA", c.dir.path())
        .env("HEMVIST_CONTROL", c.control_url())
        .env("HEMVIST_TOKEN", support::cluster::ADMIN_TOKEN)
        .output()
        .expect("run hemvist restore");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(names_in(out))
}

fn names_in(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open restored db");
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM contacts")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    names.sort();
    names
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Waits until the node has nothing left to ship. Enough after acknowledged writes: a write is
/// marked dirty before it is acknowledged, and a tenant turns clean only once a pass has stored
/// every write it had marked.
fn wait_shipped(c: &Cluster) {
    let eu = c.node_url("eu-north");
    c.wait_for("backups to catch up", || {
        (c.metric(&eu, "hemvist_backup_dirty_tenants") == 0).then_some(())
    });
}

/// Waits until the org's index objects alone (no scan of recent packs) restore exactly `want`
/// (sorted): the replicator has listed every packed segment under the tenant's own prefix.
fn wait_indexed(c: &Cluster, s3: &S3, org: &str, want: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let mut tries = 0;
    c.wait_for("index objects to list every packed segment", || {
        tries += 1;
        let out = dir.path().join(format!("probe-{tries}.db"));
        let got = restore_with(c, s3, org, "now", &out, &["--indexes-only"]).ok()?;
        (got == want).then_some(())
    });
}

/// Waits until the clock has moved past `t` (ms), so what happens next is later than `t`.
fn wait_past(t: i64) {
    while now_ms() <= t {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_and_a_node_that_lost_its_disk_restores_from_s3() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(INTERVAL_MS));
    let u = org_with_user(&c, "fika");
    // Writes, each acknowledged (303) at a known time, paced over a few seconds (the workload,
    // not a wait); then kill -9 in the middle of them.
    let mut acked: Vec<(String, Instant)> = Vec::new();
    for i in 0..80 {
        let name = format!("Person {i:03}");
        add_contact(&u, &name);
        acked.push((name, Instant::now()));
        std::thread::sleep(Duration::from_millis(30));
    }
    c.kill_node("eu-north");
    let killed = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let restored = restore(&c, &s3, "fika", "now", &dir.path().join("fika.db")).expect("restore");
    // Async mode: every write acknowledged more than one interval before the kill is there
    // (plus a little for the upload itself).
    let safe = Duration::from_millis(INTERVAL_MS + 250);
    let must: Vec<&String> = acked
        .iter()
        .filter(|(_, at)| killed.duration_since(*at) > safe)
        .map(|(n, _)| n)
        .collect();
    assert!(must.len() >= 30, "the test wrote for long enough");
    for name in &must {
        assert!(
            restored.contains(name),
            "{name} was acknowledged well before the kill but is not in the backup"
        );
    }
    // Nothing that was never written appears.
    for name in &restored {
        assert!(acked.iter().any(|(n, _)| n == name), "{name}?");
    }

    // The node comes back with an empty disk: the control plane assigns it the org again, and
    // the node restores it from S3 before serving.
    std::fs::remove_dir_all(c.node_data("eu-north")).unwrap();
    c.start_node("eu-north");
    let eu = c.node_url("eu-north");
    c.wait_for("the org served again", || {
        (c.get(&format!("{eu}/o/fika/signin")).0 == 200).then_some(())
    });
    // The user lives in the tenant's own database: restored with it.
    let u = sign_in(&eu, "fika", "ada@fika.example", PASSWORD).expect("sign in after restore");
    let (status, found) = u.json("/?q=person");
    assert_eq!(status, 200);
    assert!(
        found["total"].as_u64().unwrap() >= must.len() as u64,
        "{found}"
    );
    // And it goes on backing up: a new write is in the next restore.
    add_contact(&u, "After Restore");
    wait_shipped(&c);
    let again = restore(&c, &s3, "fika", "now", &dir.path().join("again.db")).expect("restore");
    assert!(again.contains(&"After Restore".to_string()));
    assert!(again.len() > restored.len());
}

#[test]
fn point_in_time_restores_are_exact_and_damage_is_named_with_a_way_out() {
    let s3 = S3::start();
    let c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(INTERVAL_MS));
    let u = org_with_user(&c, "fika");
    let batch = |prefix: &str| -> Vec<String> {
        (0..5)
            .map(|i| {
                let name = format!("{prefix} {i}");
                add_contact(&u, &name);
                name
            })
            .collect()
    };
    wait_shipped(&c);
    let a = batch("Alpha");
    wait_shipped(&c);
    let t1 = now_ms();
    wait_past(t1);
    let b = batch("Bravo");
    wait_shipped(&c);
    let t2 = now_ms();
    wait_past(t2);
    let cc = batch("Charlie");
    wait_shipped(&c);
    let dir = tempfile::tempdir().unwrap();
    let sorted = |v: Vec<&Vec<String>>| {
        let mut all: Vec<String> = v.into_iter().flatten().cloned().collect();
        all.sort();
        all
    };
    assert_eq!(
        restore(&c, &s3, "fika", &t1.to_string(), &dir.path().join("t1.db")).unwrap(),
        sorted(vec![&a])
    );
    assert_eq!(
        restore(&c, &s3, "fika", &t2.to_string(), &dir.path().join("t2.db")).unwrap(),
        sorted(vec![&a, &b])
    );
    assert_eq!(
        restore(&c, &s3, "fika", "now", &dir.path().join("now.db")).unwrap(),
        sorted(vec![&a, &b, &cc])
    );
    // The tenant's index objects alone (no scan of recent packs) reach the newest point once
    // they are written (every second in these tests).
    wait_indexed(&c, &s3, "fika", &sorted(vec![&a, &b, &cc]));
    assert!(!s3
        .objects("hemvist/tenants/fika/g0000000001/idx")
        .is_empty());
    assert_eq!(
        restore_with(
            &c,
            &s3,
            "fika",
            "now",
            &dir.path().join("idx.db"),
            &["--indexes-only"]
        )
        .unwrap(),
        sorted(vec![&a, &b, &cc])
    );
    // Every object is sealed with the org's data key: no contact's name is readable in the
    // bucket; a wrong key is refused clearly; every key handed out is audited.
    for file in s3.objects("hemvist") {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(5).any(|w| w == b"Alpha" || w == b"Bravo"),
            "{} holds plaintext",
            file.display()
        );
    }
    let wrong = restore_with(
        &c,
        &s3,
        "fika",
        "now",
        &dir.path().join("wrong.db"),
        &["--key", &"00".repeat(32)],
    )
    .unwrap_err();
    assert!(
        wrong.contains("cannot be opened with this data key"),
        "{wrong}"
    );
    let (_, shown, _) = c.cli(&["orgs", "show", "fika", "--json"]);
    assert!(shown.contains("data_key.read"), "key reads are audited");
    // An existing file is never overwritten.
    let err = restore(&c, &s3, "fika", "now", &dir.path().join("now.db")).unwrap_err();
    assert!(err.contains("already exists"), "{err}");

    // `hemvist backups` lists the generation and its restore points.
    let store = format!("s3://{}/hemvist", s3::BUCKET);
    let out = std::process::Command::new(support::cluster::BIN)
        .args([
            "backups",
            "fika",
            "--json",
            "--store",
            &store,
            "--endpoint",
            &s3.endpoint,
        ])
        .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["generation"], 1, "{listed}");
    assert!(listed[0]["segments"].as_u64().unwrap() >= 3, "{listed}");
    assert!(listed[0]["newest_ms"].as_i64().unwrap() >= t2);

    // Damage the newest pack (it holds the last of the Charlie batch): the restore names the
    // segment and its pack and offers the newest point before it, which has all of A and B
    // and not everything of C.
    let packs = s3.objects("hemvist/packs");
    let last = packs.last().expect("packs");
    let mut bytes = std::fs::read(last).unwrap();
    bytes[50] ^= 0x55;
    std::fs::write(last, &bytes).unwrap();
    let err = restore(&c, &s3, "fika", "now", &dir.path().join("damaged.db")).unwrap_err();
    let key = last.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&key) && err.contains("checksum"), "{err}");
    assert!(
        !dir.path().join("damaged.db").exists(),
        "nothing is left behind"
    );
    let offered = err
        .split("--at ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("a point is offered");
    let at_offer = restore(&c, &s3, "fika", offered, &dir.path().join("offer.db")).unwrap();
    for name in a.iter().chain(&b) {
        assert!(
            at_offer.contains(name),
            "{name} missing at the offered point"
        );
    }
    assert!(at_offer.len() < a.len() + b.len() + cc.len());

    // Damage the only snapshot: named, and there is no point without it.
    let snapshot = s3
        .objects("hemvist/tenants/fika/g0000000001/snap")
        .remove(0);
    let mut bytes = std::fs::read(&snapshot).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let err = restore(&c, &s3, "fika", "now", &dir.path().join("nosnap.db")).unwrap_err();
    assert!(
        err.contains("/snap/") && err.contains("no restore point exists without it"),
        "{err}"
    );
}

#[test]
fn store_faults_are_retried_without_loss_and_idle_tenants_cost_no_requests() {
    let s3 = S3::start();
    let c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(INTERVAL_MS));
    let u = org_with_user(&c, "fika");
    wait_shipped(&c);

    // Errors before and after the store applies a write, and dropped connections.
    s3.faults
        .fail_before
        .store(3, std::sync::atomic::Ordering::SeqCst);
    s3.faults
        .fail_after
        .store(2, std::sync::atomic::Ordering::SeqCst);
    s3.faults.drop.store(2, std::sync::atomic::Ordering::SeqCst);
    // Writes paced over several passes (the workload, not a wait), so faults meet several
    // uploads.
    let mut written = Vec::new();
    for i in 0..12 {
        let name = format!("Faulty {i:02}");
        add_contact(&u, &name);
        written.push(name);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_shipped(&c);
    for f in [
        &s3.faults.fail_before,
        &s3.faults.fail_after,
        &s3.faults.drop,
    ] {
        assert_eq!(
            f.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "every fault was hit"
        );
    }
    // Every object was created once, some after several attempts (the client retries, and a
    // retry of a write that did land finds it there: a conditional put, never an overwrite).
    let objects = s3.objects("hemvist").len() as u64;
    assert!(
        s3.count("PUT") >= objects + 7,
        "{} PUTs for {objects} objects",
        s3.count("PUT")
    );

    // A store that hangs never stalls serving: writes are acknowledged while uploads wait.
    let delay = |ms: u64| s3.faults.delay_ms.store(ms, Ordering::SeqCst);
    delay(8_000);
    let started = Instant::now();
    add_contact(&u, "While Stalled");
    written.push("While Stalled".into());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a write waited for the object store"
    );
    // ... and the lag grows where operators look: `orgs show` and the control plane's metrics.
    let shown = |c: &Cluster| -> Option<Value> {
        let (ok, out, _) = c.cli(&["orgs", "show", "fika", "--json"]);
        ok.then(|| serde_json::from_str(&out).ok()).flatten()
    };
    // Both within the stall (a loaded machine may take seconds to start the CLI): looked at
    // one after the other, the second could come after the upload landed.
    c.wait_for("the lag to show", || {
        (shown(&c)?["replication_lag_ms"].as_i64()? >= 1_000
            && c.metric(&c.control_url(), "hemvist_replication_lag_max_ms") >= 1_000)
            .then_some(())
    });
    delay(0);
    wait_shipped(&c);
    c.wait_for("the lag to clear", || {
        let s = shown(&c)?;
        (s["replication_lag_ms"].as_i64()? == 0 && s["replication"]["lsn"].as_u64()? > 0)
            .then_some(())
    });

    let dir = tempfile::tempdir().unwrap();
    let restored = restore(&c, &s3, "fika", "now", &dir.path().join("f.db")).unwrap();
    written.sort();
    assert_eq!(restored, written, "nothing lost, nothing doubled");

    // Idle (once the last index object is written, within a second here): no request at all
    // for several intervals (a window of time is what this measures, so it is slept).
    wait_indexed(&c, &s3, "fika", &written);
    let before = s3.total_requests();
    std::thread::sleep(Duration::from_millis(INTERVAL_MS * 6));
    assert_eq!(
        s3.total_requests(),
        before,
        "an idle tenant made object-store requests"
    );
}

#[test]
fn sync_orgs_lose_no_acknowledged_write_to_kill_9_and_concurrent_writers_share_uploads() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(INTERVAL_MS));
    let created = c.create_org_ready("bank", json!({"region": "eu-north", "durability": "sync"}));
    assert_eq!(created["durability"], "sync", "{created}");
    c.add_user("bank", "ada@bank.example", PASSWORD);
    let eu = c.node_url("eu-north");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let puts_before = s3.count("PUT");
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (eu, acked) = (eu.clone(), acked.clone());
            std::thread::spawn(move || {
                let u = sign_in(&eu, "bank", "ada@bank.example", PASSWORD).expect("sign in");
                for i in 0.. {
                    let name = format!("Writer {t} {i:04}");
                    let (status, _, _) = u.post("/contacts", &[("name", name.as_str())], None);
                    if status != 303 {
                        return;
                    }
                    acked.lock().unwrap().push(name);
                }
            })
        })
        .collect();
    c.wait_for("writes under load", || {
        (acked.lock().unwrap().len() >= 150).then_some(())
    });
    let puts_during = s3.count("PUT") - puts_before;
    let acked_then = acked.lock().unwrap().len();
    c.kill_node("eu-north");
    for w in writers {
        let _ = w.join(); // a writer whose request died with the node panics; that is expected
    }
    let acked = acked.lock().unwrap().clone();
    // Group commit: writers shared uploads (far fewer PUTs than acknowledged writes).
    assert!(
        puts_during < acked_then as u64,
        "{puts_during} PUTs for {acked_then} acknowledged writes"
    );
    let dir = tempfile::tempdir().unwrap();
    let restored = restore(&c, &s3, "bank", "now", &dir.path().join("bank.db")).expect("restore");
    for name in &acked {
        assert!(
            restored.contains(name),
            "{name} was acknowledged but is not in the backup"
        );
    }
}

#[test]
fn expired_backups_are_removed_and_what_is_kept_still_restores() {
    let s3 = S3::start();
    let config =
        s3.node_backup_toml(INTERVAL_MS) + "retention_secs = 2\nsnapshot_after_bytes = 1\n";
    let c = Cluster::start_with_node_config(&[EU_NORTH], &config);
    let u = org_with_user(&c, "fika");
    wait_shipped(&c);
    let before_all = now_ms();
    let mut written = Vec::new();
    for round in 0..5 {
        let started = now_ms();
        for i in 0..3 {
            let name = format!("Round {round} {i}");
            add_contact(&u, &name);
            written.push(name);
        }
        wait_shipped(&c);
        // The round's index objects are written (every second here); and rounds are at least
        // 1.2 s apart, so that time passes the two-second retention (the window is wall-clock
        // time, so the clock is what is waited for).
        written.sort();
        wait_indexed(&c, &s3, "fika", &written);
        wait_past(started + 1_200);
    }
    // Every round took a snapshot, and each snapshot removed what fell out of the window:
    // old snapshots, index objects, and the packs whose segments were all released.
    let eu = c.node_url("eu-north");
    assert!(c.metric(&eu, "hemvist_backup_deletes_total") >= 3);
    // (S3 deletes go in bulk: POST ?delete.)
    assert!(s3.count("DELETE") + s3.count("POST") >= 2);
    let snapshots = s3.objects("hemvist/tenants/fika/g0000000001/snap").len();
    assert!(
        snapshots < 5,
        "{snapshots} snapshots kept with a 2 s retention"
    );
    let dir = tempfile::tempdir().unwrap();
    written.sort();
    assert_eq!(
        restore(&c, &s3, "fika", "now", &dir.path().join("now.db")).unwrap(),
        written
    );
    let err = restore(
        &c,
        &s3,
        "fika",
        &before_all.to_string(),
        &dir.path().join("old.db"),
    )
    .unwrap_err();
    assert!(err.contains("no restore point"), "{err}");
}

/// Invariant 1 on the storage side, with the node library in-process against the real S3
/// server: a node whose generation was superseded ships nothing more, and no object is ever
/// overwritten (a conditional create of an existing key is refused and the bytes stay).
#[test]
fn a_fenced_node_ships_nothing_and_objects_are_never_overwritten() {
    use hemvist_node::state::Placement;
    use hemvist_proto::{Generation, NodeId, OrgId, RegionId};
    use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};

    let (s3, _dir, rt, node) = node_in_process();
    let _guard = rt.enter();
    let org = OrgId::parse("fika").unwrap();
    host_in_process(&node, &org, [7u8; 32]);
    let replicator = node.backup.clone().unwrap();
    rt.block_on(replicator.pass());
    let first = s3.objects("hemvist");
    assert!(!first.is_empty(), "the first snapshot was shipped");

    // A write, then the control plane hands the org to another node at generation 2.
    let write = |name: &str| {
        node.tenants
            .write(&org, |tx| {
                tx.execute(
                    "INSERT INTO contacts (name, created_ms, updated_ms) VALUES (?1, 0, 0)",
                    [name],
                )
            })
            .unwrap();
        replicator.mark_dirty(&org);
    };
    write("Before the move");
    rt.block_on(replicator.pass());
    let before_fence = s3.objects("hemvist").len();
    node.state
        .apply_placements(
            false,
            vec![(
                org.clone(),
                Placement {
                    region: RegionId::parse("eu-north").unwrap(),
                    node_id: NodeId::parse("eu-north-2").unwrap(),
                    node_url: "http://127.0.0.1:9".into(),
                    generation: Generation::new(2).unwrap(),
                },
            )],
            vec![],
        )
        .unwrap();
    write("After the move");
    rt.block_on(replicator.pass());
    assert_eq!(
        s3.objects("hemvist").len(),
        before_fence,
        "a fenced node shipped something"
    );

    // Objects are created once: putting other bytes under an existing key is refused.
    let store = node.config.backup.as_ref().unwrap().open().unwrap();
    let existing = first[0]
        .strip_prefix(s3.bucket_dir.join("hemvist"))
        .unwrap();
    let key = object_store::path::Path::from(existing.to_string_lossy().as_ref());
    let original = std::fs::read(&first[0]).unwrap();
    let refused = rt.block_on(store.put_opts(
        &key,
        b"not a backup".to_vec().into(),
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        },
    ));
    assert!(
        matches!(refused, Err(object_store::Error::AlreadyExists { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&first[0]).unwrap(), original);
    assert_eq!(
        rt.block_on(store.head(&key)).unwrap().size,
        original.len() as u64
    );
}

/// A node's library in this process, backing up to a new S3 server under `hemvist/`, with no
/// control plane (nothing here needs one); its folder and its runtime.
fn node_in_process() -> (
    S3,
    tempfile::TempDir,
    tokio::runtime::Runtime,
    std::sync::Arc<hemvist_node::Node>,
) {
    use hemvist_node::backup::store::BackupConfig;
    use hemvist_node::NodeConfig;
    use hemvist_proto::{NodeId, RegionId};
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut backup = BackupConfig::local(dir.path());
    backup.url = format!("s3://{}/hemvist", s3::BUCKET);
    backup.endpoint = Some(s3.endpoint.clone());
    backup.access_key_id = Some(s3::ACCESS_KEY.into());
    backup.secret_access_key = Some(s3::SECRET_KEY.into());
    let config = NodeConfig {
        id: NodeId::parse("eu-north-1").unwrap(),
        region: RegionId::parse("eu-north").unwrap(),
        control_url: "http://127.0.0.1:9".into(),
        control_urls: Vec::new(),
        join_token: "unused".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        public_url: None,
        control_tls: Default::default(),
        insecure: false,
        tls: None,
        limits: Default::default(),
        signin: Default::default(),
        data_dir: dir.path().join("node"),
        capacity: 10,
        max_open_tenants: 4,
        idle_close_ms: 60_000,
        trash_grace_secs: 7 * 24 * 3600,
        idempotency_ttl_secs: 24 * 3600,
        disk_headroom_mib: 256,
        backup: Some(backup),
    };
    let node = {
        let _guard = rt.enter();
        hemvist_node::Node::open(config, "http://127.0.0.1:9".into()).unwrap()
    };
    (s3, dir, rt, std::sync::Arc::new(node))
}

/// Hosts `org` at generation 1 with the data key `key`.
fn host_in_process(node: &hemvist_node::Node, org: &hemvist_proto::OrgId, key: [u8; 32]) {
    node.hosting
        .host(&hemvist_node::HostRequest {
            org: org.clone(),
            generation: hemvist_proto::Generation::new(1).unwrap(),
            name: org.to_string(),
            allowed_regions: vec!["eu-north".into()],
            sync: false,
            data_key: Some(hemvist_proto::DataKey(key)),
            expect_backup: false,
            moved_here: false,
            schema: hemvist_node::tenants::schema::Schema::new(
                hemvist_proto::migration::builtin().len() as u32,
                hemvist_proto::migration::builtin(),
            )
            .unwrap(),
        })
        .unwrap();
}

/// A tenant larger than several snapshot chunks: its snapshot is restored chunk by chunk over
/// HTTP (downloads running ahead of the threads that open and write them) to exactly the bytes
/// it had, and a byte flipped inside one chunk in the bucket stops the restore with the object
/// and the chunk named, leaving no file behind.
#[test]
fn a_tenant_of_several_chunks_restores_exactly_and_a_damaged_chunk_is_named() {
    use hemvist_node::backup::format::{self, ObjectName, SnapshotHead};
    use hemvist_node::backup::restore;
    use hemvist_proto::{DataKey, OrgId};

    let (s3, dir, rt, node) = node_in_process();
    let _guard = rt.enter();
    let org = OrgId::parse("stora").unwrap();
    let key = [11u8; 32];
    host_in_process(&node, &org, key);
    // About 13 MiB that does not compress: more than three 4 MiB chunks.
    node.tenants
        .write(&org, |tx| {
            tx.execute_batch(
                "CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
                 INSERT INTO blobs (id, b) SELECT i, randomblob(65536) FROM n;",
            )
        })
        .unwrap();
    let replicator = node.backup.clone().unwrap();
    replicator.mark_dirty(&org);
    rt.block_on(replicator.pass());
    let blobs = |db: &Path| -> Vec<(i64, Vec<u8>)> {
        let conn = rusqlite::Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT id, b FROM blobs ORDER BY id").unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        rows
    };
    let written = blobs(&node.tenants.path(&org));
    assert_eq!(written.len(), 200);

    let store = node.config.backup.as_ref().unwrap().open().unwrap();
    let restore_to = |out: &Path| {
        rt.block_on(async {
            let catalog = restore::catalog(&store, &org).await?;
            let plan = catalog
                .plan(i64::MAX, &[])
                .ok_or_else(|| anyhow::anyhow!("no restore point"))?;
            restore::restore(&store, &catalog, &plan, out, Some(&DataKey(key))).await
        })
    };
    let out = dir.path().join("restored.db");
    let restored = restore_to(&out).expect("restore");
    assert!(restored.db_bytes > 12 << 20, "{} bytes", restored.db_bytes);
    assert_eq!(blobs(&out), written, "the restore differs from the tenant");

    // One byte flipped inside the second chunk of the snapshot, as stored in the bucket.
    let snapshot = s3
        .objects("hemvist")
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/snap/"))
        .expect("a snapshot object");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let key_of = snapshot
        .strip_prefix(s3.bucket_dir.join("hemvist"))
        .unwrap()
        .to_string_lossy()
        .to_string();
    let name = ObjectName::parse(&key_of).expect("a snapshot name");
    let SnapshotHead::Chunked(table) = format::snapshot_head(&name, &bytes).unwrap() else {
        panic!("a chunked snapshot");
    };
    assert!(table.chunks.len() >= 4, "{} chunks", table.chunks.len());
    let (offset, len, _) = table.chunks[1];
    bytes[(offset + len as u64 / 2) as usize] ^= 0x40;
    std::fs::write(&snapshot, &bytes).unwrap();
    let damaged_out = dir.path().join("damaged.db");
    let err = format!(
        "{:#}",
        restore_to(&damaged_out).expect_err("a damaged chunk")
    );
    assert!(
        err.contains(&key_of) && err.contains("chunk 1") && err.contains("damaged"),
        "{err}"
    );
    assert!(!damaged_out.exists(), "a damaged restore left a file");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".restoring")),
        "a damaged restore left its partial file"
    );
}
