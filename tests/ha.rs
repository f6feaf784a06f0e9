//! Several control replicas on one PostgreSQL, one leader, with real processes, a real S3
//! server and a real PostgreSQL (the test command's, or one this test starts): a leader killed
//! mid-move and mid-rollout is replaced within its lease, and the next leader finishes both
//! with no generation issued twice and no tenant migrated twice; followers forward the admin
//! API; nodes find the new leader; a leader stopped past its lease wakes up unable to change
//! anything, and stops.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{Cluster, Replica, EU_CENTRAL, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;
use support::story::{acked, assert_old_home_answers, names_in, Writer};

const PASSWORD: &str = "correct horse battery";
const EMAIL: &str = "ada@acme.example";
const INTERVAL_MS: u64 = 300;
const LEASE_TTL_MS: u64 = 2_000;
const FAILPOINTS: &str = "control.move.fencing=crash,control.rollout.baking=crash";

fn healthz(api: std::net::SocketAddr) -> Option<String> {
    support::http()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .get(format!("http://{api}/healthz"))
        .send()
        .ok()
        .filter(|r| r.status() == 200)
        .and_then(|r| r.text().ok())
}

/// Which of these admin addresses answers as the leader (`ok`, not `ok (follower; ...)`).
fn leader_among(c: &Cluster, apis: &[std::net::SocketAddr]) -> std::net::SocketAddr {
    c.wait_for("a leading control replica", || {
        apis.iter()
            .copied()
            .find(|a| healthz(*a).is_some_and(|h| h.trim() == "ok"))
    })
}

/// r1's admin address (the cluster's own control plane) and the others'.
fn all_apis(r1: std::net::SocketAddr, others: &[Replica]) -> Vec<std::net::SocketAddr> {
    let mut v = vec![r1];
    v.extend(others.iter().map(|r| r.api));
    v
}

/// An operation's record, through whichever replica `c` talks to; `None` while no replica
/// leads (a follower then answers 503).
fn operation(c: &Cluster, id: &str) -> Option<Value> {
    let (status, op) = c.admin("GET", &format!("/operations/{id}"), None);
    (status == 200).then_some(op)
}

fn wait_end(c: &Cluster, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(op) = operation(c, id) {
            if !op["finished_ms"].is_null() {
                return op;
            }
        }
        assert!(Instant::now() < deadline, "operation {id} did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn migrations_dir(dir: &Path) -> PathBuf {
    let out = dir.join("migrations");
    std::fs::create_dir_all(&out).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for e in std::fs::read_dir(repo).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        out.join("0006_contact_notes.sql"),
        "ALTER TABLE contacts ADD COLUMN note TEXT;\n\
         -- check: SELECT count(*) >= 0 FROM contacts WHERE note IS NULL\n",
    )
    .unwrap();
    out
}

/// How many times a tenant file records migration `version` as applied.
fn times_applied(file: &Path, version: u32) -> i64 {
    let db = rusqlite::Connection::open(file).unwrap();
    db.query_row(
        "SELECT count(*) FROM schema_migrations WHERE version = ?1",
        [version],
        |r| r.get(0),
    )
    .unwrap_or(-1)
}

