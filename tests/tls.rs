//! Every link over real TLS, with the real processes: nodes join the control plane over TLS
//! and refuse one whose certificate they cannot check; a plain client gets nothing from any
//! listener; backups go to an S3 server that speaks only HTTPS, and a restore from it is exact.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;
use support::cluster::{Cluster, EU_NORTH};
use support::s3::{self, S3};
use support::session::sign_in;
use support::tls::TestCa;

const PASSWORD: &str = "correct horse battery";

/// What a plain-text HTTP request to `addr` gets back before the server closes: never HTTP.
fn plain_answer(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn every_link_runs_over_tls_and_a_restore_from_an_https_store_is_exact() {
    let ca = TestCa::new();
    let s3 = S3::start_tls(&ca);
    assert!(s3.endpoint.starts_with("https://"));
    let c = Cluster::start_tls(&[EU_NORTH], &ca, &s3.node_backup_toml(200));
    assert!(c.control_url().starts_with("https://"));
    let eu = c.node_url("eu-north");
    assert!(eu.starts_with("https://"), "{eu}");

    // The node joined over TLS and serves its users over TLS.
    c.create_org_ready("fika", json!({"region": "eu-north"}));
    c.add_user("fika", "ada@fika.example", PASSWORD);
    let u = sign_in(&eu, "fika", "ada@fika.example", PASSWORD).expect("sign in over https");
    let writes = c.write_n(&u, "Secure", 20, Duration::ZERO);
    assert_eq!(writes.acked.len(), 20, "{:?}", writes.refused);

    // A plain client gets no HTTP answer from any listener.
    for addr in [
        eu.trim_start_matches("https://").to_string(),
        c.api.to_string(),
        c.grpc.to_string(),
    ] {
        let answer = plain_answer(&addr);
        assert!(
            !answer.contains("HTTP/1.1 200") && !answer.contains("ok"),
            "{addr} answered plain text: {answer:?}"
        );
    }

    // The operator's verbs need only the URL, the token and the CA.
    let (ok, out, err) = c.cli(&["orgs", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains("fika"), "{out}");
    // A GDPR export: the control plane fetches it from the node over HTTPS (trusting the
    // nodes' CA it is given), the CLI from the control plane.
    let exported = c.dir.path().join("fika-export.db");
    let (ok, out, err) = c.cli(&[
        "orgs",
        "export",
        "fika",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(ok, "export over TLS: {out}\n{err}");
    let rows: i64 = rusqlite::Connection::open(&exported)
        .unwrap()
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 20);

    // Backups reached the HTTPS store; a restore from it has exactly what was acknowledged.
    c.wait_for("the node to ship everything", || {
        (c.metric(&eu, "hemvist_backup_dirty_tenants") == 0
            && !s3.objects("hemvist/tenants/fika").is_empty())
        .then_some(())
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fika.db");
    let output = std::process::Command::new(support::cluster::BIN)
        .args(["restore", "fika", "--at", "now", "--out"])
        .arg(&out)
        .args([
            "--store",
            &format!("s3://{}/hemvist", s3::BUCKET),
            "--endpoint",
            &s3.endpoint,
        ])
        .arg("--store-ca")
        .arg(ca.ca_path())
        .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env("HEMVIST_CONTROL", c.control_url())
        .env("HEMVIST_TOKEN", support::cluster::ADMIN_TOKEN)
        .env("HEMVIST_CA", ca.ca_path())
        .current_dir(dir.path())
        .output()
        .expect("run hemvist restore");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let conn = rusqlite::Connection::open(&out).unwrap();
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM contacts ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    assert_eq!(names, writes.names());

    // Without the store's CA, the same restore refuses the certificate.
    let output = std::process::Command::new(support::cluster::BIN)
        .args(["restore", "fika", "--at", "now", "--out"])
        .arg(dir.path().join("again.db"))
        .args([
            "--store",
            &format!("s3://{}/hemvist", s3::BUCKET),
            "--endpoint",
            &s3.endpoint,
        ])
        .env("HEMVIST_S3_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env("HEMVIST_CONTROL", c.control_url())
        .env("HEMVIST_TOKEN", support::cluster::ADMIN_TOKEN)
        .env("HEMVIST_CA", ca.ca_path())
        .env_remove("HEMVIST_STORE_CA")
        .current_dir(dir.path())
        .output()
        .expect("run hemvist restore");
    assert!(!output.status.success());
    assert!(!dir.path().join("again.db").exists());
}

#[test]
fn a_node_refuses_a_control_plane_whose_certificate_it_cannot_check() {
    let ca = TestCa::new();
    let mut c = Cluster::start_tls(&[EU_NORTH], &ca, "");
    let other = TestCa::new();
    c.add_node_trusting(
        "eu-north-2",
        "eu-north",
        support::cluster::JOIN_TOKEN,
        Some(other.ca_path()),
    );
    let log = c.dir.path().join("node-eu-north-2.log");
    c.wait_for("the node to refuse the control plane's certificate", || {
        let text = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .to_lowercase();
        (text.contains("certificate") || text.contains("unknownissuer")).then_some(())
    });
    let (_, nodes) = c.admin("GET", "/nodes", None);
    let ids: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["eu-north-1"], "the untrusting node never registered");
}

#[test]
fn with_mutual_tls_a_node_without_a_certificate_never_joins() {
    let ca = TestCa::new();
    let mut c = Cluster::start_mutual_tls(&[EU_NORTH], &ca);
    // The node presenting its certificate joined (start waits for it).
    let config = c.node_config("eu-north");
    let with_cert = std::fs::read_to_string(&config).unwrap();
    assert!(with_cert.contains("[control_tls]") && with_cert.matches("cert = ").count() == 2);

    // The same node without its client certificate: the handshake fails and the token alone
    // is not enough.
    c.kill_node("eu-north");
    let lines: Vec<&str> = with_cert.lines().collect();
    let at = lines.iter().position(|l| *l == "[control_tls]").unwrap();
    let without: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            !(*i > at && *i <= at + 3 && (l.starts_with("cert") || l.starts_with("key")))
        })
        .map(|(_, l)| *l)
        .collect();
    std::fs::write(&config, without.join("\n")).unwrap();
    let log_before = c.node_log("eu-north").len();
    c.start_node("eu-north");
    c.wait_for("the node to try and be refused", || {
        let log = c.node_log("eu-north");
        log[log_before..].contains("control link:").then_some(())
    });
    c.wait_for("the node's lease to run out", || {
        let (_, nodes) = c.admin("GET", "/nodes", None);
        (nodes[0]["healthy"] == false).then_some(())
    });
    let log = c.node_log("eu-north");
    assert!(
        !log[log_before..].contains("registered with the control plane"),
        "a node without a client certificate registered"
    );

    // With its certificate back, it joins again.
    c.kill_node("eu-north");
    std::fs::write(&config, &with_cert).unwrap();
    c.start_node("eu-north");
    c.wait_nodes_healthy(1);
}

#[test]
fn hemvist_dev_runs_every_link_over_tls_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, dev) = support::dev::start_dev(dir.path(), &data, &["--tls"]);
    let ca = dev["ca_file"]
        .as_str()
        .expect("dev.json names the CA")
        .to_string();
    support::trust(std::path::Path::new(&ca));
    let control = dev["control_url"].as_str().unwrap().to_string();
    assert!(control.starts_with("https://"), "{control}");
    assert!(dev["control_grpc"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    for o in dev["orgs"].as_array().unwrap() {
        let url = o["url"].as_str().unwrap();
        assert!(url.starts_with("https://"), "{url}");
        let base = url.split("/o/").next().unwrap();
        let login = &o["login"];
        sign_in(
            base,
            o["id"].as_str().unwrap(),
            login["email"].as_str().unwrap(),
            login["password"].as_str().unwrap(),
        )
        .expect("the demo login works over https");
    }
    // The operator's verbs trust the demo's CA from dev.json when run beside it, and need
    // --ca when run elsewhere.
    let empty = tempfile::tempdir().unwrap();
    let token = dev["admin_token"].as_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        std::process::Command::new(support::cluster::BIN)
            .args(["orgs", "list", "--control", &control, "--token", &token])
            .args(extra)
            .env_remove("HEMVIST_DATA")
            .env_remove("HEMVIST_CA")
            .current_dir(empty.path())
            .output()
            .unwrap()
    };
    let out = run(&["--ca", &ca]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nordlys"));
    let out = run(&[]);
    assert!(!out.status.success(), "a CA nobody trusts was accepted");
    support::dev::stop_dev(child);
}
