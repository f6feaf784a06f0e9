//! A command whose answer the control plane lost (it stopped between sending it and recording
//! the node's ack) is closed by what the node reports, not left open forever.

mod support;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH};

fn host_command(org: &Value) -> Value {
    org["commands"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["kind"] == "host").cloned())
        .unwrap_or_else(|| panic!("a host command: {org:#}"))
}

#[test]
fn a_host_command_whose_ack_was_lost_in_a_control_plane_crash_is_closed() {
    let mut c = Cluster::start(&[EU_NORTH]);
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.ack=crash")]);
    c.wait_nodes_healthy(1);
    let (status, created) =
        c.create_org(json!({"id": "acme", "name": "Acme", "region": "eu-north"}));
    assert_eq!(status, 201, "{created}");
    assert!(
        c.wait_control_exit(),
        "the control plane stopped as the node's ack arrived"
    );

    c.start_control();
    c.wait_nodes_healthy(1);
    let org = c.wait_org_ready("acme");
    let closed = c.wait_for("the host command closed", || {
        let (_, org) = c.admin("GET", "/orgs/acme", None);
        let host = host_command(&org);
        (host["state"] == "done").then_some(host)
    });
    assert_eq!(closed["generation"], org["generation"], "{closed}");
    let open = c.wait_for("no command open", || {
        let n = c.metric(&c.control_url(), "hemvist_commands_open");
        (n == 0).then_some(n)
    });
    assert_eq!(open, 0);
}
