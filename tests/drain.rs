//! Draining a live node, with real processes and a real S3-compatible server: `hemvist nodes
//! drain` moves each of its 100 orgs to the region's other node by a live move while one of them
//! is written to; none is lost, every acknowledged write is at the new home, and the drained
//! node takes no new org until it is undrained.

mod support;

use std::time::Duration;

use serde_json::json;
use support::cluster::{Cluster, EU_NORTH, JOIN_TOKEN};
use support::s3::S3;
use support::session::sign_in;
use support::story::{acked, names_in, Writer};

const PASSWORD: &str = "correct horse battery";
const ORGS: usize = 100;

#[test]
fn draining_a_node_moves_its_hundred_orgs_off_it_and_loses_nothing() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, 300);
    for i in 0..ORGS {
        let (status, body) = c.create_org(json!({
            "id": format!("org{i:03}"), "name": format!("Org {i}"), "region": "eu-north"
        }));
        assert_eq!(status, 201, "{body}");
    }
    c.wait_org_ready("org099");
    c.add_user("org000", "ada@org000.example", PASSWORD);
    c.add_node("eu-north-2", "eu-north", JOIN_TOKEN);
    c.wait_nodes_healthy(2);
    let old = c.url_of("eu-north-1");
    let user = sign_in(&old, "org000", "ada@org000.example", PASSWORD).expect("sign in");
    let before = c.write_n(&user, "before", 20, Duration::ZERO);
    assert_eq!(before.acked.len(), 20, "{:?}", before.refused);
    let writing = Writer::start(user, "during");
    // The writer is under way before the drain begins (a drain can move org000 first, in less
    // time than a few writes take).
    assert!(writing.wait_acked(6), "the writer never got going");

    let (ok, out, err) = c.cli(&["nodes", "drain", "eu-north-1", "--wait"]);
    assert!(ok, "drain: {out}{err}");
    assert!(out.contains("eu-north-1 is drained"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let answers = writing.stop();

    for i in 0..ORGS {
        let org = c.org(&format!("org{i:03}")).expect("org");
        assert_eq!(
            org.node, "eu-north-2",
            "org{i:03} moved off the drained node"
        );
    }
    let (_, ops) = c.admin("GET", "/operations", None);
    let moves: Vec<_> = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "move")
        .collect();
    assert_eq!(moves.len(), ORGS, "one live move per org");
    let open: Vec<_> = moves
        .iter()
        .filter(|m| m["phase"] != "done")
        .map(|m| (m["org"].clone(), m["phase"].clone()))
        .collect();
    assert!(open.is_empty(), "moves not done once drained: {open:?}");
    // Every acknowledged write of the org written to all through its move is at its new home.
    let file = c.dir.path().join("nodes/eu-north-2/tenants/or/org000.db");
    let names = names_in(&file);
    let mut want: Vec<String> = before.names().iter().map(|n| n.to_string()).collect();
    want.extend(acked(&answers));
    want.sort();
    let missing: Vec<&String> = want.iter().filter(|n| !names.contains(n)).collect();
    assert!(missing.is_empty(), "lost acknowledged writes: {missing:?}");
    assert!(acked(&answers).len() > 5, "writes went on around the drain");

    // Drained stays drained: a new org goes to the other node, until undrain.
    let fresh = c.create_org_ready("fresh", json!({"region": "eu-north"}));
    assert_eq!(fresh["node"], "eu-north-2");
    let (_, nodes) = c.admin("GET", "/nodes", None);
    let drained = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "eu-north-1")
        .unwrap()
        .clone();
    assert!(drained["draining_since_ms"].is_i64(), "{drained}");
    assert_eq!(drained["tenants"], 0);
    let (ok, out, err) = c.cli(&["nodes", "undrain", "eu-north-1"]);
    assert!(ok, "undrain: {out}{err}");
    let again = c.create_org_ready("again", json!({"region": "eu-north"}));
    assert_eq!(
        again["node"], "eu-north-1",
        "the emptier node takes orgs again"
    );

    // Audited: who drained it.
    let (ok, out, _) = c.cli(&["nodes", "drain", "nowhere-9"]);
    assert!(!ok, "an unknown node is refused: {out}");
}
