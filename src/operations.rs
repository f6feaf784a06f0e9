//! `hemvist ops list|show|cancel`: the control plane's operations (moves, for now), each a
//! persisted state machine the control plane drives; these verbs only read them and ask for a
//! cancel, which the control plane grants only before a move's switch. Also how a move's record
//! reads to a person, for `ops show` and `orgs move --wait`.

use std::fmt;

use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::ops::{error_of, print_json, s, time};
use crate::out::outln;
use crate::{table, ApiArgs};

#[derive(Subcommand)]
pub enum OpsCommand {
    /// Every operation, newest first.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One operation: its phase, what it carries, the steps it sent to nodes, its progress.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel an operation: a move rolls back if it has not switched yet (the org stays on its
    /// source); after its switch a move can only finish.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// An operation's id, checked as the control plane checks it (letters, digits and `-`, at most
/// 128): safe to put in a URL's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationId(String);

impl OperationId {
    pub fn parse(s: &str) -> anyhow::Result<OperationId> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            let shown: String = s.chars().take(40).flat_map(char::escape_default).collect();
            anyhow::bail!(
                "invalid operation id \"{shown}\": an operation id is letters, digits and '-', \
                 at most 128 of them (like move-acme-3f9a1c0b2d4e; `hemvist ops list` shows them)"
            );
        }
        Ok(OperationId(s.to_string()))
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operation as `GET /operations/{id}` shows it: its record, steps, progress, and the
/// org's backup position.
pub async fn fetch(client: &Client, id: &OperationId) -> anyhow::Result<Value> {
    client.get(&format!("/operations/{id}")).await
}

/// Follows an operation to its end, a line per phase it enters (with `--json`, a JSON line);
/// its last view. `children` also names the phase of the operation it runs (a residency
/// change's move).
pub async fn follow_phases(
    client: &Client,
    id: &OperationId,
    json: bool,
    children: bool,
) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let now = fetch(client, id).await?;
        let mut phase = s(&now, "phase");
        if children {
            if let Some(c) = now["children"].as_array().and_then(|c| c.last()) {
                phase = format!(
                    "{phase} ({} {}: {})",
                    s(c, "kind"),
                    s(c, "id"),
                    s(c, "phase")
                );
            }
        }
        if phase != last {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"operation": id.to_string(), "phase": phase, "at_ms": hemvist_node::clock::now_ms()})
                );
            } else {
                outln!("  {:>6.1} s  {phase}", started.elapsed().as_secs_f64());
            }
            last = phase;
        }
        if !now["finished_ms"].is_null() {
            return Ok(now);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

pub async fn ops(command: OpsCommand) -> anyhow::Result<()> {
    match command {
        OpsCommand::List { api } => {
            let all: Vec<Value> = Client::new(&api)?.get("/operations").await?;
            if api.json {
                return print_json(&Value::Array(all));
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|o| {
                    vec![
                        s(o, "id"),
                        s(o, "kind"),
                        s(o, "org"),
                        s(o, "phase"),
                        s(o, "requested_by"),
                        time(&o["started_ms"]),
                        time(&o["finished_ms"]),
                        error_of(o),
                    ]
                })
                .collect();
            table::print(
                &[
                    "ID",
                    "KIND",
                    "ORG",
                    "PHASE",
                    "REQUESTED BY",
                    "STARTED",
                    "FINISHED",
                    "ERROR",
                ],
                &rows,
            );
            Ok(())
        }
        OpsCommand::Show { id, api } => {
            let id = OperationId::parse(&id)?;
            let op = fetch(&Client::new(&api)?, &id).await?;
            if api.json {
                return print_json(&op);
            }
            show(&op);
            Ok(())
        }
        OpsCommand::Cancel { id, api } => {
            let id = OperationId::parse(&id)?;
            let op: Value = Client::new(&api)?
                .post(&format!("/operations/{id}/cancel"), &serde_json::json!({}))
                .await?;
            if api.json {
                return print_json(&op);
            }
            outln!("operation {id} is {}", s(&op, "phase"));
            if op["kind"] == "move" {
                outln!(
                    "  org {} stays on {}; `hemvist ops show {id}` follows the rollback",
                    s(&op, "org"),
                    s(&op["detail"], "from_node")
                );
            }
            Ok(())
        }
    }
}

fn show(op: &Value) {
    let mut rows = vec![
        ("operation", s(op, "id")),
        ("kind", s(op, "kind")),
        ("org", s(op, "org")),
        ("phase", s(op, "phase")),
        ("requested by", s(op, "requested_by")),
        ("started", time(&op["started_ms"])),
        ("updated", time(&op["updated_ms"])),
        ("finished", time(&op["finished_ms"])),
    ];
    let error = error_of(op);
    if !error.is_empty() {
        rows.push(("error", error));
    }
    let stall = &op["stalled"];
    if !stall.is_null() {
        rows.push((
            "STALLED",
            format!(
                "since {}, waiting for {}",
                time(&stall["since_ms"]),
                s(stall, "waiting_for")
            ),
        ));
    }
    if op["kind"] == "move" {
        rows.extend(detail_rows(&op["detail"]));
    } else if let Some(detail) = op["detail"].as_object() {
        rows.extend(detail.iter().map(|(k, v)| (k.as_str(), v.to_string())));
    }
    if !op["progress"].is_null() {
        rows.push(("progress", progress_line(op)));
    }
    let r = &op["replication"];
    if !r.is_null() {
        rows.push((
            "backup position",
            format!("generation {} LSN {}", s(r, "generation"), s(r, "lsn")),
        ));
    }
    for (k, v) in rows {
        outln!("{k:<16}{v}");
    }
    let steps = op["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if steps.is_empty() {
        return;
    }
    outln!("\nsteps (commands sent to nodes):");
    let prefix = format!("{}.", s(op, "id"));
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|c| {
            let id = s(c, "id");
            vec![
                id.strip_prefix(&prefix).unwrap_or(&id).to_string(),
                s(c, "kind"),
                s(c, "node_id"),
                s(c, "generation"),
                s(c, "state"),
                s(c, "attempts"),
                time(&c["updated_ms"]),
                error_of(c),
            ]
        })
        .collect();
    table::print(
        &[
            "STEP", "KIND", "NODE", "GEN", "STATE", "ATTEMPTS", "UPDATED", "ERROR",
        ],
        &rows,
    );
}

