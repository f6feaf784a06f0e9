//! Fleet schema rollouts with real processes: a control plane, nodes in three regions, real
//! SQLite tenant files and (for restore points) a real S3-compatible server. A good migration
//! reaches every tenant in waves, the canary first and in more than one region; a migration
//! whose check fails on some tenants' data halts after the canary and leaves them exactly as
//! they were; a control plane killed mid-rollout resumes it; a tenant on a node that was down
//! is migrated when it returns; an org is rolled back to its restore point; an edited file is
//! refused.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;
use support::story::names_in;

const INTERVAL_MS: u64 = 300;

/// The built-in files plus `extra` (name, SQL), in a folder of their own.
fn migrations_dir(dir: &Path, extra: &[(&str, &str)]) -> PathBuf {
    let out = dir.join("migrations");
    std::fs::create_dir_all(&out).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for e in std::fs::read_dir(repo).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(out.join(name), sql).unwrap();
    }
    out
}

const GOOD: &str = "-- A note per contact (expand: nullable, the app ignores it).\n\
                    ALTER TABLE contacts ADD COLUMN note TEXT;\n\
                    CREATE INDEX contacts_by_note ON contacts(note);\n\
                    -- check: SELECT count(*) >= 0 FROM contacts WHERE note IS NULL\n";

/// Creates `n` orgs spread over the three regions; their ids.
fn create_orgs(c: &Cluster, n: usize) -> Vec<String> {
    let regions = ["eu-north", "eu-central", "us-east"];
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (status, body) = c.create_org(json!({
            "id": id, "name": format!("Tenant {i}"), "region": regions[i % 3]
        }));
        assert_eq!(status, 201, "{body}");
    }
    for id in &ids {
        c.wait_org_ready(id);
    }
    ids
}

fn region_of(id: &str) -> &'static str {
    let i: usize = id[1..].parse().unwrap();
    ["eu-north", "eu-central", "us-east"][i % 3]
}

fn user_version(file: &Path) -> u32 {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// When the tenant ran `version` (its `schema_migrations` row), if it did.
fn applied_ms(file: &Path, version: u32) -> Option<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT applied_ms FROM schema_migrations WHERE version = ?1",
        [version],
        |r| r.get(0),
    )
    .ok()
}

