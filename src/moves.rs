//! `hemvist orgs move ORG --to REGION [--wait]`: asks the control plane to move an org while it
//! serves and, with `--wait`, follows the move to its end. The move runs in the control plane
//! (copying, fencing, finishing, switching, releasing; or rolling back before the switch, or
//! recovering and returning when the new home died before its first backup); this
//! verb only asks and watches, so stopping it (Ctrl-C) stops the watching, never the move.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use hemvist_proto::OrgId;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::client::Client;
use crate::operations::{self, lag_frames, pause, size, OperationId};
use crate::ops::{error_of, print_json, s, time};
use crate::out::outln;
use crate::ApiArgs;

/// How often `--wait` asks the control plane how the move is going.
const POLL: Duration = Duration::from_millis(200);
/// How long `--wait` keeps asking a control plane it cannot reach (it may be restarting; the
/// move is persisted and goes on) before it gives up watching.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct MoveArgs {
    /// The org to move.
    pub org: String,
    /// The region to move it to; it must be within the org's residency policy.
    #[arg(long)]
    pub to: String,
    /// A node of that region; default the least loaded healthy one.
    #[arg(long)]
    pub node: Option<String>,
    /// Why, for the audit log.
    #[arg(long)]
    pub reason: Option<String>,
    /// Follow the move until it is done (exit 0) or rolled back (exit 1). With --json: a JSON
    /// line per change, then the final record.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(args: MoveArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let client = Client::new(&args.api)?;
    let body = json!({"to": args.to, "node": args.node, "reason": args.reason});
    let started: Value = client.post(&format!("/orgs/{org}/move"), &body).await?;
    let id = OperationId::parse(started["id"].as_str().unwrap_or_default())?;
    if !args.wait {
        if args.api.json {
            return print_json(&started);
        }
        let d = &started["detail"];
        outln!(
            "move {id} started: org {org} from {} ({}) to {} ({}), phase {}",
            s(d, "from_region"),
            s(d, "from_node"),
            s(d, "to_region"),
            s(d, "to_node"),
            s(&started, "phase")
        );
        outln!("  follow it: hemvist ops show {id}   (hemvist ops cancel {id} rolls it back before its switch)");
        return Ok(());
    }
    let mut watch = Watch::new(args.api.json);
    let ended = tokio::select! {
        ended = follow(&client, &id, &mut watch) => Some(ended),
        Ok(()) = tokio::signal::ctrl_c() => None,
    };
    watch.stop();
    let Some(ended) = ended else {
        bail!(
            "stopped watching; move {id} goes on in the control plane: `hemvist ops show {id}` \
             follows it, `hemvist ops cancel {id}` rolls it back before its switch"
        );
    };
    outcome(&ended?, args.api.json)
}

/// Asks for the move every [`POLL`] until it has ended, showing each change; its last view.
async fn follow(client: &Client, id: &OperationId, watch: &mut Watch) -> anyhow::Result<Value> {
    let mut seen: Option<Seen> = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        match operations::fetch(client, id).await {
            Ok(op) => {
                unreachable_since = None;
                let now = Seen::of(&op);
                if seen.as_ref() != Some(&now) {
                    watch.change(&op, seen.as_ref());
                    seen = Some(now);
                }
                watch.tick(&op);
                if !op["finished_ms"].is_null() {
                    return Ok(op);
                }
            }
            Err(e) if unreachable(&e) => {
                let first = unreachable_since.is_none();
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_LIMIT {
                    return Err(e.context(format!(
                        "stopped watching move {id} after {} s without an answer (it goes on: \
                         `hemvist ops show {id}`)",
                        UNREACHABLE_LIMIT.as_secs()
                    )));
                }
                watch.unreachable(&e, first);
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The control plane did not answer at all (restarting, say), as opposed to answering no.
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<reqwest::Error>().is_some())
}

/// What the verb says, and how it exits, once the move has ended: with --json, the final
/// record as the last line.
fn outcome(op: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{op}");
    }
    let d = &op["detail"];
    let id = s(op, "id");
    let org = s(op, "org");
    match op["phase"].as_str() {
        Some("done") => {
            if !json {
                outln!(
                    "org {org} moved from {} ({}) to {} ({}), generation {}",
                    s(d, "from_region"),
                    s(d, "from_node"),
                    s(d, "to_region"),
                    s(d, "to_node"),
                    s(d, "to_generation")
                );
                outln!(
                    "  {} copied; writes paused {}",
                    size(d["bytes"].as_u64().unwrap_or(0)),
                    pause(d)
                );
                outln!("  operation {id}; `hemvist orgs show {org}` lists its locations");
            }
            Ok(())
        }
        Some("rolled_back") => bail!(
            "move {id} rolled back{} ({}); org {org} stayed on its source, {} in {}",
            d["rolled_back_from"]
                .as_str()
                .map(|p| format!(" from {p}"))
                .unwrap_or_default(),
            match error_of(op) {
                e if e.is_empty() => "no error recorded".to_string(),
                e => e,
            },
            s(d, "from_node"),
            s(d, "from_region")
        ),
        other => bail!(
            "move {id} ended in phase {}: {}",
            other.unwrap_or("-"),
            error_of(op)
        ),
    }
}

