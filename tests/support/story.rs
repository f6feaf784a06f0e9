//! The verbs later scenarios are told in: writes whose acknowledgement is recorded, `orgs show`
//! typed, and waiting for an org to reach a phase. A move, a failover or a rollout test reads as
//! "write, act, wait for the phase, check that every acknowledged write is there".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::cluster::Cluster;
use super::session::UserSession;

/// One write the node acknowledged (a contact it answered 303 for), and when.
#[derive(Debug, Clone)]
pub struct Acked {
    pub name: String,
    pub at: Instant,
}

/// What `write_n` came to: the writes acknowledged, and those refused or unanswered (with the
/// status, or 0 when the node did not answer at all).
#[derive(Debug, Default)]
pub struct Writes {
    pub acked: Vec<Acked>,
    pub refused: Vec<(String, u16)>,
}

impl Writes {
    /// The names of the writes acknowledged at least `margin` before `t`.
    pub fn acked_before(&self, t: Instant, margin: Duration) -> Vec<&str> {
        self.acked
            .iter()
            .filter(|a| t.checked_duration_since(a.at).is_some_and(|d| d > margin))
            .map(|a| a.name.as_str())
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.acked.iter().map(|a| a.name.as_str()).collect()
    }
}

/// `orgs show ID` as the admin API answers it, with the fields scenarios assert on.
#[derive(Debug, Clone, Deserialize)]
pub struct OrgShow {
    pub id: String,
    pub name: String,
    pub home_region: String,
    pub residency: String,
    pub allowed_regions: Vec<String>,
    pub node: String,
    pub node_url: Option<String>,
    pub generation: u64,
    pub durability: String,
    pub ready: bool,
    pub schema_version: Option<u32>,
    #[serde(default)]
    pub backed_up_ms: Option<i64>,
    #[serde(default)]
    pub replication_lag_ms: Option<i64>,
    #[serde(default)]
    pub commands: Vec<CommandShow>,
    #[serde(default)]
    pub audit: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommandShow {
    pub id: String,
    pub node_id: String,
    pub kind: String,
    pub generation: u64,
    pub state: String,
    pub attempts: u32,
    pub error: Option<String>,
}

impl OrgShow {
    /// Where the org is in its life, as `orgs list` shows it: `ready` once its node holds the
    /// current generation, `placing` before.
    pub fn phase(&self) -> &'static str {
        if self.ready {
            "ready"
        } else {
            "placing"
        }
    }
}

impl Cluster {
    /// `orgs show ID`, typed; `None` when the org does not exist.
    pub fn org(&self, id: &str) -> Option<OrgShow> {
        let (status, body) = self.admin("GET", &format!("/orgs/{id}"), None);
        match status {
            200 => Some(
                serde_json::from_value(body.clone())
                    .unwrap_or_else(|e| panic!("orgs show {id}: {e}: {body}")),
            ),
            404 => None,
            other => panic!("orgs show {id}: {other} {body}"),
        }
    }

    /// Waits until the org reaches `phase` (see [`OrgShow::phase`]).
    pub fn wait_for_phase(&self, id: &str, phase: &str) -> OrgShow {
        self.wait_for(&format!("org {id} in phase {phase}"), || {
            self.org(id).filter(|o| o.phase() == phase)
        })
    }

    /// Starts moving `org` to `region` through the admin API; the move's operation id.
    pub fn move_org(&self, org: &str, region: &str) -> String {
        let (status, body) = self.admin(
            "POST",
            &format!("/orgs/{org}/move"),
            Some(serde_json::json!({"to": region, "reason": "test"})),
        );
        assert_eq!(status, 202, "move {org} to {region}: {body}");
        body["id"].as_str().expect("operation id").to_string()
    }

    /// `GET /operations/{id}`: the record with its steps and progress.
    pub fn operation(&self, id: &str) -> serde_json::Value {
        let (status, body) = self.admin("GET", &format!("/operations/{id}"), None);
        assert_eq!(status, 200, "operation {id}: {body}");
        body
    }

