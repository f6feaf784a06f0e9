//! `orgs set-residency ORG POLICY --move-to REGION`, end to end: real control plane and node
//! processes in two regions, a real S3-compatible server with one store per region, real SQLite
//! files. An org that may live only in eu-north, sharing its node's packs with another org,
//! takes a policy of eu-central only:
//! - refused without `--move-to`, or with a target the new policy forbids (nothing changes);
//! - a change waiting for a node to move to is cancelled at once, the old policy back;
//! - a change cancelled during its move rolls back: the org stays, the old policy stands;
//! - a change whose control plane is killed once the move is done and the purge recorded is
//!   finished by the restarted one: the org lives in eu-central with every acknowledged write,
//!   eu-north's store holds no object of it and no pack names a segment of it (the other org's
//!   packs still restore it), no file of it is on eu-north's node, and the residency report
//!   shows the policy over time (old, both while carried over, new), the eu-north backups ending
//!   when they were deleted, and "compliant", with `--verify-stores`.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;
use support::story::names_in;

const PASSWORD: &str = "correct horse battery";

/// The segment names the packs under `prefix` list (their indexes, read as a restore reads
/// them: the tail named by the key).
fn packed_segments(s3: &S3, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for path in s3.objects(prefix) {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".hvp") else {
            continue;
        };
        let index_len = u64::from_str_radix(stem.rsplit('-').next().unwrap(), 16).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let tail = &bytes[bytes.len() - index_len as usize..];
        let index = &tail[..tail.len() - 32];
        let entries: Vec<(String, u64, u64)> = serde_json::from_slice(index)
            .unwrap_or_else(|e| panic!("{}: unreadable index: {e}", path.display()));
        names.extend(entries.into_iter().map(|(n, _, _)| n));
    }
    names
}

/// The org's home region and its policy, as `orgs show` has them.
fn policy_of(c: &Cluster, org: &str) -> (String, String) {
    let (status, o) = c.admin("GET", &format!("/orgs/{org}"), None);
    assert_eq!(status, 200, "{o}");
    let text = |k: &str| o[k].as_str().unwrap_or_default().to_string();
    (text("home_region"), text("residency"))
}

