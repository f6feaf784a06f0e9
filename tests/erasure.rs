//! GDPR erasure, end to end: real control plane and node processes, a real S3-compatible
//! server with one store per region, real SQLite files. An org that lived in two regions and
//! has a branch is erased across a kill -9 of the control plane half-way: afterwards no object
//! of it (or of its branch) is in either region's store, no file on either node (the trash
//! included), no branch, no placement; a restore fails clearly; the receipt is in the audit log
//! once; its id is never used again.

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;

const PASSWORD: &str = "correct horse battery";

#[test]
fn an_org_erased_across_a_control_plane_kill_leaves_nothing_anywhere_and_its_id_stays_taken() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_store_per_region(&[EU_NORTH, EU_CENTRAL], &s3, 300, "");
    c.create_org_ready("glomt", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("glomt", "ulla@glomt.example", PASSWORD);
    let ulla = sign_in(
        &c.node_url("eu-north"),
        "glomt",
        "ulla@glomt.example",
        PASSWORD,
    )
    .unwrap();
    for i in 0..5 {
        let (status, _, _) = ulla.post("/contacts", &[("name", &format!("Early {i}"))], None);
        assert_eq!(status, 303);
    }
    // It lives in two regions over time: backups in both stores.
    let id = c.move_org("glomt", "eu-central");
    assert_eq!(
        c.wait_operation_end(&id, Duration::from_secs(60))["phase"],
        "done"
    );
    let ulla = sign_in(
        &c.node_url("eu-central"),
        "glomt",
        "ulla@glomt.example",
        PASSWORD,
    )
    .unwrap();
    let (status, _, _) = ulla.post("/contacts", &[("name", "Late One")], None);
    assert_eq!(status, 303);
    let (ok, out, err) = c.cli(&["branch", "create", "glomt", "--name", "qa", "--wait"]);
    assert!(ok, "{out}\n{err}");
    for region in ["eu-north", "eu-central"] {
        assert!(
            !s3.objects(&format!("hemvist/{region}/tenants/glomt"))
                .is_empty(),
            "backups in {region} before the erasure"
        );
    }

    // Refused without the confirmation (or with another id), and for a branch.
    let (status, _) = c.admin("POST", "/orgs/glomt/erase", Some(json!({})));
    assert_eq!(status, 400);
    let (ok, _, err) = c.cli(&["orgs", "erase", "glomt", "--confirm", "glomt2"]);
    assert!(!ok && err.contains("cannot be undone"), "{err}");
    let (status, _) = c.admin(
        "POST",
        "/orgs/glomt--qa/erase",
        Some(json!({"confirm": "glomt--qa"})),
    );
    assert_eq!(status, 400);

    // Killed half-way: once the erasure of its nodes' copies is recorded.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.erase.destroying=crash")]);
    c.wait_nodes_healthy(2);
    let _ = support::http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .post(format!("{}/api/v1/orgs/glomt/erase", c.control_url()))
        .bearer_auth(support::cluster::ADMIN_TOKEN)
        .json(&json!({"confirm": "glomt"}))
        .send();
    assert!(c.wait_control_exit(), "crashed half-way");
    c.start_control();
    let (_, ops) = c.admin("GET", "/operations", None);
    let erase = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "erase" && o["org"] == "glomt")
        .cloned()
        .expect("the erasure's operation");
    let ended = c.wait_operation_end(erase["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");

    for region in ["eu-north", "eu-central"] {
        for org in ["glomt", "glomt--qa"] {
            assert!(
                s3.objects(&format!("hemvist/{region}/tenants/{org}"))
                    .is_empty(),
                "{org}'s backups in {region}: {:?}",
                s3.objects(&format!("hemvist/{region}/tenants/{org}"))
            );
            assert_eq!(
                c.files_of(region, org),
                Vec::<String>::new(),
                "{org} on {region}'s node"
            );
        }
    }
    let (status, _) = c.admin("GET", "/orgs/glomt", None);
    assert_eq!(status, 404);
    let (_, b) = c.admin("GET", "/branches/glomt--qa", None);
    assert_eq!(b["state"], "destroyed", "{b}");
    assert!(b["destroyed_why"]
        .as_str()
        .unwrap_or_default()
        .contains("erased"));
    let (status, _, _) = c.get(&format!("{}/o/glomt/signin", c.node_url("eu-central")));
    assert_eq!(status, 404, "no node serves it");
    let restored = c.restore_from(
        &s3,
        "glomt",
        &c.dir.path().join("glomt.db"),
        &["--at", "now"],
    );
    assert!(restored.is_err(), "a restore of an erased org fails");

    // The receipt, once; the id stays taken.
    let (_, all) = c.admin("GET", "/audit?limit=10000", None);
    let receipts: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "org.erased" && a["org"] == "glomt")
        .collect();
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    let r = receipts[0].to_string();
    for word in ["eu-north", "eu-central", "glomt--qa", "destroyed"] {
        assert!(r.contains(word), "{word} in the receipt {r}");
    }
    let (status, body) = c.create_org(json!({"id": "glomt", "name": "Again"}));
    assert_eq!(status, 409, "{body}");
    let (status, _) = c.admin(
        "POST",
        "/orgs/glomt/erase",
        Some(json!({"confirm": "glomt"})),
    );
    assert_eq!(status, 409, "erased once");
}
