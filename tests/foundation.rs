//! End-to-end scenarios of the foundation: real `hemvist` processes (a control plane and nodes in
//! two regions) on loopback, a real MaxMind-format GeoIP file, real SQLite files, real gRPC.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{raw_status, Cluster, ADMIN_TOKEN, EU_NORTH, US_EAST};
use support::session::sign_in;

/// IPs the CC0 geo-whois-asn-country database places in Sweden and in the United States.
const SWEDISH_IP: &str = "81.230.1.1";
const US_IP: &str = "8.8.8.8";

#[test]
fn orgs_placed_by_region_and_ip_and_users_sent_to_their_home_region() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);

    let by_region = c.create_org_ready("acme-us", json!({"region": "us-east"}));
    assert_eq!(by_region["home_region"], "us-east");
    assert_eq!(by_region["node"], "us-east-1");

    let (status, se) = c.create_org(json!({"id": "fika", "name": "Fika AB", "ip": SWEDISH_IP}));
    assert_eq!(status, 201, "{se}");
    assert_eq!(se["org"]["home_region"], "eu-north", "{se}");
    assert!(
        se["org"]["placement_reason"]
            .as_str()
            .unwrap()
            .contains("SE"),
        "{se}"
    );
    let (status, us) = c.create_org(json!({"id": "diner", "name": "Diner Inc", "ip": US_IP}));
    assert_eq!(status, 201, "{us}");
    assert_eq!(us["org"]["home_region"], "us-east", "{us}");
    c.wait_org_ready("fika");
    c.wait_org_ready("diner");

    // Generations are issued once each, increasing.
    let gens: Vec<u64> = ["acme-us", "fika", "diner"]
        .iter()
        .map(|id| {
            c.admin("GET", &format!("/orgs/{id}"), None).1["generation"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(gens.windows(2).all(|w| w[0] < w[1]), "{gens:?}");

    // A Swedish org's user who lands in Virginia is sent to Stockholm, same path and query.
    let eu = c.node_url("eu-north");
    let us = c.node_url("us-east");
    let (status, location, _) = c.get(&format!("{us}/o/fika/?q=%C3%85sa&page=2"));
    assert_eq!(status, 307);
    assert_eq!(
        location.as_deref(),
        Some(format!("{eu}/o/fika/?q=%C3%85sa&page=2").as_str())
    );
    let (status, location, _) = c.get(&format!("{eu}/o/acme-us/"));
    assert_eq!((status, location), (307, Some(format!("{us}/o/acme-us/"))));

    // At home, the org is served (its users are asked to sign in); `/o/{org}` leads there.
    let (status, location, _) = c.get(&format!("{eu}/o/fika/"));
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/o/fika/signin?next=/o/fika/"))
    );
    let (status, _, page) = c.get(&format!("{eu}/o/fika/signin"));
    assert_eq!(status, 200);
    assert!(page.contains("Fika AB"), "{page}");
    let (status, location, _) = c.get(&format!("{eu}/o/fika"));
    assert_eq!((status, location.as_deref()), (308, Some("/o/fika/")));

    // An org that exists nowhere gets a clear 404 page.
    let (status, _, page) = c.get(&format!("{eu}/o/nobody-here/"));
    assert_eq!(status, 404);
    assert!(page.contains("nobody-here"));

    // The operator's verbs, as a person and as a script would use them.
    let (ok, out, err) = c.cli(&["orgs", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ORG") && out.contains("fika") && out.contains("eu-north"),
        "{out}"
    );
    let (ok, out, err) = c.cli(&["orgs", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let (ok, out, _) = c.cli(&["orgs", "show", "diner"]);
    assert!(
        ok && out.contains("us-east-1") && out.contains("org.placed"),
        "{out}"
    );
    let (ok, out, _) = c.cli(&["regions"]);
    assert!(
        ok && out.contains("eu-north") && out.contains("1/1"),
        "{out}"
    );
    let (ok, out, _) = c.cli(&["nodes", "--json"]);
    let nodes: Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        ok && nodes
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["healthy"] == true),
        "{out}"
    );
    let (ok, out, _) = c.cli(&[
        "orgs", "create", "cli-made", "--name", "CLI AB", "--ip", SWEDISH_IP, "--wait", "--json",
    ]);
    let made: Value = serde_json::from_str(&out).expect("JSON");
    assert!(
        ok && made["org"]["home_region"] == "eu-north" && made["org"]["ready"] == true,
        "{out}"
    );
    let (ok, _, err) = c.cli(&["orgs", "show", "no-such-org"]);
    assert!(!ok && err.contains("not_found"), "{err}");

    // Every process answers /healthz and /metrics.
    for base in [c.control_url(), eu.clone(), us.clone()] {
        assert_eq!(c.get(&format!("{base}/healthz")).0, 200);
    }
    assert!(c.metric(&us, "hemvist_http_redirected_total") >= 1);
    assert_eq!(c.metric(&c.control_url(), "hemvist_orgs"), 4);
}

#[test]
fn impossible_residency_is_refused_and_creating_twice_is_idempotent() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);

    let (status, err) = c.create_org(json!({
        "id": "strict", "name": "Strict GmbH", "region": "us-east", "residency": "EU"
    }));
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["kind"], "residency");
    let (status, err) = c.create_org(json!({"id": "swiss", "name": "Swiss AG", "residency": "CH"}));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("CH"));
    let (status, _) = c.create_org(json!({
        "id": "narrow", "name": "Narrow", "residency": "us-east", "region": "eu-north"
    }));
    assert_eq!(status, 422);
    for id in ["strict", "swiss", "narrow"] {
        assert_eq!(
            c.admin("GET", &format!("/orgs/{id}"), None).0,
            404,
            "{id} was created"
        );
    }
    let (ok, _, err) = c.cli(&[
        "orgs",
        "create",
        "strict",
        "--name",
        "S",
        "--region",
        "us-east",
        "--residency",
        "EU",
    ]);
    assert!(!ok && err.contains("residency"), "{err}");

    // A US IP with an EU-only policy lands in the EU, and says why.
    let (status, org) =
        c.create_org(json!({"id": "euro", "name": "Euro", "ip": US_IP, "residency": "EU"}));
    assert_eq!(status, 201);
    assert_eq!(org["org"]["home_region"], "eu-north");
    assert!(
        org["org"]["placement_reason"]
            .as_str()
            .unwrap()
            .contains("excludes"),
        "{org}"
    );
    assert_eq!(org["org"]["allowed_regions"], json!(["eu-north"]));

    // The same request again changes nothing; a different org under the same id is a conflict.
    let (status, again) =
        c.create_org(json!({"id": "euro", "name": "Euro", "ip": US_IP, "residency": "EU"}));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["created"], false);
    assert_eq!(again["org"]["generation"], org["org"]["generation"]);
    let (status, err) = c.create_org(json!({"id": "euro", "name": "Another Euro"}));
    assert_eq!(status, 409, "{err}");
    let (_, all) = c.admin("GET", "/orgs", None);
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[test]
fn orgs_are_listed_a_page_at_a_time_by_id_in_the_api_and_the_cli() {
    let c = Cluster::start(&[EU_NORTH]);
    let ids = ["alfa", "bravo", "charlie", "delta", "echo"];
    // Created out of order: pages go by id, not by age.
    for id in ["delta", "alfa", "echo", "charlie", "bravo"] {
        let (status, body) = c.create_org(json!({"id": id, "name": id}));
        assert_eq!(status, 201, "{body}");
    }
    let page = |query: &str| -> Vec<String> {
        let (status, body) = c.admin("GET", &format!("/orgs{query}"), None);
        assert_eq!(status, 200, "{query}: {body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(page(""), ids);
    assert_eq!(page("?limit=2"), ["alfa", "bravo"]);
    assert_eq!(page("?limit=2&after=bravo"), ["charlie", "delta"]);
    assert_eq!(page("?limit=2&after=delta"), ["echo"]);
    assert!(page("?after=echo").is_empty());
    // A cursor need not be an org that exists: the page starts after it.
    assert_eq!(page("?limit=1&after=bz"), ["charlie"]);
    for bad in [
        "?limit=0",
        "?limit=10001",
        "?limit=x",
        "?after=Not%20An%20Id",
        "?page=2",
    ] {
        let (status, body) = c.admin("GET", &format!("/orgs{bad}"), None);
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["kind"], "invalid_argument", "{bad}: {body}");
    }

    let (ok, out, err) = c.cli(&["orgs", "list", "--limit", "2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("alfa") && out.contains("bravo") && !out.contains("charlie"),
        "{out}"
    );
    assert!(err.contains("--after bravo"), "it says how to go on: {err}");
    let (ok, out, err) = c.cli(&["orgs", "list", "--limit", "2", "--json"]);
    assert!(ok && err.contains("--after bravo"), "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (ok, out, err) = c.cli(&["orgs", "list", "--limit", "2", "--after", "delta"]);
    assert!(
        ok && out.contains("echo") && !err.contains("--after"),
        "{out}{err}"
    );
    let (ok, out, err) = c.cli(&["orgs", "list", "--limit", "2", "--all", "--json"]);
    assert!(ok, "{err}");
    let all: Vec<String> = serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all, ids);
    let (ok, _, err) = c.cli(&["orgs", "list", "--limit", "0"]);
    assert!(!ok && err.contains("1 to 10000"), "{err}");
}

#[test]
fn hostile_ids_and_bodies_get_clear_4xx_never_5xx() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    c.create_org_ready("real", json!({"region": "eu-north"}));
    let node = c
        .node_url("eu-north")
        .trim_start_matches("http://")
        .to_string();
    let long = "a".repeat(1000);
    let hostile: Vec<Vec<u8>> = vec![
        b"/o/..%2F..%2Fetc%2Fpasswd/".to_vec(),
        b"/o/../".to_vec(),
        b"/o/%2e%2e/".to_vec(),
        b"/o/a%00b/".to_vec(),
        b"/o/%00/".to_vec(),
        format!("/o/{long}/").into_bytes(),
        b"/o/'%20OR%201=1--/".to_vec(),
        b"/o/%22%3E%3Cscript%3E/".to_vec(),
        b"/o/real%E2%80%AE/".to_vec(),
        b"/o/re%CC%81al/".to_vec(),
        b"/o/%EF%BD%92eal/".to_vec(),
        b"/o/%ff%fe/".to_vec(),
        b"/o/REAL/".to_vec(),
        b"/o/-real/".to_vec(),
        b"/o/real%2Fx/".to_vec(),
        b"/o/%C3%A5sa/search?q=x".to_vec(),
        b"/o/trail-/".to_vec(),
        b"/o/a--b--c/".to_vec(),
        b"/o/a---b/".to_vec(),
    ];
    for path in &hostile {
        let status = raw_status(&node, "GET", path, "", b"");
        assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(path));
    }
    // The real org is still served, and nothing hostile reached the disk.
    assert_eq!(raw_status(&node, "GET", b"/o/real/signin", "", b""), 200);

    let api = c.api.to_string();
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    for path in [
        b"/api/v1/orgs/..%2Fx".to_vec(),
        b"/api/v1/orgs/a%00".to_vec(),
        format!("/api/v1/orgs/{long}").into_bytes(),
        b"/api/v1/orgs/%ff".to_vec(),
    ] {
        let status = raw_status(&api, "GET", &path, &auth, b"");
        assert_eq!(status, 400, "{:?}", String::from_utf8_lossy(&path));
    }
    let json_h = format!("{auth}Content-Type: application/json\r\n");
    let bodies: Vec<(Vec<u8>, u16)> = vec![
        (br#"{"id":"../x","name":"x"}"#.to_vec(), 400),
        (br#"{"id":"ok-id","name":"bad\u0000name"}"#.to_vec(), 400),
        (
            br#"{"id":"ok-id","name":"evil\u202egnp.exe"}"#.to_vec(),
            400,
        ),
        (br#"{"id":"ok-id","name":""}"#.to_vec(), 400),
        (
            br#"{"id":"ok-id","name":"x","ip":"999.1.1.1"}"#.to_vec(),
            400,
        ),
        (
            br#"{"id":"ok-id","name":"x","region":"mars"}"#.to_vec(),
            400,
        ),
        (
            br#"{"id":"ok-id","name":"x","region":"eu-north","ip":"8.8.8.8"}"#.to_vec(),
            400,
        ),
        (br#"{"id":"ok-id","name":"x","extra":1}"#.to_vec(), 400),
        (br#"{"id":"trail-","name":"x"}"#.to_vec(), 400),
        (br#"{"id":"a--b","name":"x"}"#.to_vec(), 400),
        (
            br#"{"id":"ok-id","name":"x","residency":","}"#.to_vec(),
            400,
        ),
        (
            br#"{"id":"ok-id","name":"x","residency":" "}"#.to_vec(),
            400,
        ),
        (b"not json".to_vec(), 400),
        (vec![0xff, 0xfe, 0x00], 400),
        (
            format!(r#"{{"id":"ok-id","name":"{}"}}"#, "x".repeat(100_000)).into_bytes(),
            413,
        ),
    ];
    for (body, want) in &bodies {
        let status = raw_status(&api, "POST", b"/api/v1/orgs", &json_h, body);
        assert_eq!(
            status,
            *want,
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    // Every route answers an oversized body the same way.
    let big = format!(
        r#"{{"email":"a@b.example","password":"{}"}}"#,
        "x".repeat(100_000)
    );
    let status = raw_status(
        &api,
        "POST",
        b"/api/v1/orgs/real/users",
        &json_h,
        big.as_bytes(),
    );
    assert_eq!(status, 413, "oversized user body");
    let (_, all) = c.admin("GET", "/orgs", None);
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "only the real org exists: {all}"
    );
    assert_eq!(
        c.metric(&c.node_url("eu-north"), "hemvist_http_bad_requests_total"),
        hostile.len() as u64
    );
}

#[test]
fn restarts_of_a_node_and_of_the_control_plane_lose_nothing() {
    let mut c = Cluster::start(&[EU_NORTH, US_EAST]);
    let before = c.create_org_ready("stay", json!({"region": "eu-north", "residency": "EU"}));
    c.create_org_ready("yonder", json!({"region": "us-east"}));
    let eu = c.node_url("eu-north");
    c.add_user("stay", "ada@stay.example", "correct horse battery");
    let u = sign_in(&eu, "stay", "ada@stay.example", "correct horse battery").expect("sign in");
    let writes = c.write_n(&u, "Kept", 12, Duration::ZERO);
    assert_eq!(writes.acked.len(), 12, "refused: {:?}", writes.refused);

    // kill -9 the node: it comes back with its tenants and every acknowledged write, and serves
    // them.
    c.restart_node("eu-north");
    let (status, _, page) = c.get(&format!("{eu}/o/stay/signin"));
    assert_eq!(status, 200, "{page}");
    c.wait_nodes_healthy(2);
    let u = sign_in(&eu, "stay", "ada@stay.example", "correct horse battery").expect("sign in");
    let (status, found) = u.json("/?q=kept");
    assert_eq!(status, 200, "{found}");
    let mut names: Vec<&str> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, writes.names());

    // kill -9 the control plane: orgs, placements, generations and nodes are all still there.
    c.restart_control();
    c.wait_nodes_healthy(2);
    let after = c.wait_org_ready("stay");
    for key in [
        "home_region",
        "node",
        "generation",
        "residency",
        "placement_reason",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    let shown = c.wait_for_phase("stay", "ready");
    assert_eq!(
        (shown.node.as_str(), shown.home_region.as_str()),
        ("eu-north-1", "eu-north")
    );
    assert!(
        shown
            .commands
            .iter()
            .any(|cmd| cmd.kind == "add_user" && cmd.state == "done"),
        "{:?}",
        shown.commands
    );
    let (_, nodes) = c.admin("GET", "/nodes", None);
    assert_eq!(nodes.as_array().unwrap().len(), 2);
    // A generation is never issued twice, even across a restart.
    let newer = c.create_org_ready("later", json!({"region": "eu-north"}));
    assert!(
        newer["generation"].as_u64()
            > c.admin("GET", "/orgs/yonder", None).1["generation"].as_u64()
    );
    let (status, _, _) = c.get(&format!("{eu}/o/later/signin"));
    assert_eq!(status, 200);
    let (_, audit) = c.admin("GET", "/audit/verify", None);
    assert_eq!(audit["ok"], true, "{audit}");
}

#[test]
fn a_node_reconnects_and_its_routing_cache_follows_placement_changes() {
    let mut c = Cluster::start(&[EU_NORTH, US_EAST]);
    c.create_org_ready("first", json!({"region": "us-east"}));
    let eu = c.node_url("eu-north");
    let us = c.node_url("us-east");

    // While the Stockholm node is down, an org is placed in Virginia.
    c.kill_node("eu-north");
    c.create_org_ready("while-down", json!({"region": "us-east"}));
    c.start_node("eu-north");
    c.wait_for("eu-north to learn where while-down lives", || {
        let (status, location, _) = c.get(&format!("{eu}/o/while-down/"));
        (status == 307 && location == Some(format!("{us}/o/while-down/"))).then_some(())
    });

    // With the control plane gone, nodes still route from their cache: no round trip needed.
    c.kill_control();
    let (status, location, _) = c.get(&format!("{eu}/o/first/"));
    assert_eq!((status, location), (307, Some(format!("{us}/o/first/"))));
    c.wait_for("the link to drop", || {
        (c.metric(&eu, "hemvist_control_link_up") == 0).then_some(())
    });

    // The control plane comes back; the node reconnects by itself and follows new placements.
    c.start_control();
    c.wait_nodes_healthy(2);
    assert!(c.metric(&eu, "hemvist_control_link_connects_total") >= 2);
    c.create_org_ready("after", json!({"region": "us-east"}));
    c.wait_for("eu-north to learn where after lives", || {
        let (status, location, _) = c.get(&format!("{eu}/o/after/"));
        (status == 307 && location == Some(format!("{us}/o/after/"))).then_some(())
    });
    // The Virginia node restarts from its own state and cache, before the control plane speaks.
    c.restart_node("us-east");
    let (status, _, _) = c.get(&format!("{us}/o/after/signin"));
    assert_eq!(status, 200);

    // It comes back at a new address: Stockholm's cache follows, without a restart of its own.
    c.kill_node("us-east");
    let moved = c.start_node_on_new_port("us-east");
    assert_ne!(moved, us);
    c.wait_for("eu-north to learn us-east's new address", || {
        let (status, location, _) = c.get(&format!("{eu}/o/first/"));
        (status == 307 && location == Some(format!("{moved}/o/first/"))).then_some(())
    });
}

#[test]
fn wrong_join_token_is_refused_and_admin_routes_need_the_token() {
    let mut c = Cluster::start(&[EU_NORTH, US_EAST]);
    c.add_node("intruder-1", "eu-north", "not-the-join-token-at-all");
    let intruder = c.nodes["intruder-1"].url.clone();
    c.wait_for("the intruder to be refused", || {
        (c.metric(&intruder, "hemvist_control_link_refused_total") >= 1).then_some(())
    });
    assert!(c.metric(&c.control_url(), "hemvist_node_joins_refused_total") >= 1);
    assert_eq!(c.metric(&intruder, "hemvist_control_link_up"), 0);
    let (_, nodes) = c.admin("GET", "/nodes", None);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["eu-north-1", "us-east-1"]);

    for path in [
        "/orgs",
        "/nodes",
        "/regions",
        "/orgs/anything",
        "/audit/verify",
    ] {
        assert_eq!(c.admin_with_token("GET", path, None, None).0, 401, "{path}");
        assert_eq!(
            c.admin_with_token("GET", path, None, Some("wrong")).0,
            401,
            "{path}"
        );
    }
    let (status, _) =
        c.admin_with_token("POST", "/orgs", Some(json!({"id": "x", "name": "x"})), None);
    assert_eq!(status, 401);
    assert_eq!(c.admin("GET", "/orgs", None).1, json!([]));
    let (ok, _, err) = c.cli(&["orgs", "list", "--token", "wrong"]);
    assert!(!ok && err.contains("401"), "{err}");
}

#[test]
fn maxmind_geolite2_layout_places_by_country() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("GeoLite2-Country.mmdb");
    std::fs::write(
        &db,
        support::mmdb::country_db(&[
            (Ipv4Addr::new(192, 0, 2, 0), 24, "SE"),
            (Ipv4Addr::new(198, 51, 100, 0), 24, "US"),
            (Ipv4Addr::new(203, 0, 113, 0), 24, "JP"),
        ]),
    )
    .unwrap();
    let c = Cluster::start_with_geoip(&[EU_NORTH, US_EAST], Some(db));
    let place = |id: &str, ip: &str| {
        let (status, org) = c.create_org(json!({"id": id, "name": id, "ip": ip}));
        assert_eq!(status, 201, "{org}");
        (
            org["org"]["home_region"].as_str().unwrap().to_string(),
            org["org"]["placement_reason"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(place("se-org", "192.0.2.77").0, "eu-north");
    assert_eq!(place("us-org", "198.51.100.9").0, "us-east");
    let (region, reason) = place("jp-org", "203.0.113.5");
    assert_eq!(region, "eu-north");
    assert!(
        reason.contains("JP") && reason.contains("default region"),
        "{reason}"
    );
    let (region, reason) = place("unknown-org", "10.1.2.3");
    assert_eq!(region, "eu-north");
    assert!(reason.contains("no country"), "{reason}");
}

#[test]
fn without_geoip_ip_placement_says_it_used_the_default_region() {
    let c = Cluster::start_with_geoip(&[US_EAST, EU_NORTH], None);
    let (status, org) = c.create_org(json!({"id": "nogeo", "name": "No Geo", "ip": SWEDISH_IP}));
    assert_eq!(status, 201, "{org}");
    assert_eq!(org["org"]["home_region"], "us-east");
    let reason = org["org"]["placement_reason"].as_str().unwrap();
    assert!(
        reason.contains("no GeoIP database") && reason.contains("default region"),
        "{reason}"
    );
}

#[test]
fn commands_are_redriven_after_failures_and_after_a_node_dies_mid_command() {
    let mut c = Cluster::start(&[EU_NORTH, US_EAST]);

    // The node fails the first two `host` commands in a way retrying can fix.
    c.kill_node("eu-north");
    c.start_node_with_env("eu-north", &[("HEMVIST_FAILPOINTS", "node.host=fail:2")]);
    c.wait_nodes_healthy(2);
    c.create_org_ready("flaky", json!({"region": "eu-north"}));
    let (_, shown) = c.admin("GET", "/orgs/flaky", None);
    let cmd = &shown["commands"][0];
    assert_eq!(cmd["state"], "done", "{shown}");
    assert!(cmd["attempts"].as_u64().unwrap() >= 3, "{shown}");

    // The node dies after creating the tenant's file but before recording or acknowledging it.
    c.kill_node("eu-north");
    c.start_node_with_env(
        "eu-north",
        &[("HEMVIST_FAILPOINTS", "node.host.after_create=crash")],
    );
    c.wait_nodes_healthy(2);
    let (status, _) = c.create_org(json!({"id": "crashy", "name": "Crashy"}));
    assert_eq!(status, 201);
    assert!(
        c.wait_node_exit("eu-north"),
        "the failpoint should have crashed the node"
    );
    let (_, shown) = c.admin("GET", "/orgs/crashy", None);
    assert_eq!(shown["ready"], false);

    // Back up, it reports what it holds; the control plane sends the command again, same id.
    c.start_node("eu-north");
    let ready = c.wait_org_ready("crashy");
    assert_eq!(ready["commands"].as_array().unwrap().len(), 1, "{ready}");
    let (status, _, _) = c.get(&format!("{}/o/crashy/signin", c.node_url("eu-north")));
    assert_eq!(status, 200);
    let (status, _, _) = c.get(&format!("{}/o/flaky/signin", c.node_url("eu-north")));
    assert_eq!(status, 200);
}

#[test]
fn tenants_open_lazily_stay_bounded_and_idle_ones_hold_no_files() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    let eu = c.node_url("eu-north");
    for i in 0..6 {
        c.create_org_ready(&format!("t{i}"), json!({"region": "eu-north"}));
    }
    assert_eq!(c.metric(&eu, "hemvist_tenants_hosted"), 6);
    // The cluster's nodes keep at most 4 tenants open; visiting all 6 evicts the oldest.
    for i in 0..6 {
        assert_eq!(c.touch_tenant("eu-north", &format!("t{i}")), 401);
    }
    assert!(c.metric(&eu, "hemvist_tenants_open") <= 4);
    assert!(c.metric(&eu, "hemvist_tenant_evictions_total") >= 2);
    // Idle for longer than idle_close_ms (1 s here): every file is closed.
    c.wait_for("idle tenants to close", || {
        (c.metric(&eu, "hemvist_tenants_open") == 0).then_some(())
    });
    assert_eq!(c.touch_tenant("eu-north", "t0"), 401);
    assert_eq!(c.metric(&eu, "hemvist_tenants_open"), 1);
}

/// Starts `hemvist dev` on ports the system picks, waits for its dev.json, returns it.
#[test]
fn hemvist_dev_runs_a_three_region_demo_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = support::http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: &str| {
        let r = http.get(url).send().unwrap();
        let loc = r
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_string());
        (r.status().as_u16(), loc, r.text().unwrap())
    };
    let check = |dev: &Value| {
        let nodes = dev["nodes"].as_array().unwrap();
        let regions: Vec<&str> = nodes
            .iter()
            .map(|n| n["region"].as_str().unwrap())
            .collect();
        assert_eq!(regions, ["eu-north", "eu-central", "us-east"]);
        let orgs = dev["orgs"].as_array().unwrap();
        assert_eq!(orgs.len(), 3);
        for o in orgs {
            let url = o["url"].as_str().unwrap();
            let base = url.split("/o/").next().unwrap();
            let login = &o["login"];
            let user = support::session::sign_in(
                base,
                o["id"].as_str().unwrap(),
                login["email"].as_str().unwrap(),
                login["password"].as_str().unwrap(),
            )
            .expect("the demo login works");
            let (status, _, page) = user.get("/");
            assert_eq!(status, 200, "{o}");
            assert!(page.contains(o["name"].as_str().unwrap()), "{page}");
            let (_, found) = user.json("/");
            assert_eq!(
                found["total"], o["contacts"],
                "every contact, seeded once: {o}"
            );
        }
        // A Stockholm org asked for in Frankfurt: sent to the Stockholm node as it is now.
        let (status, location, _) = get(&format!(
            "{}/o/nordlys/?q=x",
            nodes[1]["url"].as_str().unwrap()
        ));
        assert_eq!(status, 307);
        assert_eq!(
            location,
            Some(format!(
                "{}/o/nordlys/?q=x",
                nodes[0]["url"].as_str().unwrap()
            ))
        );
    };

    let (child, dev) = support::dev::start_dev(dir.path(), &data, &[]);
    check(&dev);
    let out = std::process::Command::new(support::cluster::BIN)
        .args(["orgs", "list", "--json"])
        .env("HEMVIST_DATA", &data)
        .env_remove("HEMVIST_CONTROL")
        .env_remove("HEMVIST_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the CLI finds the demo through dev.json"
    );
    let before: Value = serde_json::from_slice(&out.stdout).unwrap();
    support::dev::stop_dev(child);
    let printed = std::fs::read_to_string(dir.path().join("dev.out")).unwrap();
    assert!(
        printed.contains("hemvist dev is running") && printed.contains("nordlys"),
        "{printed}"
    );

    // Again, on new ports, with the same data: nothing re-seeded, nothing re-placed.
    let (child, dev) = support::dev::start_dev(dir.path(), &data, &[]);
    check(&dev);
    let out = std::process::Command::new(support::cluster::BIN)
        .args(["orgs", "list", "--json"])
        .env("HEMVIST_DATA", &data)
        .output()
        .unwrap();
    let after: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (a, b) in before
        .as_array()
        .unwrap()
        .iter()
        .zip(after.as_array().unwrap())
    {
        assert_eq!(
            (&a["id"], &a["generation"], &a["node"]),
            (&b["id"], &b["generation"], &b["node"])
        );
    }
    support::dev::stop_dev(child);
}
