//! Branches, end to end: real control plane and node processes, a real S3-compatible server,
//! real SQLite files. A branch holds exactly its point in time, masked by each rule, with no
//! unmasked value in any object of the store; its writes never reach the parent; a branch
//! outside the parent's policy, or with a mask naming an unknown column, is refused before any
//! work; keepalive pushes it out; destroy and expiry leave nothing behind (file, objects,
//! placement), each audited once, across control-plane kills.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;
use support::session::sign_in;

const PASSWORD: &str = "correct horse battery";
const INTERVAL_MS: u64 = 300;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn tenant_file(c: &Cluster, region: &str, org: &str) -> PathBuf {
    c.node_data(region)
        .join("tenants")
        .join(&org[..2])
        .join(format!("{org}.db"))
}

/// (name, email, city) of every contact, by id.
fn contacts(db: &Path) -> BTreeMap<i64, (String, String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open tenant");
    let mut stmt = conn
        .prepare("SELECT id, name, email, city FROM contacts")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn wait_operation(c: &Cluster, id: &str) -> Value {
    c.wait_for(&format!("operation {id} to end"), || {
        let (status, op) = c.admin("GET", &format!("/operations/{id}"), None);
        (status == 200 && !op["finished_ms"].is_null()).then_some(op)
    })
}

fn audit_actions(c: &Cluster, org: &str) -> Vec<String> {
    let (_, all) = c.admin("GET", "/audit?limit=10000", None);
    all.as_array()
        .unwrap()
        .iter()
        .filter(|a| a["org"] == org)
        .filter_map(|a| a["action"].as_str().map(String::from))
        .collect()
}

/// Every backup object's decrypted body that belongs to `org`: its own objects and its
/// segments inside the shared packs, opened with its data key.
fn decrypted_bodies(s3: &S3, org: &str, key_hex: &str) -> Vec<Vec<u8>> {
    use hemvist_node::backup::format::{self, Body, ObjectName};
    let key = hemvist_proto::DataKey(hex_key(key_hex));
    let root = s3.objects("hemvist");
    let bucket_root = s3.bucket_dir.join("hemvist");
    let mut out = Vec::new();
    let body = |d: format::Decoded| -> Vec<u8> {
        match d.body {
            Body::Database(b) => b,
            Body::Pages(p) => p.into_values().flatten().collect(),
        }
    };
    for path in root {
        let rel = path
            .strip_prefix(&bucket_root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(name) = ObjectName::parse(&rel) {
            if name.org.as_str() == org && name.kind != format::Kind::Index {
                out.push(body(
                    format::decode(&name, &bytes, Some(&key)).expect("decode"),
                ));
            }
        } else if let Some((_, _, index_len)) = format::parse_pack_key(&rel) {
            let tail = &bytes[bytes.len() - index_len as usize..];
            for (name, off, len) in format::decode_pack_index(&rel, tail).unwrap() {
                if name.org.as_str() == org {
                    let slice = &bytes[off as usize..(off + len) as usize];
                    out.push(body(
                        format::decode(&name, slice, Some(&key)).expect("decode packed"),
                    ));
                }
            }
        }
    }
    out
}

fn hex_key(s: &str) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    k
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_branch_holds_its_point_in_time_masked_in_region_and_its_writes_stay_its_own() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL, US_EAST], &s3, INTERVAL_MS);
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("acme", "ada@acme.example", PASSWORD);
    let ada = sign_in(
        &c.node_url("eu-north"),
        "acme",
        "ada@acme.example",
        PASSWORD,
    )
    .unwrap();
    let add = |name: &str, email: &str, city: &str| {
        let (status, _, body) = ada.post(
            "/contacts",
            &[("name", name), ("email", email), ("city", city)],
            None,
        );
        assert_eq!(status, 303, "{name}: {body}");
    };
    for i in 0..5 {
        add(
            &format!("Zebulon Early{i}"),
            &format!("early{i}@acme.example"),
            &format!("Uppsala{i}"),
        );
    }
    let early_written = now_ms();
    c.wait_position_known("acme", early_written);
    std::thread::sleep(Duration::from_millis(200));
    let at = now_ms();
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        add(
            &format!("Late Comer{i}"),
            &format!("late{i}@acme.example"),
            "Lund",
        );
    }
    c.wait_position_known("acme", now_ms());
    let parent_file = tenant_file(&c, "eu-north", "acme");
    let parent = contacts(&parent_file);
    assert_eq!(parent.len(), 8);

    // Refused before any work: another jurisdiction, an unknown column, a bad name.
    let (status, body) = c.admin(
        "POST",
        "/orgs/acme/branches",
        Some(json!({"name": "us", "region": "us-east", "ttl_ms": 60_000})),
    );
    assert_eq!(status, 422, "{body}");
    let (status, body) = c.admin(
        "POST",
        "/orgs/acme/branches",
        Some(json!({"name": "shoes", "mask": "[contacts]\nshoe_size = \"hash\"\n"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("shoe_size"), "{body}");
    let (status, _) = c.admin(
        "POST",
        "/orgs/acme/branches",
        Some(json!({"name": "Bad Name"})),
    );
    assert_eq!(status, 400);
    for gone in ["acme--us", "acme--shoes"] {
        let (status, _) = c.admin("GET", &format!("/branches/{gone}"), None);
        assert_eq!(status, 404, "{gone} was refused: nothing made");
    }

    // The branch, through the CLI, masked: names faked, emails faked with their domain, city
    // kept.
    let mask = c.dir.path().join("mask.toml");
    std::fs::write(
        &mask,
        "[contacts]\nname = \"fake_name\"\nemail = \"fake_email\"\ncity = \"keep\"\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&[
        "branch",
        "create",
        "acme",
        "--name",
        "qa",
        "--at",
        &at.to_string(),
        "--ttl",
        "3h",
        "--mask",
        mask.to_str().unwrap(),
        "--wait",
    ]);
    assert!(ok, "branch create: {out}\n{err}");
    assert!(out.contains("branch acme--qa made"), "{out}");

    let branch_file = tenant_file(&c, "eu-north", "acme--qa");
    let branch = contacts(&branch_file);
    assert_eq!(branch.len(), 5, "exactly the point in time: {branch:?}");
    for (id, (name, email, city)) in &branch {
        let (pname, pemail, pcity) = &parent[id];
        assert!(pname.starts_with("Zebulon Early"), "{pname}");
        assert_ne!(name, pname, "names are faked");
        assert!(!name.contains("Zebulon"));
        assert!(
            email.ends_with("@acme.example") && email != pemail,
            "{email}"
        );
        assert_eq!(city, pcity, "kept");
    }

    // Its pages: the banner, a sign-in with the parent's copied user, and a write that never
    // reaches the parent.
    let shown = c.wait_for("the branch's size reported", || {
        let (_, b) = c.admin("GET", "/branches/acme--qa", None);
        (b["size_bytes"].as_u64() > Some(0)).then_some(b)
    });
    assert_eq!(
        shown["size_bytes"].as_u64(),
        Some(std::fs::metadata(&branch_file).unwrap().len()),
        "{shown}"
    );
    assert_eq!(shown["parent"], "acme");
    assert_eq!(shown["state"], "live", "{shown}");
    let bob = sign_in(
        &c.node_url("eu-north"),
        "acme--qa",
        "ada@acme.example",
        PASSWORD,
    )
    .expect("the parent's users are copied");
    let (status, _, page) = bob.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("Test branch") && page.contains("acme"),
        "{page}"
    );
    assert!(page.contains("Keep alive"), "{page}");
    let (status, _, body) = bob.post(
        "/contacts",
        &[("name", "Only In Branch"), ("email", "x@acme.example")],
        None,
    );
    assert_eq!(status, 303, "{body}");
    assert_eq!(contacts(&branch_file).len(), 6);
    assert_eq!(contacts(&parent_file), parent, "the parent is untouched");

    // No object of the store holds an unmasked value: every one of the branch's objects,
    // opened with its key, and its segments in the shared packs.
    c.wait_position_known("acme--qa", now_ms());
    let (status, key) = c.admin("GET", "/orgs/acme--qa/data-key", None);
    assert_eq!(status, 200);
    let bodies = decrypted_bodies(&s3, "acme--qa", key["data_key"].as_str().unwrap());
    assert!(!bodies.is_empty());
    assert!(
        bodies.iter().any(|b| contains(b, "Only In Branch")),
        "the decryption works: the branch's own write is found"
    );
    for b in &bodies {
        for i in 0..5 {
            for needle in [
                format!("early{i}@acme.example"),
                format!("Zebulon Early{i}"),
            ] {
                assert!(
                    !contains(b, &needle),
                    "{needle} is in a backup of the branch"
                );
            }
        }
    }

    // Keepalive pushes the expiry out, audited.
    let before = shown["expires_ms"].as_i64().unwrap();
    let (status, kept) = c.admin(
        "POST",
        "/branches/acme--qa/keepalive",
        Some(json!({"for_ms": 18_000_000})),
    );
    assert_eq!(status, 200, "{kept}");
    assert!(kept["expires_ms"].as_i64().unwrap() > before + 3_000_000);
    let (ok, out, _) = c.cli(&["branch", "list", "--org", "acme"]);
    assert!(ok && out.contains("acme--qa"), "{out}");

    // Destroyed: file, objects, placement; audited once.
    let (ok, out, err) = c.cli(&["branch", "destroy", "acme--qa", "--wait"]);
    assert!(ok, "{out}\n{err}");
    assert!(!branch_file.exists());
    assert!(s3.objects("hemvist/tenants/acme--qa").is_empty());
    let (status, _) = c.admin("GET", "/orgs/acme--qa", None);
    assert_eq!(status, 404);
    let (_, b) = c.admin("GET", "/branches/acme--qa", None);
    assert_eq!(b["state"], "destroyed");
    let actions = audit_actions(&c, "acme--qa");
    for a in [
        "branch.created",
        "branch.kept_alive",
        "branch.destroyed",
        "tenant.destroyed",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }
    assert_eq!(
        actions.iter().filter(|a| *a == "branch.destroyed").count(),
        1
    );
    assert_eq!(contacts(&parent_file), parent, "the parent is untouched");

    // In another region the policy allows: made in the parent's, then moved there; destroyed,
    // it leaves nothing on either node (the first one's trash included).
    let (status, op) = c.admin(
        "POST",
        "/orgs/acme/branches",
        Some(json!({"name": "fra", "region": "eu-central", "ttl_ms": 7_200_000})),
    );
    assert_eq!(status, 202, "{op}");
    c.wait_for("acme--fra in eu-central", || {
        let (_, b) = c.admin("GET", "/branches/acme--fra", None);
        let (_, o) = c.admin("GET", "/orgs/acme--fra", None);
        (b["state"] == "live" && o["home_region"] == "eu-central" && o["ready"] == true)
            .then_some(())
    });
    let moved = tenant_file(&c, "eu-central", "acme--fra");
    c.wait_for("the branch's file at its new home", || {
        moved.exists().then_some(())
    });
    assert_eq!(
        contacts(&moved).len(),
        8,
        "a branch of now holds every write"
    );
    let central = sign_in(
        &c.node_url("eu-central"),
        "acme--fra",
        "ada@acme.example",
        PASSWORD,
    )
    .expect("served at its new home");
    let (status, _, page) = central.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("Test branch"), "{page}");
    let (ok, out, err) = c.cli(&["branch", "destroy", "acme--fra", "--wait"]);
    assert!(ok, "{out}\n{err}");
    assert!(!moved.exists());
    assert!(!tenant_file(&c, "eu-north", "acme--fra").exists());
    let trash = c.node_data("eu-north").join("trash");
    let left: Vec<String> = std::fs::read_dir(&trash)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("acme--fra."))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the first copy is not left in the trash: {left:?}"
    );
    assert!(s3.objects("hemvist/tenants/acme--fra").is_empty());
}