#[test]
fn a_policy_that_forbids_where_an_org_lives_carries_it_over_and_deletes_what_is_left() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_store_per_region(&[EU_NORTH, EU_CENTRAL], &s3, 300, "");
    c.create_org_ready(
        "fjord",
        json!({"region": "eu-north", "residency": "eu-north"}),
    );
    c.create_org_ready(
        "granne",
        json!({"region": "eu-north", "residency": "eu-north"}),
    );
    c.add_user("fjord", "fia@fjord.example", PASSWORD);
    c.add_user("granne", "gus@granne.example", PASSWORD);
    let fia = sign_in(
        &c.node_url("eu-north"),
        "fjord",
        "fia@fjord.example",
        PASSWORD,
    )
    .unwrap();
    let gus = sign_in(
        &c.node_url("eu-north"),
        "granne",
        "gus@granne.example",
        PASSWORD,
    )
    .unwrap();
    let mut written = Vec::new();
    for i in 0..6 {
        let name = format!("Fjord {i}");
        let (status, _, _) = fia.post("/contacts", &[("name", &name)], None);
        assert_eq!(status, 303);
        written.push(name);
        let (status, _, _) = gus.post("/contacts", &[("name", &format!("Granne {i}"))], None);
        assert_eq!(status, 303);
        std::thread::sleep(Duration::from_millis(350));
    }
    // Both orgs' small segments share eu-north's packs: what the purge must scrub.
    c.wait_for("packs in eu-north holding both orgs' segments", || {
        let names = packed_segments(&s3, "hemvist/eu-north/packs");
        (names.iter().any(|n| n.starts_with("tenants/fjord/"))
            && names.iter().any(|n| n.starts_with("tenants/granne/")))
        .then_some(())
    });

    // Refused, naming why, and nothing changes.
    let (ok, _, err) = c.cli(&["orgs", "set-residency", "fjord", "eu-central"]);
    assert!(!ok && err.contains("it lives in eu-north"), "{err}");
    let (ok, _, err) = c.cli(&[
        "orgs",
        "set-residency",
        "fjord",
        "eu-central",
        "--move-to",
        "eu-north",
    ]);
    assert!(!ok && err.contains("does not allow"), "{err}");
    assert_eq!(
        policy_of(&c, "fjord"),
        ("eu-north".into(), "eu-north".into())
    );

    // With no healthy node in eu-central the move cannot start; the change waits (an alarm),
    // and a cancel reverts it at once.
    c.kill_node("eu-central");
    c.wait_for("eu-central's node to be seen gone", || {
        let (_, nodes) = c.admin("GET", "/nodes", None);
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == "eu-central-1" && n["healthy"] == false)
            .then_some(())
    });
    let (status, op) = c.admin(
        "POST",
        "/orgs/fjord/residency",
        Some(json!({"policy": "eu-central", "move_to": "eu-central"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    c.wait_for("the change to wait for a node to move to", || {
        let op = c.operation(&id);
        (op["phase"] == "moving" && op["children"].as_array()?.is_empty()).then_some(())
    });
    let (ok, out, err) = c.cli(&["ops", "cancel", &id]);
    assert!(ok, "cancel: {out}\n{err}");
    let ended = c.wait_operation_end(&id, Duration::from_secs(30));
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert!(
        ended["children"].as_array().unwrap().is_empty(),
        "{ended:#}"
    );
    assert_eq!(
        policy_of(&c, "fjord"),
        ("eu-north".into(), "eu-north".into())
    );
    c.start_node("eu-central");
    c.wait_nodes_healthy(2);

    // Cancelled while its move copies (the move's start is held for a few seconds): rolled
    // back, the old policy stands, the org never left.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.move.copying=sleep:3000")]);
    c.wait_nodes_healthy(2);
    let (status, op) = c.admin(
        "POST",
        "/orgs/fjord/residency",
        Some(json!({"policy": "eu-central", "move_to": "eu-central", "reason": "to Berlin"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    c.wait_for("the change's move to start", || {
        let op = c.operation(&id);
        (op["children"].as_array().is_some_and(|c| !c.is_empty())).then_some(())
    });
    let (ok, out, err) = c.cli(&["ops", "cancel", &id]);
    assert!(ok, "cancel: {out}\n{err}");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cancelled"),
        "{ended:#}"
    );
    assert_eq!(ended["children"][0]["phase"], "rolled_back", "{ended:#}");
    assert_eq!(
        policy_of(&c, "fjord"),
        ("eu-north".into(), "eu-north".into())
    );

    // Killed once the move is done and the purge of eu-north recorded; the restarted control
    // plane finishes it.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.set-residency.purging=crash")]);
    c.wait_nodes_healthy(2);
    let (ok, out, err) = c.cli(&[
        "orgs",
        "set-residency",
        "fjord",
        "eu-central",
        "--move-to",
        "eu-central",
        "--reason",
        "to Berlin",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("residency change"), "{out}");
    assert!(c.wait_control_exit(), "crashed once purging was recorded");
    c.start_control();
    let (_, ops) = c.admin("GET", "/operations", None);
    let change = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "set-residency" && o["finished_ms"].is_null())
        .cloned()
        .expect("the unfinished change");
    let id = change["id"].as_str().unwrap().to_string();
    assert_eq!(change["phase"], "purging", "{change:#}");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(
        policy_of(&c, "fjord"),
        ("eu-central".into(), "eu-central".into())
    );
    let purged = &ended["detail"]["purged"];
    assert_eq!(purged[0][0], "eu-north", "{ended:#}");

    // Every acknowledged write is at the new home.
    let names = names_in(&c.tenant_file("eu-central", "fjord"));
    for w in &written {
        assert_eq!(
            names.iter().filter(|n| *n == w).count(),
            1,
            "{w} in {names:?}"
        );
    }
    // Nothing of it is left in eu-north: no object, no packed segment, no file.
    assert!(
        s3.objects("hemvist/eu-north/tenants/fjord").is_empty(),
        "{:?}",
        s3.objects("hemvist/eu-north/tenants/fjord")
    );
    let packed = packed_segments(&s3, "hemvist/eu-north/packs");
    assert!(
        !packed.iter().any(|n| n.contains("fjord")),
        "eu-north's packs still name fjord's segments: {packed:?}"
    );
    assert!(
        packed.iter().any(|n| n.starts_with("tenants/granne/")),
        "granne's packs were kept: {packed:?}"
    );
    assert_eq!(c.files_of("eu-north", "fjord"), Vec::<String>::new());
    assert!(!s3.objects("hemvist/eu-central/tenants/fjord").is_empty());
    // The neighbour's backups are whole: its newest point restores every contact.
    let restored = c.dir.path().join("granne-restored.db");
    let (ok, out, err) = c.cli_s3(&[
        "restore",
        "granne",
        "--at",
        "now",
        "--out",
        restored.to_str().unwrap(),
        "--store",
        &format!("s3://{}/hemvist/eu-north", support::s3::BUCKET),
        "--endpoint",
        &s3.endpoint,
    ]);
    assert!(ok, "restore granne: {out}\n{err}");
    let granne = names_in(&restored);
    assert_eq!(granne.len(), 6, "{granne:?}");

    // It goes on at its new home: a write there is shipped to eu-central's packs.
    let fia = sign_in(
        &c.node_url("eu-central"),
        "fjord",
        "fia@fjord.example",
        PASSWORD,
    )
    .unwrap();
    let (status, _, _) = fia.post("/contacts", &[("name", "After Berlin")], None);
    assert_eq!(status, 303);
    c.wait_for("fjord's new segment in eu-central's packs", || {
        packed_segments(&s3, "hemvist/eu-central/packs")
            .iter()
            .any(|n| n.starts_with("tenants/fjord/"))
            .then_some(())
    });

    // The record: audited policy changes (old → both → new), the report compliant.
    let (ok, out, _) = c.cli(&["audit", "log", "--org", "fjord", "--json"]);
    assert!(ok);
    let log: Vec<Value> = serde_json::from_str(&out).unwrap();
    let changes: Vec<&str> = log
        .iter()
        .filter(|e| e["action"] == "org.residency_changed")
        .map(|e| e["detail"]["to"].as_str().unwrap())
        .collect();
    // The two cancelled changes widened and went back; the finished one widened and narrowed.
    assert_eq!(
        changes,
        [
            "eu-central + eu-north",
            "eu-north",
            "eu-central + eu-north",
            "eu-north",
            "eu-central + eu-north",
            "eu-central"
        ],
        "{out}"
    );
    let (ok, out, err) = c.cli_s3(&["audit", "report", "--org", "fjord", "--verify-stores"]);
    assert!(ok, "report: {out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let o = &r["orgs"][0];
    assert_eq!(o["verdict"], "compliant", "{o:#}");
    assert_eq!(o["policy"], "eu-central");
    // The verifier read every pack's index too: nothing of it is in eu-north's store.
    let stores = o["stores"].as_array().unwrap();
    assert!(
        !stores
            .iter()
            .any(|s| s["region"] == "eu-north" && s["objects"].as_u64() > Some(0)),
        "{o:#}"
    );
    assert!(
        stores.iter().any(|s| s["region"] == "eu-central"
            && s["prefix"]
                .as_str()
                .unwrap_or_default()
                .starts_with("packs/")
            && s["objects"].as_u64() > Some(0)),
        "its packed segments in eu-central are found: {o:#}"
    );
    assert_eq!(o["policy_history"].as_array().unwrap().len(), 7, "{o:#}");
    let backups_north = o["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "backups" && i["region"] == "eu-north")
        .expect("eu-north's backups interval");
    assert_eq!(
        backups_north["to_ms"], ended["detail"]["purged_ms"],
        "{backups_north}"
    );
    assert!(
        backups_north["note"]
            .as_str()
            .unwrap_or_default()
            .contains(&id),
        "{backups_north}"
    );
}

/// A residency change past its move no longer depends on the org's node: when the new home
/// dies while the purge waits on a dead node of the forbidden region, the org is failed over
/// (as the change's child) at once, and the change finishes once that region's node is back.
#[test]
fn a_new_home_dying_while_the_purge_waits_is_failed_over_under_the_change() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_store_per_region(&[EU_NORTH, EU_CENTRAL], &s3, 300, "");
    c.add_control_config("failover_grace_ms = 6000");
    c.restart_control();
    c.add_node("eu-central-2", "eu-central", support::cluster::JOIN_TOKEN);
    c.wait_nodes_healthy(3);
    c.create_org_ready(
        "flytt",
        json!({"region": "eu-north", "residency": "eu-north"}),
    );
    c.add_user("flytt", "fred@flytt.example", PASSWORD);
    let fred = sign_in(
        &c.node_url("eu-north"),
        "flytt",
        "fred@flytt.example",
        PASSWORD,
    )
    .unwrap();
    let mut written = Vec::new();
    for i in 0..4 {
        let name = format!("Flytt {i}");
        let (status, _, _) = fred.post("/contacts", &[("name", &name)], None);
        assert_eq!(status, 303);
        written.push(name);
    }
    // eu-north's node dies when told to destroy its copy: the purge waits for it.
    c.kill_node("eu-north");
    c.start_node_with_env("eu-north", &[("HEMVIST_FAILPOINTS", "node.destroy=crash")]);
    c.wait_nodes_healthy(3);
    let (status, op) = c.admin(
        "POST",
        "/orgs/flytt/residency",
        Some(json!({"policy": "eu-central", "move_to": "eu-central"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    assert!(
        c.wait_node_exit("eu-north"),
        "eu-north's node crashed at its Destroy"
    );
    let purging = c.operation(&id);
    assert_eq!(purging["phase"], "purging", "{purging:#}");
    let home = c.org("flytt").expect("org");
    assert_eq!(home.home_region, "eu-central");
    let (dead, alive) = match home.node.as_str() {
        "eu-central-1" => ("eu-central-1", "eu-central-2"),
        _ => ("eu-central-2", "eu-central-1"),
    };

    // The new home dies too: failed over within the region, under the change.
    c.kill_node_id(dead);
    let failover = c.wait_for("the failover under the change", || {
        let (_, ops) = c.admin("GET", "/operations", None);
        ops.as_array()?
            .iter()
            .find(|o| o["kind"] == "failover" && o["phase"] == "done")
            .cloned()
    });
    assert_eq!(failover["parent"], id.as_str(), "{failover:#}");
    assert_eq!(failover["detail"]["to_node"], alive, "{failover:#}");
    assert_eq!(
        c.operation(&id)["phase"],
        "purging",
        "still waiting on eu-north"
    );
    let fred = sign_in(&c.url_of(alive), "flytt", "fred@flytt.example", PASSWORD).unwrap();
    let (status, _, _) = fred.post("/contacts", &[("name", "After Failover")], None);
    assert_eq!(status, 303, "the org serves at {alive}");
    written.push("After Failover".into());

    // eu-north's node is back: the purge and the change finish.
    c.start_node("eu-north");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(
        policy_of(&c, "flytt"),
        ("eu-central".into(), "eu-central".into())
    );
    assert!(s3.objects("hemvist/eu-north/tenants/flytt").is_empty());
    assert_eq!(c.files_of("eu-north", "flytt"), Vec::<String>::new());
    let file = c
        .dir
        .path()
        .join(format!("nodes/{alive}/tenants/fl/flytt.db"));
    let names = names_in(&file);
    for w in &written {
        assert!(names.contains(w), "{w} at {alive}: {names:?}");
    }
}
