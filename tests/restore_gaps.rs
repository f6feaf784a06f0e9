//! Nothing is lost silently (DESIGN invariant 7): a restore or a rebuild that cannot reach the
//! newest position the store and the control plane know fails naming what is missing and the
//! newest point it can reach; only an explicit, audited choice takes that older point. And an
//! org created again with other parameters is a conflict, never "unchanged".

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{Cluster, EU_NORTH};
use support::s3::S3;
use support::session::{sign_in, UserSession};

const PASSWORD: &str = "correct horse battery";

fn add_contacts(u: &UserSession, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix} {i}");
            let (status, _, body) = u.post("/contacts", &[("name", &name)], None);
            assert_eq!(status, 303, "adding {name}: {body}");
            name
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn wait_shipped(c: &Cluster) {
    let eu = c.node_url("eu-north");
    c.wait_for("backups to catch up", || {
        (c.metric(&eu, "hemvist_backup_dirty_tenants") == 0).then_some(())
    });
}

#[test]
fn a_pack_cut_short_before_its_index_lists_it_stops_restore_and_rebuild_until_an_older_point_is_accepted(
) {
    let s3 = S3::start();
    // Index objects at most every 30 s: the newest packed segments are listed by no index when
    // the node dies.
    let backup = s3
        .node_backup_toml(200)
        .replace("index_every_ms = 1000", "index_every_ms = 30000");
    let mut c = Cluster::start_with_node_config(&[EU_NORTH], &backup);
    c.create_org_ready("fika", json!({"region": "eu-north"}));
    c.add_user("fika", "ada@fika.example", PASSWORD);
    let u = sign_in(
        &c.node_url("eu-north"),
        "fika",
        "ada@fika.example",
        PASSWORD,
    )
    .unwrap();
    let early = add_contacts(&u, "Early", 10);
    wait_shipped(&c);
    // Apart in time from what follows, so they land in other packs.
    std::thread::sleep(Duration::from_millis(500));
    let late = add_contacts(&u, "Late", 5);
    let written = now_ms();
    wait_shipped(&c);
    c.wait_position_known("fika", written);
    c.kill_node("eu-north");
    let pack = c.cut_newest_pack(&s3, 64);

    // The restore names the damaged pack and the point it can reach, and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("now.db");
    let err = c.restore_from(&s3, "fika", &out, &[]).unwrap_err();
    assert!(
        err.contains(&pack) && err.contains("--accept-older") && err.contains("newest point"),
        "{err}"
    );
    assert!(!out.exists(), "a refused restore leaves no file");
    // Taking the older point is explicit: everything before the damage, not all of after it.
    let older = c
        .restore_from(&s3, "fika", &out, &["--accept-older"])
        .expect("the older point, accepted");
    assert!(early.iter().all(|n| older.contains(n)), "{older:?}");
    assert!(
        late.iter().any(|n| !older.contains(n)),
        "the damaged pack held some of the last writes: {older:?}"
    );

    // The node comes back with an empty disk: it refuses to rebuild the org at the older point
    // and says why on the host command; the org is not served.
    std::fs::remove_dir_all(c.node_data("eu-north")).unwrap();
    c.start_node("eu-north");
    let refused = c.refused_host("fika");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&pack) && error.contains("orgs rebuild fika --accept-older"),
        "{refused}"
    );
    let eu = c.node_url("eu-north");
    assert_ne!(c.get(&format!("{eu}/o/fika/signin")).0, 200);
    assert!(!c
        .node_data("eu-north")
        .join("tenants")
        .join("fika.db")
        .exists());

    // Accepting needs the flag; with it, the acceptance is audited and the node rebuilds the
    // org at the newest point it can reach.
    let (ok, _, err) = c.cli(&["orgs", "rebuild", "fika"]);
    assert!(!ok && err.contains("--accept-older"), "{err}");
    let (ok, said, err) = c.cli(&[
        "orgs",
        "rebuild",
        "fika",
        "--accept-older",
        "--reason",
        "pack damaged",
    ]);
    assert!(ok, "{err}");
    assert!(said.contains("accepted"), "{said}");
    c.wait_for("the org served again", || {
        (c.get(&format!("{eu}/o/fika/signin")).0 == 200).then_some(())
    });
    let u = sign_in(&eu, "fika", "ada@fika.example", PASSWORD).expect("sign in after rebuild");
    let (status, found) = u.json("/?q=early");
    assert_eq!(status, 200);
    assert_eq!(found["total"], early.len() as u64, "{found}");
    let (_, shown) = c.admin("GET", "/orgs/fika", None);
    let accepted = shown["audit"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "org.accepted_older")
        .cloned()
        .unwrap_or_else(|| panic!("the acceptance is audited: {shown}"));
    assert_eq!(accepted["detail"]["reason"], "pack damaged", "{accepted}");
    assert!(accepted["detail"]["requested_by"].is_string(), "{accepted}");
    assert!(
        accepted["detail"]["refusal"]
            .as_str()
            .is_some_and(|r| r.contains(&pack)),
        "{accepted}"
    );
}