/// How far the target's copy is behind the source (frames), while both positions are known
/// and are of the source's generation (before the switch).
pub fn lag_frames(op: &Value) -> Option<u64> {
    if !matches!(
        op["phase"].as_str(),
        Some("copying" | "fencing" | "finishing")
    ) {
        return None;
    }
    let r = &op["replication"];
    if r["generation"] != op["detail"]["from_generation"] {
        return None;
    }
    let source = r["lsn"].as_u64()?;
    let target = op["progress"]["lsn"].as_u64()?;
    Some(source.saturating_sub(target))
}

/// The write pause a move recorded (from fencing to serving), once it has one.
pub fn pause(detail: &Value) -> String {
    detail["pause_ms"]
        .as_i64()
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "-".into())
}

/// Bytes in binary units, as `backups` prints them.
pub fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

/// A move's detail as `ops show` prints it.
pub fn detail_rows(d: &Value) -> Vec<(&'static str, String)> {
    let to_generation = if d["to_generation"].is_null() {
        "not issued yet".to_string()
    } else {
        s(d, "to_generation")
    };
    let mut rows = vec![
        (
            "from",
            format!(
                "{} on {}, generation {}",
                s(d, "from_region"),
                s(d, "from_node"),
                s(d, "from_generation")
            ),
        ),
        (
            "to",
            format!(
                "{} on {}, generation {to_generation}",
                s(d, "to_region"),
                s(d, "to_node")
            ),
        ),
    ];
    if let Some(reason) = d["reason"].as_str().filter(|r| !r.is_empty()) {
        rows.push(("reason", reason.to_string()));
    }
    rows.extend([
        ("copied", size(d["bytes"].as_u64().unwrap_or(0))),
        ("final LSN", s(d, "final_lsn")),
        ("fencing from", time(&d["fencing_ms"])),
        ("switched", time(&d["switched_ms"])),
        ("serving", time(&d["serving_ms"])),
        ("write pause", pause(d)),
    ]);
    if let Some(from) = d["rolled_back_from"].as_str() {
        rows.push(("rolled back in", from.to_string()));
    }
    rows
}

/// The target's last report on its copy, with how far behind the source it was.
pub fn progress_line(op: &Value) -> String {
    let p = &op["progress"];
    let mut line = format!(
        "{} on {}: LSN {}, {} copied",
        s(p, "state"),
        s(p, "node"),
        s(p, "lsn"),
        size(p["bytes"].as_u64().unwrap_or(0))
    );
    if let Some(lag) = lag_frames(op) {
        line.push_str(&format!(", {lag} frames behind"));
    }
    if let Some(e) = p["error"].as_str() {
        line.push_str(&format!(", failing: {e}"));
    }
    line.push_str(&format!(" (reported {})", time(&p["at_ms"])));
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_operation_id_is_safe_in_a_path_or_refused() {
        assert!(OperationId::parse("move-acme-3f9a1c0b2d4e").is_ok());
        for bad in [
            "",
            "../orgs/acme",
            "move acme",
            "a?b",
            "a#b",
            "a%2Fb",
            "a.b",
        ] {
            let e = OperationId::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid operation id"), "{bad:?}: {e}");
        }
        assert!(OperationId::parse(&"a".repeat(128)).is_ok());
        assert!(OperationId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn the_lag_is_counted_only_before_the_switch_and_in_the_sources_generation() {
        let op = |phase: &str, generation: u64| {
            json!({
                "phase": phase,
                "detail": {"from_generation": 3},
                "progress": {"lsn": 40},
                "replication": {"generation": generation, "lsn": 52},
            })
        };
        assert_eq!(lag_frames(&op("copying", 3)), Some(12));
        assert_eq!(lag_frames(&op("releasing", 3)), None);
        assert_eq!(lag_frames(&op("copying", 7)), None);
        let mut ahead = op("copying", 3);
        ahead["progress"]["lsn"] = json!(60);
        assert_eq!(lag_frames(&ahead), Some(0));
        ahead["progress"] = Value::Null;
        assert_eq!(lag_frames(&ahead), None);
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(10 * 1024 * 1024 + 400 * 1024), "10.4 MiB");
        assert_eq!(size(3 << 30), "3.00 GiB");
    }
}