    /// Waits (up to `limit`) until the operation has ended; its last record.
    pub fn wait_operation_end(&self, id: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let op = self.operation(id);
            if !op["finished_ms"].is_null() {
                return op;
            }
            assert!(
                Instant::now() < deadline,
                "operation {id} did not end within {limit:?}: {op:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Adds `n` contacts named `{prefix} {i}` as `user`, one every `every`, recording which the
    /// node acknowledged. A refusal or a node that does not answer is recorded, not a failure:
    /// scenarios that kill or move things mid-write decide what they expect.
    pub fn write_n(&self, user: &UserSession, prefix: &str, n: usize, every: Duration) -> Writes {
        let mut out = Writes::default();
        for i in 0..n {
            let name = format!("{prefix} {i:04}");
            match user.try_post("/contacts", &[("name", &name), ("city", "Uppsala")]) {
                Some(303) => out.acked.push(Acked {
                    name,
                    at: Instant::now(),
                }),
                Some(status) => out.refused.push((name, status)),
                None => out.refused.push((name, 0)),
            }
            if !every.is_zero() {
                std::thread::sleep(every);
            }
        }
        out
    }
}

/// Every contact name in a tenant's file, sorted.
pub fn names_in(db: &std::path::Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the tenant's file");
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM contacts")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    names.sort();
    names
}

/// One answer a writer got: the write's name, the status (0: no answer) and its Location.
pub type Answer = (String, u16, Option<String>);

/// A writer adding a contact every few milliseconds through the real form, recording every
/// answer; it never follows a redirect.
pub struct Writer {
    stop: Arc<AtomicBool>,
    /// Writes acknowledged (303) so far.
    acks: Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<Answer>>,
}

impl Writer {
    pub fn start(user: UserSession, prefix: &'static str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = acks.clone();
        let thread = std::thread::spawn(move || {
            let mut answers = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let name = format!("{prefix} {i:05}");
                i += 1;
                let (status, location) = user
                    .try_post_seen("/contacts", &[("name", &name), ("city", "Uppsala")])
                    .unwrap_or((0, None));
                if status == 303 {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                answers.push((name, status, location));
                std::thread::sleep(Duration::from_millis(15));
            }
            answers
        });
        Writer { stop, acks, thread }
    }

    /// Waits (up to 30 s) until `n` writes are acknowledged; whether they were.
    pub fn wait_acked(&self, n: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.acks.load(Ordering::Relaxed) < n {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stops writing; every answer, in order.
    pub fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("writer")
    }
}

/// The names the node acknowledged (303).
pub fn acked(answers: &[Answer]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| a.1 == 303)
        .map(|a| a.0.clone())
        .collect()
}

/// What a writer of a moving org may hear from its old node: 303 (acknowledged) until the move
/// switches, then only 307s to `new_home`; a retryable 503 (fenced, or no lease while the
/// control plane restarts) or no answer (the node is down) at any time; nothing else, ever.
/// (That no write was acknowledged after the fence is checked where it counts: every 303 must
/// be at the new home.)
pub fn assert_old_home_answers(answers: &[Answer], new_home: &str) {
    let switched = answers.iter().position(|a| a.1 == 307);
    for (i, (name, status, location)) in answers.iter().enumerate() {
        match status {
            307 => assert!(
                location.as_deref().is_some_and(|l| l.starts_with(new_home)),
                "{name}: 307 to {location:?}, not to {new_home}"
            ),
            303 if switched.is_some_and(|s| i > s) => {
                panic!("{name}: the old node acknowledged a write after it sent writes away")
            }
            303 | 503 | 0 => {}
            other => panic!("{name}: the old node answered {other}: {answers:?}"),
        }
    }
}

impl Cluster {
    /// A tenant's file on a region's node.
    pub fn tenant_file(&self, region: &str, org: &str) -> std::path::PathBuf {
        self.node_data(region)
            .join("tenants")
            .join(&org[..2])
            .join(format!("{org}.db"))
    }

    /// Every file of `org` on a region's node, its trash included (an erased or purged org
    /// has none).
    pub fn files_of(&self, region: &str, org: &str) -> Vec<String> {
        let data = self.node_data(region);
        let mut found = Vec::new();
        let mut walk = vec![data.join("tenants"), data.join("trash")];
        while let Some(dir) = walk.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk.push(p);
                } else if e
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{org}."))
                {
                    found.push(p.display().to_string());
                }
            }
        }
        found
    }

    /// As [`Cluster::cli`], with the test S3 server's credentials (`--verify-stores`,
    /// `restore`), from the cluster's folder.
    pub fn cli_s3(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new(super::cluster::BIN)
            .args(args)
            .env("HEMVIST_CONTROL", self.control_url())
            .env("HEMVIST_TOKEN", super::cluster::ADMIN_TOKEN)
            .env("HEMVIST_DATA", self.dir.path())
            .env("HEMVIST_S3_ACCESS_KEY_ID", super::s3::ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", super::s3::SECRET_KEY)
            .current_dir(self.dir.path())
            .output()
            .expect("run hemvist");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