#[test]
fn creating_an_org_again_with_other_parameters_is_a_conflict_naming_them() {
    let c = Cluster::start(&[EU_NORTH]);
    c.create_org_ready("tack", json!({"region": "eu-north"}));
    let (ok, said, err) = c.cli(&["orgs", "create", "tack", "--name", "Org tack"]);
    assert!(
        ok && said.contains("already exists, unchanged"),
        "{said}{err}"
    );
    let (ok, said, _) = c.cli(&[
        "orgs",
        "create",
        "tack",
        "--name",
        "Org tack",
        "--durability",
        "async",
    ]);
    assert!(
        ok && said.contains("unchanged"),
        "the same durability is no change"
    );

    let (ok, said, err) = c.cli(&[
        "orgs",
        "create",
        "tack",
        "--name",
        "Org tack",
        "--durability",
        "sync",
    ]);
    assert!(!ok, "another durability is not 'unchanged': {said}");
    assert!(err.contains("durability is async, not sync"), "{err}");
    let (status, body) =
        c.create_org(json!({"id": "tack", "name": "Org tack", "durability": "sync"}));
    assert_eq!(status, 409, "{body}");
    let (status, body) = c.create_org(json!({"id": "tack", "name": "Org tack", "residency": "EU"}));
    assert_eq!(status, 409, "{body}");
    assert!(body.to_string().contains("residency"), "{body}");
    let (_, shown) = c.admin("GET", "/orgs/tack", None);
    assert_eq!(shown["durability"], "async", "nothing was changed");
}

#[test]
fn a_lost_newest_pack_is_missed_by_what_the_control_plane_was_told_even_after_it_restarts() {
    let s3 = S3::start();
    let backup = s3
        .node_backup_toml(200)
        .replace("index_every_ms = 1000", "index_every_ms = 30000");
    let mut c = Cluster::start_with_node_config(&[EU_NORTH], &backup);
    c.create_org_ready("fika", json!({"region": "eu-north"}));
    c.add_user("fika", "ada@fika.example", PASSWORD);
    let u = sign_in(
        &c.node_url("eu-north"),
        "fika",
        "ada@fika.example",
        PASSWORD,
    )
    .unwrap();
    add_contacts(&u, "Early", 5);
    wait_shipped(&c);
    std::thread::sleep(Duration::from_millis(500));
    add_contacts(&u, "Late", 5);
    let written = now_ms();
    wait_shipped(&c);
    let (_, lsn) = c.wait_position_known("fika", written);
    c.kill_node("eu-north");
    // The newest pack vanishes without a trace in the store: only the control plane, which
    // keeps what it was told across its own restart, knows it existed.
    let packs = s3.objects("hemvist/packs");
    std::fs::remove_file(packs.last().unwrap()).unwrap();
    c.restart_control();

    let dir = tempfile::tempdir().unwrap();
    let err = c
        .restore_from(&s3, "fika", &dir.path().join("now.db"), &[])
        .unwrap_err();
    let told = format!("the control plane was told generation 1 was shipped to LSN {lsn}");
    assert!(
        err.contains(&told) && err.contains("--accept-older"),
        "{err}"
    );

    std::fs::remove_dir_all(c.node_data("eu-north")).unwrap();
    c.start_node("eu-north");
    let refused = c.refused_host("fika");
    assert!(
        refused["error"].as_str().is_some_and(|e| e.contains(&told)),
        "{refused}"
    );
    let eu = c.node_url("eu-north");
    assert_ne!(c.get(&format!("{eu}/o/fika/signin")).0, 200);
}
