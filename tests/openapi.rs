//! The admin API's OpenAPI document, against a live control plane and its nodes: schemathesis
//! (PyPI, which `scripts/setup` installs into `.deps/schemathesis`) reads the document the
//! control plane serves, generates requests for every route from it (valid and broken ones),
//! sends them with the admin token, and checks every answer: no 5xx, no status, content type,
//! header or body the document does not describe, and no route that answers without the token.
//! And the CLI asks only for routes the document describes.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use support::cluster::{Cluster, ADMIN_TOKEN, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;

/// The document as the control plane serves it, without a token.
fn document(c: &Cluster) -> Value {
    let resp = support::http()
        .build()
        .unwrap()
        .get(format!("{}/api/v1/openapi.json", c.control_url()))
        .send()
        .expect("GET openapi.json");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().expect("the document is JSON")
}

/// A path with every `{parameter}` written `{}`, and no query.
fn shape(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut out = String::new();
    let mut in_param = false;
    for ch in path.chars() {
        match ch {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if !in_param => out.push(ch),
            _ => {}
        }
    }
    out
}

/// The API paths the CLI's sources ask for (`client.get("/orgs")`, `.post(&format!("/orgs/{id}/move"), …)`).
fn paths_the_cli_asks_for() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src];
    let mut paths = BTreeSet::new();
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                files.push(e.unwrap().path());
            }
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs")
            || p.components().any(|c| c.as_os_str() == "bench")
        {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for call in [".get(", ".post(", ".delete(", ".get_raw("] {
            for (at, _) in text.match_indices(call) {
                let rest = &text[at + call.len()..];
                let rest = rest.trim_start();
                let rest = rest.strip_prefix("&format!(").unwrap_or(rest);
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some(end) = rest.find('"') else { continue };
                let literal = &rest[..end];
                if literal.starts_with('/') && !literal.starts_with("/o/") {
                    paths.insert(shape(literal));
                }
            }
        }
    }
    paths
}

#[test]
fn the_cli_asks_only_for_routes_the_document_describes() {
    let c = Cluster::start(&[EU_NORTH]);
    let doc = document(&c);
    let documented: BTreeSet<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter_map(|p| p.strip_prefix("/api/v1"))
        .map(shape)
        .collect();
    let asked = paths_the_cli_asks_for();
    assert!(
        asked.len() > 20,
        "the scan finds the CLI's calls: {asked:?}"
    );
    let undocumented: Vec<&String> = asked.iter().filter(|p| !documented.contains(*p)).collect();
    assert!(
        undocumented.is_empty(),
        "the CLI asks for routes the document does not describe: {undocumented:?}"
    );
    // Every documented route that needs the token refuses a request without it.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            if open || method != "get" {
                continue;
            }
            let url = format!(
                "{}{}",
                c.control_url(),
                path.replace("{id}", "acme").replace("{name}", "x")
            );
            let status = support::http()
                .build()
                .unwrap()
                .get(&url)
                .send()
                .unwrap()
                .status();
            assert_eq!(status.as_u16(), 401, "GET {path} without the token");
        }
    }
}

#[test]
fn schemathesis_finds_no_server_error_no_answer_outside_the_document_and_no_open_route() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL, US_EAST], &s3, 300);
    // Some state for the generated requests to meet: orgs in each region, with a user.
    for (id, region) in [
        ("acme", "eu-north"),
        ("rhein", "eu-central"),
        ("blue", "us-east"),
    ] {
        c.create_org_ready(id, json!({"region": region}));
        c.add_user(id, &format!("ada@{id}.example"), "correct horse battery");
    }
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/schemathesis");
    let report = c.dir.path().join("schemathesis");
    // Half the generated ids name an org that exists, so routes answer more than 404.
    let config = c.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[dictionaries.orgs]\nvalues = [\"acme\", \"rhein\", \"blue\"]\n\n\
         [parameters]\n\"path.id\" = { dictionary = \"orgs\", probability = 0.5 }\n",
    )
    .unwrap();
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", c.control_url()))
        .args(["--url", &c.control_url()])
        .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,ignored_auth",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            "40",
            "--seed",
            "20261203",
            "--workers",
            "2",
        ])
        .args(["--request-timeout", "30", "--max-redirects", "0"])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .env("PYTHONPATH", &deps)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(c.dir.path())
        .output()
        .expect("run python3 -m schemathesis.cli (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'schemathesis"),
        "scripts/setup installs schemathesis: {stderr}"
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It really ran every documented operation.
    let operations: usize = document(&c)["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().map_or(0, |o| o.len()))
        .sum();
    assert!(operations > 40, "{operations} operations documented");
    println!("{stdout}");
}