#[test]
fn a_killed_leader_is_replaced_within_its_lease_and_the_next_finishes_its_move_and_rollout() {
    let s3 = S3::start();
    let (mut c, mut others) =
        Cluster::start_replicated(&[EU_NORTH, EU_CENTRAL], &s3, INTERVAL_MS, 3, LEASE_TTL_MS);
    c.wait_nodes_healthy(2);
    let fail = [("HEMVIST_FAILPOINTS", FAILPOINTS)];
    for r in &mut others {
        c.start_replica(r, &fail);
    }
    // Followers answer the admin API by forwarding it to the leader (r1, started first).
    let r1 = c.api;
    assert_eq!(leader_among(&c, &all_apis(r1, &others)), r1);
    let follower = healthz(others[0].api).unwrap();
    assert!(follower.contains("follower"), "{follower}");
    c.api = others[0].api;
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("acme", EMAIL, PASSWORD);
    let orgs: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for (i, o) in orgs.iter().enumerate() {
        let region = if i % 2 == 0 { "eu-north" } else { "eu-central" };
        c.create_org_ready(o, json!({"region": region}));
    }

    // r1 is killed: another replica leads within its lease, and the nodes follow it.
    let killed = Instant::now();
    c.kill_control();
    let apis: Vec<_> = others.iter().map(|r| r.api).collect();
    let leader = leader_among(&c, &apis);
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_millis(LEASE_TTL_MS * 4),
        "takeover took {takeover:?}"
    );
    c.wait_nodes_healthy(2);
    // r1 comes back as a follower (with the failpoints too).
    c.start_control_with_env(&fail);

    // A move: the leader dies as it records the fence; the next leader finishes it.
    let front = *apis.iter().find(|a| **a != leader).unwrap();
    c.api = front;
    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let writing = Writer::start(user, "ha");
    std::thread::sleep(Duration::from_millis(300));
    let (status, op) = c.admin(
        "POST",
        "/orgs/acme/move",
        Some(json!({"to": "eu-central", "reason": "test"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().unwrap().to_string();
    let crashed = others
        .iter_mut()
        .find(|r| r.api == leader)
        .map(|r| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while r.exited().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "the leader did not crash at the fence"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            r.name.clone()
        })
        .unwrap();
    let ended = wait_end(&c, &id);
    std::thread::sleep(Duration::from_millis(300));
    let answers = writing.stop();
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(c.org("acme").unwrap().home_region, "eu-central");
    assert_old_home_answers(&answers, &c.node_url("eu-central"));
    let mut acked = acked(&answers);
    acked.sort();
    assert_eq!(
        names_in(&c.tenant_file("eu-central", "acme")),
        acked,
        "every acknowledged write, once"
    );
    let second = leader_among(&c, &all_apis(r1, &others));
    assert_ne!(second, leader, "{crashed} crashed and does not lead");

    // A rollout: the leader dies entering its bake; the next finishes it.
    c.api = *all_apis(r1, &others)
        .iter()
        .find(|a| **a != second && healthz(**a).is_some())
        .unwrap();
    let dir = migrations_dir(c.dir.path());
    let (ok, out, err) = c.cli(&[
        "migrate",
        "apply",
        "--dir",
        dir.to_str().unwrap(),
        "--json",
        "--canary",
        "2",
        "--bake",
        "1s",
    ]);
    assert!(ok, "migrate apply: {out}{err}");
    let rollout: Value = serde_json::from_str(out.trim()).unwrap();
    let rid = rollout["id"].as_str().unwrap().to_string();
    c.wait_for("the second leader crashing at the bake", || {
        healthz(second).is_none().then_some(())
    });
    let ended = wait_end(&c, &rid);
    assert_eq!(ended["phase"], "done", "{ended:#}");
    for (i, o) in orgs.iter().enumerate() {
        let region = if i % 2 == 0 { "eu-north" } else { "eu-central" };
        assert_eq!(times_applied(&c.tenant_file(region, o), 6), 1, "{o}");
    }
    assert_eq!(times_applied(&c.tenant_file("eu-central", "acme"), 6), 1);

    // No generation was issued twice, by any of the leaders.
    let db = c.store_conn();
    let twice: i64 = db
        .query_row(
            "SELECT count(*) FROM (SELECT generation FROM placement_history
               GROUP BY generation HAVING count(*) > 1) AS twice",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "a generation was issued twice");
    let (ok, out, err) = c.cli(&["audit", "verify"]);
    assert!(ok, "the audit chain holds across leaders: {out}{err}");
}

#[test]
fn a_leader_stopped_past_its_lease_wakes_up_unable_to_change_anything_and_stops() {
    let s3 = S3::start();
    let (mut c, mut others) =
        Cluster::start_replicated(&[EU_NORTH], &s3, INTERVAL_MS, 2, LEASE_TTL_MS);
    c.wait_nodes_healthy(1);
    c.start_replica(&mut others[0], &[]);
    let r1 = c.api;
    assert_eq!(leader_among(&c, &all_apis(r1, &others)), r1);
    c.create_org_ready("acme", json!({"region": "eu-north"}));
    // The dashboard through a follower: signing in (a change, checked against its origin)
    // and a page, both answered by the leader.
    let r2 = others[0].api;
    let http = support::http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http
        .post(format!("http://{r2}/signin"))
        .header("origin", format!("http://{r2}"))
        .form(&[("token", support::cluster::ADMIN_TOKEN)])
        .send()
        .unwrap();
    assert_eq!(
        signed_in.status().as_u16(),
        303,
        "sign-in through a follower"
    );
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = http
        .get(format!("http://{r2}/orgs/acme"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let pid = c.control_pid().unwrap().to_string();
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("-STOP");
    // r2 takes over once r1's lease has run out, and changes things.
    assert_eq!(leader_among(&c, &[r2]), r2);
    c.api = r2;
    c.wait_nodes_healthy(1);
    c.create_org_ready("globex", json!({"region": "eu-north"}));
    let (_, before) = c.admin("GET", "/audit?limit=10000", None);
    // r1 wakes: its lease is gone; whatever it tries is refused, and it stops.
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = c.control_exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the deposed leader is still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "a deposed leader exits with an error");
    let log = std::fs::read_to_string(c.dir.path().join("control.log")).unwrap();
    assert!(log.contains("no longer leads"), "{log}");
    // It changed nothing: the audit trail is what r2 wrote, and still verifies.
    let (_, after) = c.admin("GET", "/audit?limit=10000", None);
    let by = |a: &Value, actor: &str| {
        a.as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["seq"].as_i64() > before.as_array().unwrap().last().unwrap()["seq"].as_i64()
            })
            .filter(|e| e["actor"] == actor)
            .count()
    };
    assert_eq!(by(&after, "r1"), 0);
    let (ok, out, err) = c.cli(&["audit", "verify"]);
    assert!(ok, "{out}{err}");
    assert_eq!(c.org("globex").unwrap().home_region, "eu-north");
}

#[test]
fn the_store_on_postgresql_over_tls_checks_the_servers_certificate() {
    let ca = support::tls::TestCa::new();
    let server = support::cluster::postgres_server_tls(&ca.cert, &ca.key);
    let name = format!("tls_{}", std::process::id());
    // The test itself speaks plain text to it (it has no PGSSLROOTCERT).
    let plain_url =
        hemvist_control::store::fresh_database(&format!("{server}?sslmode=disable"), &name)
            .unwrap();
    let url = plain_url.replace("sslmode=disable", "sslmode=require");
    let env = vec![("PGSSLROOTCERT".to_string(), ca.ca.display().to_string())];
    let c = Cluster::start_on_store(&[EU_NORTH], &url, &env);
    c.wait_nodes_healthy(1);
    c.create_org_ready("acme", json!({"region": "eu-north"}));
    // Every connection the control plane holds is over TLS.
    let db = hemvist_control::store::sql::Conn::postgres(&plain_url).unwrap();
    let (tls, plain): (i64, i64) = db
        .query_row(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
             FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.application_name = 'hemvist-control' AND a.datname = ?1
               AND a.pid <> pg_backend_pid()",
            [name.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(tls >= 1 && plain == 0, "{tls} over TLS, {plain} plain");
    drop(c);

    // With other roots, the server's certificate does not check: the control plane does not
    // start, and says why.
    let other = support::tls::TestCa::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hemvist"))
        .args(["control", "--config"])
        .arg(write_config(&url))
        .env("PGSSLROOTCERT", &other.ca)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

/// A minimal control plane config on `store`.
fn write_config(store: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("control.toml");
    std::fs::write(
        &path,
        format!(
            "api_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             admin_token = \"{}\"\njoin_token = \"{}\"\ndefault_region = \"eu-north\"\n\
             store = {store:?}\n\
             [[regions]]\nid = \"eu-north\"\nname = \"Stockholm\"\njurisdiction = \"EU\"\n\
             countries = [\"SE\"]\nobject_store = \"file:///dev/null/eu-north\"\n",
            dir.join("control").display().to_string(),
            support::cluster::ADMIN_TOKEN,
            "join-token-for-this-test-only"
        ),
    )
    .unwrap();
    path
}

#[test]
fn hemvist_dev_ha_runs_three_replicas_and_survives_the_leaders_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, dev) = support::dev::start_dev(dir.path(), &data, &["--ha"]);
    let replicas = dev["replicas"]
        .as_array()
        .expect("dev.json lists the replicas")
        .clone();
    assert_eq!(replicas.len(), 3, "{dev:#}");
    let apis: Vec<std::net::SocketAddr> = replicas
        .iter()
        .map(|r| {
            r["api"]
                .as_str()
                .unwrap()
                .trim_start_matches("http://")
                .parse()
                .unwrap()
        })
        .collect();
    let http = support::http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = dev["admin_token"].as_str().unwrap().to_string();
    let orgs_via = |api: std::net::SocketAddr| -> Option<usize> {
        let r = http
            .get(format!("http://{api}/api/v1/orgs"))
            .bearer_auth(&token)
            .send()
            .ok()?;
        (r.status() == 200)
            .then(|| r.json::<Value>().ok())??
            .as_array()
            .map(|a| a.len())
    };
    let leading = |apis: &[std::net::SocketAddr]| {
        apis.iter()
            .position(|a| healthz(*a).is_some_and(|h| h.trim() == "ok"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(i) = leading(&apis) {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica of dev --ha leads");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every replica answers the API (the followers by forwarding), with the demo orgs.
    for a in &apis {
        assert_eq!(orgs_via(*a), Some(3), "via {a}");
    }
    // kill -9 of the leader: another leads, and its supervisor starts it again.
    let pid = replicas[leader]["pid"].as_u64().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    // Whoever leads next (the killed one too, once started again) is a new process.
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(30);
    while leading(&apis).is_none() {
        assert!(Instant::now() < deadline, "no replica took over");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while orgs_via(apis[leader]) != Some(3) {
        assert!(
            Instant::now() < deadline,
            "the killed replica did not come back as a follower"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    support::dev::stop_dev(child);
}