#[test]
fn a_branch_expires_on_time_exactly_once_across_control_plane_kills() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, INTERVAL_MS);
    c.create_org_ready("fika", json!({"region": "eu-north"}));
    c.add_user("fika", "bo@fika.example", PASSWORD);
    let bo = sign_in(&c.node_url("eu-north"), "fika", "bo@fika.example", PASSWORD).unwrap();
    let (status, _, _) = bo.post("/contacts", &[("name", "Kanel Bulle")], None);
    assert_eq!(status, 303);
    c.wait_position_known("fika", now_ms());

    // A kill during creation: the creation goes on after the restart, once.
    let (status, op) = c.admin(
        "POST",
        "/orgs/fika/branches",
        Some(json!({"name": "short", "ttl_ms": 5_000, "users": "none"})),
    );
    assert_eq!(status, 202, "{op}");
    c.kill_control();
    c.start_control();
    let made = wait_operation(&c, op["id"].as_str().unwrap());
    assert_eq!(made["phase"], "done", "{made}");
    let file = tenant_file(&c, "eu-north", "fika--short");
    assert!(file.exists());
    let made_at = now_ms();
    // Inside its warning window (the default hour) from the start: listed and counted so.
    let (_, b) = c.admin("GET", "/branches/fika--short", None);
    assert_eq!(b["state"], "expiring", "{b}");
    assert_eq!(c.metric(&c.control_url(), "hemvist_branches_expiring"), 1);

    // A kill around expiry: destroyed once, on time.
    std::thread::sleep(Duration::from_millis(3_000));
    c.kill_control();
    std::thread::sleep(Duration::from_millis(2_500));
    c.start_control();
    c.wait_for("the expired branch to be destroyed", || {
        let (_, b) = c.admin("GET", "/branches/fika--short", None);
        (b["state"] == "destroyed").then_some(())
    });
    let destroyed_after = now_ms() - made_at;
    assert!(
        destroyed_after < 30_000,
        "{destroyed_after} ms after it was made"
    );
    assert!(!file.exists());
    assert!(s3.objects("hemvist/tenants/fika--short").is_empty());
    let (status, _) = c.admin("GET", "/orgs/fika--short", None);
    assert_eq!(status, 404);
    let (_, b) = c.admin("GET", "/branches/fika--short", None);
    assert_eq!(b["destroyed_why"], "expired", "{b}");
    // Another restart changes nothing: nothing is destroyed twice.
    c.kill_control();
    c.start_control();
    std::thread::sleep(Duration::from_millis(1_500));
    let actions = audit_actions(&c, "fika--short");
    assert_eq!(
        actions.iter().filter(|a| *a == "branch.destroyed").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "branch.created").count(),
        1,
        "{actions:?}"
    );
    let (_, ops) = c.admin("GET", "/operations", None);
    let destroys = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "branch-destroy" && o["org"] == "fika--short")
        .count();
    assert_eq!(destroys, 1);
    // The parent still serves its own data.
    let (status, _, page) = bo.get("/?q=kanel");
    assert_eq!(status, 200);
    assert!(page.contains("Kanel"), "{page}");

    // A branch with its own users instead of the parent's; an org id with '--' is no way
    // around `branch create`.
    let users = c.dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[[user]]\nemail = \"qa@fika.example\"\nname = \"QA\"\npassword = \"tester tester 1\"\n",
    )
    .unwrap();
    let (ok, out, err) = c.cli(&[
        "branch",
        "create",
        "fika",
        "--name",
        "qa",
        "--users",
        users.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let base = c.node_url("eu-north");
    assert!(sign_in(&base, "fika--qa", "qa@fika.example", "tester tester 1").is_ok());
    assert!(
        sign_in(&base, "fika--qa", "bo@fika.example", PASSWORD).is_err(),
        "the parent's users are not copied"
    );
    let (status, body) = c.create_org(json!({"id": "fika--sneaky", "name": "x"}));
    assert_eq!(status, 400, "{body}");

    // Kept alive by use: a signed-in user's requests push a 4 s branch out for as long as they
    // go on; once they stop, it expires.
    let (ok, out, err) = c.cli(&[
        "branch",
        "create",
        "fika",
        "--name",
        "busy",
        "--ttl",
        "4s",
        "--keepalive-on-use",
        "--wait",
    ]);
    assert!(ok, "{out}\n{err}");
    let (_, b) = c.admin("GET", "/branches/fika--busy", None);
    let first_expiry = b["expires_ms"].as_i64().unwrap();
    let user = sign_in(&base, "fika--busy", "bo@fika.example", PASSWORD).unwrap();
    while now_ms() < first_expiry + 4_000 {
        let (status, _, _) = user.get("/");
        assert_eq!(status, 200, "the branch is alive while it is used");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (_, b) = c.admin("GET", "/branches/fika--busy", None);
    assert!(
        b["state"] != "destroyed" && b["expires_ms"].as_i64().unwrap() > first_expiry,
        "{b}"
    );
    assert!(!b["last_used_ms"].is_null(), "{b}");
    c.wait_for("the unused branch to expire", || {
        let (_, b) = c.admin("GET", "/branches/fika--busy", None);
        (b["state"] == "destroyed").then_some(())
    });
    let (_, all) = c.admin("GET", "/audit?limit=10000", None);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["org"] == "fika--busy"
            && a["action"] == "branch.kept_alive"
            && a.to_string().contains("used by a signed-in user")));
}

