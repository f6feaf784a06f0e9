//! A node whose disk fills up under a writer: it turns its tenants read-only (507, page and JSON)
//! while reads, search and signing in go on, says it is degraded on /healthz and how much is
//! free on /metrics, gives its WAL's space back first, and takes writes again by itself once
//! space is freed, with every acknowledged write there.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;
use support::story::{acked, names_in, Writer};

const MIB: u64 = 1024 * 1024;
const PASSWORD: &str = "correct horse battery";

/// /healthz: (status, body as JSON or text).
fn health(c: &Cluster, base: &str) -> (u16, Value) {
    let (status, _, body) = c.get(&format!("{base}/healthz"));
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[test]
fn a_full_disk_is_a_read_only_state_that_ends_by_itself_when_space_is_freed() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, 200);
    let disk = c.node_on_tmpfs("eu-north", 64, 8);
    c.create_org_ready("fullt", json!({"region": "eu-north"}));
    c.add_user("fullt", "ada@fullt.example", PASSWORD);
    let eu = c.node_url("eu-north");
    assert_eq!(health(&c, &eu).0, 200);
    let u = sign_in(&eu, "fullt", "ada@fullt.example", PASSWORD).expect("sign in");
    let (status, _, _) = u.post("/contacts", &[("name", "Ada Before")], None);
    assert_eq!(status, 303);

    let writer = Writer::start(
        sign_in(&eu, "fullt", "ada@fullt.example", PASSWORD).expect("writer signs in"),
        "steady",
    );
    std::thread::sleep(Duration::from_millis(600));

    // Full: the disk at 0 for a moment, then 4 MiB free, under the 8 MiB headroom.
    let filler = disk.fill_leaving(4 * MIB);
    let degraded = c.wait_for("/healthz to say degraded", || {
        let (status, body) = health(&c, &eu);
        (status == 503).then_some(body)
    });
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    assert_eq!(degraded["reason"], "storage full", "{degraded}");
    assert!(c.metric(&eu, "hemvist_disk_free_bytes") < 8 * MIB);
    assert_eq!(c.metric(&eu, "hemvist_disk_headroom_bytes"), 8 * MIB);
    assert_eq!(c.metric(&eu, "hemvist_storage_full"), 1);

    // Writes are refused as storage full: a page for the browser, an error for scripts.
    let (status, _, page) = u.post("/contacts", &[("name", "Ada Full")], None);
    assert_eq!(status, 507, "{page}");
    assert!(page.contains("Storage full"), "{page}");
    let posted = u.post_with(
        "/contacts",
        &[("name", "Ada Json")],
        &[("accept", "application/json")],
    );
    assert_eq!(posted.status, 507, "{}", posted.body);
    assert_eq!(
        posted.json()["error"]["kind"],
        "storage_full",
        "{}",
        posted.body
    );
    assert!(c.metric(&eu, "hemvist_writes_refused_storage_full_total") >= 2);

    // Reads and search go on, and signing in needs no write.
    assert_eq!(u.get("/").0, 200);
    let (status, found) = u.json("/?q=Before");
    assert_eq!(status, 200, "{found}");
    assert!(found.to_string().contains("Ada Before"), "{found}");
    let again = sign_in(&eu, "fullt", "ada@fullt.example", PASSWORD)
        .expect("signing in while the disk is full");
    let (status, found) = again.json("/?q=Before");
    assert_eq!(status, 200, "the new session reads: {found}");

    // Checkpoints come first: the WAL, all shipped, gives its space back while writes wait.
    let wal = c.tenant_file("eu-north", "fullt").with_extension("db-wal");
    c.wait_for("the WAL to be checkpointed while the disk is full", || {
        let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        (len == 0).then_some(())
    });
    assert!(c.metric(&eu, "hemvist_storage_full") == 1, "still full");

    // Space comes back: writes resume on their own, no restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let started = Instant::now();
    c.wait_for("/healthz ok again", || {
        (health(&c, &eu).0 == 200).then_some(())
    });
    c.wait_for("a write acknowledged again", || {
        let (status, _, _) = u.post("/contacts", &[("name", "Ada After")], None);
        (status == 303).then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(c.metric(&eu, "hemvist_storage_full"), 0);
    std::thread::sleep(Duration::from_millis(400));
    let answers = writer.stop();

    let refused_full = answers.iter().filter(|a| a.1 == 507).count();
    assert!(
        refused_full > 0,
        "the writer was refused while full: {answers:?}"
    );
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|a| ![303, 507].contains(&a.1))
        .collect();
    assert!(unexpected.is_empty(), "only 303 or 507: {unexpected:?}");
    let after_full = answers
        .iter()
        .rposition(|a| a.1 == 507)
        .map(|i| answers[i + 1..].iter().filter(|a| a.1 == 303).count())
        .unwrap_or(0);
    assert!(
        after_full > 0,
        "the writer is acknowledged again: {answers:?}"
    );

    // Every acknowledged write is in the tenant, once.
    let mut expected = acked(&answers);
    expected.extend(["Ada Before".to_string(), "Ada After".to_string()]);
    expected.sort();
    let names = names_in(&c.tenant_file("eu-north", "fullt"));
    assert_eq!(names, expected, "every acknowledged write, nothing refused");
}