/// What a move's watcher shows a change of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    phase: String,
    copy: Option<String>,
    lsn: Option<u64>,
    bytes: Option<u64>,
    source_lsn: Option<u64>,
}

impl Seen {
    fn of(op: &Value) -> Seen {
        let p = &op["progress"];
        Seen {
            phase: s(op, "phase"),
            copy: p["state"].as_str().map(str::to_string),
            lsn: p["lsn"].as_u64(),
            bytes: p["bytes"].as_u64(),
            source_lsn: op["replication"]["lsn"].as_u64(),
        }
    }
}

/// How `--wait` shows the move: a spinner for a person at a terminal, a line per phase for a
/// log, a JSON line per change for a script.
enum Watch {
    Bar(ProgressBar),
    Lines,
    Json,
}

impl Watch {
    fn new(json: bool) -> Watch {
        if json {
            return Watch::Json;
        }
        if !std::io::stderr().is_terminal() {
            return Watch::Lines;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Watch::Bar(bar)
    }

    fn change(&mut self, op: &Value, before: Option<&Seen>) {
        let phase = s(op, "phase");
        let before = before.map(|b| b.phase.as_str());
        if let Watch::Json = self {
            let line = json!({
                "operation": op["id"],
                "phase": op["phase"],
                "passed": before.map(|b| passed(b, &phase)).unwrap_or_default(),
                "bytes": bytes(op),
                "lag_frames": lag_frames(op),
                "progress": op["progress"],
                "replication": op["replication"],
                "updated_ms": op["updated_ms"],
            });
            outln!("{line}");
            return;
        }
        if before == Some(phase.as_str()) {
            return;
        }
        let mut phases = before.map(|b| passed(b, &phase)).unwrap_or_default();
        phases.push(&phase);
        for p in phases {
            match self {
                Watch::Lines => outln!("{} {p}: {}", phase_time(p, op), describe(p, op)),
                Watch::Bar(bar) => bar.println(format!("{p}: {}", describe(p, op))),
                Watch::Json => {}
            }
        }
    }

    fn tick(&mut self, op: &Value) {
        if let Watch::Bar(bar) = self {
            let mut msg = format!("{} {}", s(op, "id"), s(op, "phase"));
            let copied = bytes(op);
            if copied > 0 {
                msg.push_str(&format!(", {} copied", size(copied)));
            }
            if let Some(lag) = lag_frames(op) {
                msg.push_str(&format!(", {lag} frames behind"));
            }
            if let Some(e) = op["progress"]["error"].as_str() {
                msg.push_str(&format!(", copy failing: {e}"));
            }
            if !op["detail"]["pause_ms"].is_null() {
                msg.push_str(&format!(", writes paused {}", pause(&op["detail"])));
            }
            bar.set_message(msg);
        }
    }

    /// The control plane did not answer; `first` since it last did.
    fn unreachable(&mut self, e: &anyhow::Error, first: bool) {
        match self {
            Watch::Bar(bar) => bar.set_message(format!("control plane not answering ({e:#})")),
            Watch::Lines | Watch::Json if first => {
                eprintln!("control plane not answering ({e:#}); asking again");
            }
            Watch::Lines | Watch::Json => {}
        }
    }

    fn stop(&mut self) {
        if let Watch::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// A move's phases before its switch and after, in the order they come.
const FORWARD: [&str; 6] = [
    "copying",
    "fencing",
    "finishing",
    "switching",
    "releasing",
    "done",
];

/// The phases a move must have gone through between two looks at it (a fast phase can begin
/// and end between two polls).
fn passed(before: &str, now: &str) -> Vec<&'static str> {
    let at = |p: &str| FORWARD.iter().position(|f| *f == p);
    // Past the switch, a move whose new home died goes back to its source by these.
    let switched = matches!(before, "switching" | "releasing");
    match (at(before), at(now)) {
        (Some(b), Some(n)) if n > b => FORWARD[b + 1..n].to_vec(),
        _ if now == "returning" && switched => vec!["recovering"],
        _ if now == "rolled_back" && switched => vec!["recovering", "returning"],
        _ if now == "rolled_back" && before == "recovering" => vec!["returning"],
        _ if now == "rolled_back" && !matches!(before, "rolling_back" | "returning") => {
            vec!["rolling_back"]
        }
        _ => Vec::new(),
    }
}

/// When a move entered `phase`, where it recorded that; else when it last changed.
fn phase_time(phase: &str, op: &Value) -> String {
    let d = &op["detail"];
    let at = match phase {
        "copying" => &op["started_ms"],
        "fencing" => &d["fencing_ms"],
        "switching" => &d["switched_ms"],
        "releasing" => &d["serving_ms"],
        _ if phase == op["phase"] => &op["updated_ms"],
        _ => &Value::Null,
    };
    format!("{:<24}", time(at))
}

/// What a move's phase does, in the move's own names.
fn describe(phase: &str, op: &Value) -> String {
    let d = &op["detail"];
    let (from, to) = (s(d, "from_node"), s(d, "to_node"));
    match phase {
        "copying" => format!("{to} copies the org's backups from {from} and catches up"),
        "fencing" => {
            format!("{from} holds writes and ships the rest; its position is the final one")
        }
        "finishing" => format!("{to} reaches the final position, LSN {}", s(d, "final_lsn")),
        "switching" => format!(
            "the org's writer is now {to} (generation {}); it starts serving",
            s(d, "to_generation")
        ),
        "releasing" => format!(
            "{to} serves (writes paused {}); {from} drops its copy after {to}'s first backup",
            pause(d)
        ),
        "done" => format!("moved to {} on {to}", s(d, "to_region")),
        "rolling_back" => format!(
            "{} ({from} keeps the org; {to} discards its copy)",
            error_of(op)
        ),
        "recovering" => format!(
            "{to} died before its first backup was reported; another node of {} looks in its \
             store for what {to} shipped",
            s(d, "to_region")
        ),
        "returning" => format!(
            "{}'s store holds nothing of generation {}: {from} takes the org back \
             (generation {}), at the final position",
            s(d, "to_region"),
            s(d, "to_generation"),
            s(d, "return_generation")
        ),
        "rolled_back" if !d["return_generation"].is_null() => format!(
            "{from} serves the org again (generation {})",
            s(d, "return_generation")
        ),
        "rolled_back" => format!("{from} kept the org"),
        other => other.to_string(),
    }
}

/// Bytes the target has copied: its last report while copying, else what the move recorded.
fn bytes(op: &Value) -> u64 {
    op["progress"]["bytes"]
        .as_u64()
        .or_else(|| op["detail"]["bytes"].as_u64())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phases_passed_between_two_looks_are_the_ones_in_between() {
        assert_eq!(passed("copying", "finishing"), ["fencing"]);
        assert_eq!(
            passed("copying", "done"),
            ["fencing", "finishing", "switching", "releasing"]
        );
        assert!(passed("fencing", "finishing").is_empty());
        assert_eq!(passed("copying", "rolled_back"), ["rolling_back"]);
        assert!(passed("rolling_back", "rolled_back").is_empty());
        assert!(passed("finishing", "rolling_back").is_empty());
        assert_eq!(
            passed("releasing", "rolled_back"),
            ["recovering", "returning"]
        );
        assert_eq!(passed("recovering", "rolled_back"), ["returning"]);
        assert_eq!(passed("switching", "returning"), ["recovering"]);
        assert!(passed("returning", "rolled_back").is_empty());
    }
}