/// No file of the branch's under the node's tenants folder but the tenant itself: no unmasked
/// staging copy, no masked one left half made.
fn staging_left(c: &Cluster, org: &str) -> Vec<String> {
    let dir = tenant_file(c, "eu-north", org)
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{org}.")) && !n.ends_with(".db"))
                .filter(|n| !n.ends_with(".db-wal") && !n.ends_with(".db-shm"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_crash_at_any_step_of_a_branch_neither_leaks_it_nor_makes_or_destroys_it_twice() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, INTERVAL_MS);
    c.create_org_ready("krona", json!({"region": "eu-north"}));
    c.add_user("krona", "eva@krona.example", PASSWORD);
    let eva = sign_in(
        &c.node_url("eu-north"),
        "krona",
        "eva@krona.example",
        PASSWORD,
    )
    .unwrap();
    let (status, _, _) = eva.post(
        "/contacts",
        &[("name", "Silver Mynt"), ("email", "silver@krona.example")],
        None,
    );
    assert_eq!(status, 303);
    c.wait_position_known("krona", now_ms());
    let mask = "[contacts]\nemail = \"hash\"\n";
    let steps = [
        ("control", "control.branch.waiting"),
        ("control", "control.branch.placing"),
        ("control", "control.branch.restoring"),
        ("control", "control.branch.backing_up"),
        ("node", "node.branch.restored"),
        ("node", "node.branch.masked"),
    ];
    for (i, (side, point)) in steps.iter().enumerate() {
        let name = format!("c{i}");
        let id = format!("krona--{name}");
        if *side == "control" {
            c.kill_control();
            c.start_control_with_env(&[("HEMVIST_FAILPOINTS", point)]);
        } else {
            c.kill_node("eu-north");
            c.start_node_with_env("eu-north", &[("HEMVIST_FAILPOINTS", point)]);
        }
        c.wait_nodes_healthy(1);
        // Crashing as the operation is recorded, the control plane may not answer at all.
        let _ = support::http()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .post(format!("{}/api/v1/orgs/krona/branches", c.control_url()))
            .bearer_auth(support::cluster::ADMIN_TOKEN)
            .json(&json!({"name": name, "ttl_ms": 3_600_000, "mask": mask}))
            .send();
        if *side == "control" {
            assert!(
                c.wait_control_exit(),
                "the control plane crashed at {point}"
            );
            c.start_control();
        } else {
            assert!(c.wait_node_exit("eu-north"), "the node crashed at {point}");
            c.start_node("eu-north");
        }
        let (_, ops) = c.admin("GET", "/operations", None);
        let mine: Vec<&Value> = ops
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["kind"] == "branch" && o["org"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{point}: one operation makes it: {ops}");
        let ended = c.wait_operation_end(mine[0]["id"].as_str().unwrap(), Duration::from_secs(60));
        assert_eq!(ended["phase"], "done", "crashed at {point}: {ended:#}");
        let branch = contacts(&tenant_file(&c, "eu-north", &id));
        assert_eq!(branch.len(), 1, "{point}");
        assert!(
            !branch.values().any(|(_, e, _)| e.contains("silver@")),
            "{point}: masked"
        );
        assert_eq!(staging_left(&c, &id), Vec::<String>::new(), "{point}");
        let actions = audit_actions(&c, &id);
        assert_eq!(
            actions.iter().filter(|a| *a == "branch.created").count(),
            1,
            "{point}: {actions:?}"
        );
    }

    // Destroyed with a crash right after the destruction is recorded: it goes on, once.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.branch-destroy.destroying")]);
    c.wait_nodes_healthy(1);
    let _ = support::http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .delete(format!("{}/api/v1/branches/krona--c0", c.control_url()))
        .bearer_auth(support::cluster::ADMIN_TOKEN)
        .send();
    assert!(
        c.wait_control_exit(),
        "crashed once the destruction was recorded"
    );
    c.start_control();
    c.wait_for("krona--c0 destroyed", || {
        let (_, b) = c.admin("GET", "/branches/krona--c0", None);
        (b["state"] == "destroyed").then_some(())
    });
    assert!(!tenant_file(&c, "eu-north", "krona--c0").exists());
    assert!(s3.objects("hemvist/tenants/krona--c0").is_empty());
    let actions = audit_actions(&c, "krona--c0");
    assert_eq!(
        actions.iter().filter(|a| *a == "branch.destroyed").count(),
        1,
        "{actions:?}"
    );
    let (_, live) = c.admin("GET", "/branches?org=krona", None);
    assert_eq!(live.as_array().unwrap().len(), steps.len() - 1, "{live}");
}