/// Everything a tenant holds, as SQL text: its schema, its rows, its version.
fn content(file: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut out = format!("user_version {}\n", user_version(file));
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (name, sql) in tables {
        out.push_str(&sql);
        out.push('\n');
        if sql.starts_with("CREATE TABLE") && !name.starts_with("sqlite_") {
            let rows: Vec<String> = conn
                .prepare(&format!(
                    "SELECT quote(t.rowid) || ':' || json_array(t.*) FROM \"{name}\" t"
                ))
                .and_then(|mut s| {
                    s.query_map([], |r| r.get::<_, String>(0))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .unwrap_or_else(|_| vec!["(no rowid)".into()]);
            out.push_str(&rows.join("\n"));
            out.push('\n');
        }
    }
    out
}

fn start_rollout(c: &Cluster, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["migrate", "apply", "--dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let (ok, out, err) = c.cli(&args);
    assert!(ok, "migrate apply: {out}{err}");
    let op: Value = serde_json::from_str(out.trim()).expect("the rollout as JSON");
    op["id"].as_str().expect("operation id").to_string()
}

fn wait_phase(c: &Cluster, id: &str, phase: &str, limit: Duration) -> Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let op = c.operation(id);
        if op["phase"] == phase {
            return op;
        }
        assert!(
            op["finished_ms"].is_null(),
            "rollout {id} ended {} instead of reaching {phase}: {op:#}",
            op["phase"]
        );
        assert!(
            std::time::Instant::now() < deadline,
            "rollout {id} not {phase} within {limit:?}: {op:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_good_migration_reaches_every_tenant_in_waves_canary_first_across_regions() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL, US_EAST], &s3, INTERVAL_MS);
    c.wait_nodes_healthy(3);
    let orgs = create_orgs(&c, 300);
    let dir = migrations_dir(c.dir.path(), &[("0006_contact_notes.sql", GOOD)]);
    // Every tenant starts at the built-in version; no node migrates anything by itself.
    let (ok, status, err) = c.cli(&["migrate", "status", "--json"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["versions"][0]["version"], 5, "{status:#}");
    assert_eq!(status["versions"][0]["tenants"], 300, "{status:#}");

    let id = start_rollout(
        &c,
        &dir,
        &[
            "--canary",
            "3",
            "--waves",
            "10%,100%",
            "--bake",
            "1s",
            "--concurrency",
            "8",
        ],
    );
    let first = c.operation(&id);
    let canary: Vec<String> = first["detail"]["order"].as_array().unwrap()[..3]
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    let regions: std::collections::HashSet<&str> = canary.iter().map(|o| region_of(o)).collect();
    assert_eq!(regions.len(), 3, "the canary spans the regions: {canary:?}");
    // A new org created while the rollout runs starts at its version.
    let ended = c.wait_operation_end(&id, Duration::from_secs(240));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(ended["detail"]["progress"]["migrated"], 300, "{ended:#}");

    let mut canary_latest = 0;
    let mut rest_earliest = i64::MAX;
    for org in &orgs {
        let file = c.tenant_file(region_of(org), org);
        assert_eq!(user_version(&file), 6, "{org}");
        let at = applied_ms(&file, 6).expect("ran 0006");
        if canary.contains(org) {
            canary_latest = canary_latest.max(at);
        } else {
            rest_earliest = rest_earliest.min(at);
        }
    }
    assert!(
        rest_earliest >= canary_latest + 1_000,
        "the canary was migrated and baked before any other tenant: canary done at \
         {canary_latest}, the next at {rest_earliest}"
    );
    let (_, status, _) = c.cli(&["migrate", "status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["current"], 6, "{status:#}");
    assert_eq!(
        status["versions"].as_array().unwrap().len(),
        1,
        "{status:#}"
    );
    assert_eq!(status["versions"][0]["tenants"], 300, "{status:#}");
    assert_eq!(
        status["mismatched"].as_array().unwrap().len(),
        0,
        "{status:#}"
    );
    assert_eq!(
        c.metric(&c.control_url(), "hemvist_schema_current_version"),
        6
    );
    assert_eq!(
        c.metric(&c.control_url(), "hemvist_rollout_pending_tenants"),
        0
    );
    assert_eq!(
        c.metric(
            &c.control_url(),
            "hemvist_tenant_migrations_total{outcome=\"done\"}"
        ),
        300
    );
    // The app works on the migrated schema: a user signs in, writes, and finds it.
    c.add_user("t0004", "ada@t0004.example", "correct horse battery");
    let user = support::session::sign_in(
        &c.url_of("eu-central-1"),
        "t0004",
        "ada@t0004.example",
        "correct horse battery",
    )
    .expect("sign in");
    assert_eq!(
        user.try_post("/contacts", &[("name", "Greta Migrated"), ("city", "Bonn")]),
        Some(303)
    );
    let (status, _, page) = user.get("/?q=greta");
    assert!(
        status == 200 && page.contains("<mark>Greta</mark> Migrated"),
        "{status} {page}"
    );
    // New orgs start at the new version now.
    c.create_org_ready("late", json!({"region": "eu-north"}));
    assert_eq!(user_version(&c.tenant_file("eu-north", "late")), 6);
    // The audit log tells the rollout's story.
    let (_, audit) = c.admin("GET", "/audit", None);
    let actions: Vec<&str> = audit
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    for a in [
        "rollout.started",
        "rollout.baking",
        "rollout.finishing",
        "rollout.done",
    ] {
        assert!(actions.contains(&a), "audit has {a}: {actions:?}");
    }
}

#[test]
fn a_failing_check_halts_after_the_canary_and_leaves_the_tenant_as_it_was() {
    let c = Cluster::start(&[EU_NORTH, EU_CENTRAL, US_EAST]);
    c.wait_nodes_healthy(3);
    let orgs = create_orgs(&c, 30);
    // One canary tenant holds data the new file's check refuses.
    c.add_user("t0001", "ada@t0001.example", "correct horse battery");
    let user = support::session::sign_in(
        &c.url_of("eu-central-1"),
        "t0001",
        "ada@t0001.example",
        "correct horse battery",
    )
    .expect("sign in");
    assert_eq!(
        user.try_post("/contacts", &[("name", "Nobody"), ("city", "Nowhere")]),
        Some(303)
    );
    let bad = "ALTER TABLE contacts ADD COLUMN region TEXT;\n\
               UPDATE contacts SET region = 'eu' WHERE city != 'Nowhere';\n\
               -- check: SELECT count(*) = 0 FROM contacts WHERE region IS NULL\n";
    let dir = migrations_dir(c.dir.path(), &[("0006_contact_regions.sql", bad)]);
    let before: Vec<String> = orgs
        .iter()
        .map(|o| content(&c.tenant_file(region_of(o), o)))
        .collect();
    let main_file = std::fs::read(c.tenant_file("eu-central", "t0001")).unwrap();

    let id = start_rollout(&c, &dir, &["--canary", "t0000,t0001,t0002", "--bake", "1s"]);
    let halted = wait_phase(&c, &id, "halted", Duration::from_secs(60));
    let h = &halted["detail"]["halted"];
    assert_eq!(h["org"], "t0001", "{halted:#}");
    assert_eq!(h["file"], "0006_contact_regions.sql", "{halted:#}");
    assert!(
        h["error"].as_str().unwrap_or("").contains("check"),
        "the error says the check failed: {halted:#}"
    );
    // The CLI names the tenant, the file and the error.
    let (_, out, _) = c.cli(&["ops", "show", &id]);
    assert!(
        out.contains("t0001") && out.contains("0006_contact_regions.sql"),
        "{out}"
    );
    let (_, out, _) = c.cli(&["migrate", "status"]);
    assert!(
        out.contains("FAILED: t0001 on eu-central-1, 0006_contact_regions.sql"),
        "{out}"
    );
    // The failed tenant is exactly as it was; nothing after the canary was touched.
    assert_eq!(
        std::fs::read(c.tenant_file("eu-central", "t0001")).unwrap(),
        main_file,
        "the failed tenant's file is byte for byte as before"
    );
    for (o, was) in orgs.iter().zip(&before) {
        let now = content(&c.tenant_file(region_of(o), o));
        if o == "t0000" || o == "t0002" {
            assert_eq!(user_version(&c.tenant_file(region_of(o), o)), 6, "{o}");
        } else {
            assert_eq!(&now, was, "{o} unchanged");
        }
    }
    assert!(names_in(&c.tenant_file("eu-central", "t0001")).contains(&"Nobody".to_string()));
    // While it is halted, new orgs start at the version before.
    c.create_org_ready("meanwhile", json!({"region": "eu-north"}));
    assert_eq!(user_version(&c.tenant_file("eu-north", "meanwhile")), 5);
    // A new file fixes what the check refused; resumed with it, the rollout completes: the
    // canaries go on to 7, the others run 0006 and 0007 in one transaction each.
    let fix = "UPDATE contacts SET region = 'unknown' WHERE region IS NULL;\n";
    std::fs::write(dir.join("0007_fill_regions.sql"), fix).unwrap();
    let (ok, out, err) = c.cli(&["migrate", "resume", &id, "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let ended = c.wait_operation_end(&id, Duration::from_secs(120));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    for o in &orgs {
        assert_eq!(user_version(&c.tenant_file(region_of(o), o)), 7, "{o}");
    }
    assert_eq!(
        user_version(&c.tenant_file("eu-north", "meanwhile")),
        7,
        "an org created while it was halted is migrated before it is done"
    );
    let conn = rusqlite::Connection::open_with_flags(
        c.tenant_file("eu-central", "t0001"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let region: String = conn
        .query_row(
            "SELECT region FROM contacts WHERE name = 'Nobody'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(region, "unknown");
}

#[test]
fn an_edited_file_is_refused_and_nothing_is_stored() {
    let c = Cluster::start(&[EU_NORTH]);
    c.wait_nodes_healthy(1);
    let dir = migrations_dir(c.dir.path(), &[("0006_contact_notes.sql", GOOD)]);
    let (ok, out, err) = c.cli(&["migrate", "push", "--dir", dir.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    std::fs::write(
        dir.join("0006_contact_notes.sql"),
        format!("{GOOD}-- edited\n"),
    )
    .unwrap();
    std::fs::write(dir.join("0007_more.sql"), "SELECT 1;\n").unwrap();
    let (ok, out, err) = c.cli(&["migrate", "push", "--dir", dir.to_str().unwrap()]);
    assert!(!ok, "an edited file is refused: {out}");
    assert!(
        err.contains("0006_contact_notes.sql") && err.contains("edited"),
        "{err}"
    );
    let (_, files) = c.admin("GET", "/migrations", None);
    assert_eq!(
        files["files"].as_array().unwrap().len(),
        6,
        "0007 was not stored: {files}"
    );
    let (ok, out, _) = c.cli(&["migrate", "files", "--dir", dir.to_str().unwrap()]);
    assert!(ok && out.contains("EDITED"), "{out}");
}

#[test]
fn a_rollout_resumes_after_its_control_plane_dies_and_migrates_a_down_nodes_tenants_on_return() {
    let mut c = Cluster::start(&[EU_NORTH, EU_CENTRAL, US_EAST]);
    c.wait_nodes_healthy(3);
    let orgs = create_orgs(&c, 30);
    let dir = migrations_dir(c.dir.path(), &[("0006_contact_notes.sql", GOOD)]);
    // us-east is down for the whole rollout; the control plane dies once the canary is done.
    c.kill_node("us-east");
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.rollout.baking=crash")]);
    c.wait_nodes_healthy(2);
    let id = start_rollout(&c, &dir, &["--canary", "2", "--bake", "1s"]);
    assert!(
        c.wait_control_exit(),
        "the control plane died entering baking"
    );
    c.start_control();
    // It goes on where it stood, then waits for the tenants of the node that is down.
    let finishing = wait_phase(&c, &id, "finishing", Duration::from_secs(120));
    let p = &finishing["detail"]["progress"];
    std::thread::sleep(Duration::from_millis(500));
    let p_later = &c.operation(&id)["detail"]["progress"];
    assert_eq!(
        p_later["deferred"], 10,
        "us-east's 10 tenants wait: {p} / {p_later}"
    );
    assert_eq!(p_later["migrated"], 20, "{p_later}");
    // A new org starts at the rollout's version.
    c.create_org_ready("newcomer", json!({"region": "eu-north"}));
    assert_eq!(user_version(&c.tenant_file("eu-north", "newcomer")), 6);
    c.start_node("us-east");
    let ended = c.wait_operation_end(&id, Duration::from_secs(120));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(ended["detail"]["progress"]["migrated"], 30, "{ended:#}");
    for org in &orgs {
        assert_eq!(
            user_version(&c.tenant_file(region_of(org), org)),
            6,
            "{org}"
        );
    }
    let (_, audit) = c.admin("GET", "/audit", None);
    let baking = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "rollout.baking")
        .count();
    assert!(baking >= 1, "the bake was recorded");
}

#[test]
fn a_dry_run_changes_nothing_and_says_what_would_fail() {
    let c = Cluster::start(&[EU_NORTH, EU_CENTRAL, US_EAST]);
    c.wait_nodes_healthy(3);
    let orgs = create_orgs(&c, 6);
    let fails_on_empty = "ALTER TABLE contacts ADD COLUMN region TEXT;\n\
                          -- check: SELECT count(*) > 0 FROM contacts\n";
    let dir = migrations_dir(c.dir.path(), &[("0006_needs_rows.sql", fails_on_empty)]);
    let before: Vec<String> = orgs
        .iter()
        .map(|o| content(&c.tenant_file(region_of(o), o)))
        .collect();
    let id = start_rollout(&c, &dir, &["--dry-run", "--canary", "1", "--bake", "0s"]);
    let halted = wait_phase(&c, &id, "halted", Duration::from_secs(60));
    assert!(
        halted["detail"]["halted"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("check"),
        "{halted:#}"
    );
    for (o, was) in orgs.iter().zip(&before) {
        assert_eq!(&content(&c.tenant_file(region_of(o), o)), was, "{o}");
    }
    let (ok, _, err) = c.cli(&["migrate", "abort", &id]);
    assert!(ok, "{err}");
    let (_, status) = c.admin("GET", "/migrations/status", None);
    assert_eq!(status["current"], 5, "a dry run moves no version: {status}");
}

#[test]
fn an_org_rolled_back_is_as_it_was_before_its_migration_and_pinned() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL, US_EAST], &s3, INTERVAL_MS);
    c.wait_nodes_healthy(3);
    c.create_org_ready("acme", json!({"region": "eu-north", "durability": "sync"}));
    c.create_org_ready("globex", json!({"region": "eu-central"}));
    c.add_user("acme", "ada@acme.example", "correct horse battery");
    let user = support::session::sign_in(
        &c.url_of("eu-north-1"),
        "acme",
        "ada@acme.example",
        "correct horse battery",
    )
    .expect("sign in");
    for i in 0..5 {
        let name = format!("before {i}");
        assert_eq!(
            user.try_post("/contacts", &[("name", &name), ("city", "Umeå")]),
            Some(303)
        );
    }
    let dir = migrations_dir(c.dir.path(), &[("0006_contact_notes.sql", GOOD)]);
    let id = start_rollout(&c, &dir, &["--canary", "1", "--bake", "0s"]);
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    let file = c.tenant_file("eu-north", "acme");
    assert_eq!(user_version(&file), 6);
    for i in 0..3 {
        let name = format!("after {i}");
        assert_eq!(
            user.try_post("/contacts", &[("name", &name), ("city", "Umeå")]),
            Some(303)
        );
    }
    // Without --yes it is refused, saying what would be lost.
    let (ok, out, err) = c.cli(&["migrate", "rollback", "acme"]);
    assert!(!ok, "{out}");
    assert!(err.contains("lost") && err.contains("version 5"), "{err}");
    assert_eq!(user_version(&file), 6, "nothing changed");
    let (ok, out, err) = c.cli(&["migrate", "rollback", "acme", "--yes", "--json"]);
    assert!(ok, "{out}{err}");
    let op: Value = serde_json::from_str(out.trim()).unwrap();
    let ended = c.wait_operation_end(op["id"].as_str().unwrap(), Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    // Back to before its migration: its rows then, its version then; the later ones are gone.
    c.wait_org_ready("acme");
    assert_eq!(user_version(&file), 5);
    let names = names_in(&file);
    assert_eq!(
        names,
        (0..5).map(|i| format!("before {i}")).collect::<Vec<_>>()
    );
    let shown = c.org("acme").expect("org");
    assert_eq!(shown.schema_version, Some(5));
    let (_, status) = c.admin("GET", "/migrations/status", None);
    assert!(
        status["pinned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["org"] == "acme"),
        "a rolled-back org is pinned: {status}"
    );
    // The other org kept its migration.
    assert_eq!(user_version(&c.tenant_file("eu-central", "globex")), 6);
    // The org serves at its old version: the user signs in again and writes.
    let user = support::session::sign_in(
        &c.url_of("eu-north-1"),
        "acme",
        "ada@acme.example",
        "correct horse battery",
    )
    .expect("sign in after the rollback");
    assert_eq!(
        user.try_post("/contacts", &[("name", "again"), ("city", "Umeå")]),
        Some(303)
    );
}

#[test]
fn errors_on_the_canary_while_it_bakes_halt_the_rollout() {
    let c = Cluster::start(&[EU_NORTH, EU_CENTRAL, US_EAST]);
    c.wait_nodes_healthy(3);
    create_orgs(&c, 9);
    // Not an expand migration: it renames a column the running app writes.
    let breaking = "ALTER TABLE contacts RENAME COLUMN city TO town;\n";
    let dir = migrations_dir(c.dir.path(), &[("0006_rename_city.sql", breaking)]);
    c.add_user("t0000", "ada@t0000.example", "correct horse battery");
    let user = support::session::sign_in(
        &c.url_of("eu-north-1"),
        "t0000",
        "ada@t0000.example",
        "correct horse battery",
    )
    .expect("sign in");
    let id = start_rollout(&c, &dir, &["--canary", "t0000", "--bake", "20s"]);
    wait_phase(&c, &id, "baking", Duration::from_secs(30));
    // The canary's users now get errors.
    let mut failed = 0;
    for i in 0..10 {
        let status = user
            .try_post("/contacts", &[("name", &format!("n{i}")), ("city", "Kiel")])
            .unwrap_or(0);
        if status >= 500 {
            failed += 1;
        }
    }
    assert!(
        failed >= 3,
        "the broken schema fails the app's writes ({failed} of 10)"
    );
    let halted = wait_phase(&c, &id, "halted", Duration::from_secs(15));
    let h = &halted["detail"]["halted"];
    assert_eq!(h["cause"], "errors", "{halted:#}");
    assert!(
        h["error"].as_str().unwrap_or("").contains("errors"),
        "{halted:#}"
    );
    // Nothing after the canary was migrated.
    for org in ["t0001", "t0002", "t0003"] {
        assert_eq!(
            user_version(&c.tenant_file(region_of(org), org)),
            5,
            "{org}"
        );
    }
}

/// How many contacts named `name` the tenant holds.
fn count_named(file: &Path, name: &str) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row(
        "SELECT count(*) FROM contacts WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn killed_mid_wave_or_mid_migration_a_rollout_migrates_every_tenant_exactly_once() {
    let mut c = Cluster::start(&[EU_NORTH, EU_CENTRAL, US_EAST]);
    c.wait_nodes_healthy(3);
    let orgs = create_orgs(&c, 12);
    // Each file writes a row, so a tenant migrated twice would hold two.
    let once6 =
        "INSERT INTO contacts (name, created_ms, updated_ms) VALUES ('migrated to 6', 0, 0);\n";
    let once7 =
        "INSERT INTO contacts (name, created_ms, updated_ms) VALUES ('migrated to 7', 0, 0);\n";
    let dir = migrations_dir(c.dir.path(), &[("0006_once.sql", once6)]);

    // The control plane dies at the first answer of the wave (the tenant migrated, the answer
    // lost), and comes back.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.ack=crash")]);
    c.wait_nodes_healthy(3);
    let id = start_rollout(
        &c,
        &dir,
        &["--canary", "3", "--waves", "100%", "--bake", "0s"],
    );
    assert!(c.wait_control_exit(), "the control plane died at an answer");
    c.start_control();
    let ended = c.wait_operation_end(&id, Duration::from_secs(120));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    for o in &orgs {
        let file = c.tenant_file(region_of(o), o);
        assert_eq!(user_version(&file), 6, "{o}");
        assert_eq!(count_named(&file, "migrated to 6"), 1, "{o} migrated once");
    }

    // A node dies right after committing a tenant's migration, before it answers.
    std::fs::write(dir.join("0007_once.sql"), once7).unwrap();
    c.kill_node("eu-central");
    c.start_node_with_env(
        "eu-central",
        &[("HEMVIST_FAILPOINTS", "node.migrate.committed=crash")],
    );
    c.wait_nodes_healthy(3);
    let id = start_rollout(
        &c,
        &dir,
        &["--canary", "3", "--waves", "100%", "--bake", "0s"],
    );
    assert!(
        c.wait_node_exit("eu-central"),
        "the node died after a commit"
    );
    c.start_node("eu-central");
    let ended = c.wait_operation_end(&id, Duration::from_secs(120));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(
        ended["detail"]["progress"]["migrated"], 12,
        "none skipped: {ended:#}"
    );
    for o in &orgs {
        let file = c.tenant_file(region_of(o), o);
        assert_eq!(user_version(&file), 7, "{o}");
        assert_eq!(count_named(&file, "migrated to 7"), 1, "{o} migrated once");
        assert_eq!(c.org(o).expect("org").schema_version, Some(7), "{o}");
    }
}
