//! One move, as an operator starts it (`POST /orgs/{id}/move`) and watches it
//! (`GET /operations/{id}` until it has ended), timed from this side, with what the control
//! plane recorded about its phases.

use std::time::{Duration, Instant};

use hemvist_proto::OrgId;
use serde_json::{json, Value};

use super::system::System;

/// The longest one move is waited for before it is cancelled (a move stalled before its
/// switch rolls back by itself well before this).
const MOVE_LIMIT: Duration = Duration::from_secs(20 * 60);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct MoveResult {
    pub operation: String,
    pub to: String,
    /// `done`, `rolled_back`, or `timed out` (then cancelled).
    pub phase: String,
    pub requested: Instant,
    /// When this side saw the move had ended.
    pub ended: Instant,
    /// Request sent → end seen.
    pub total: Duration,
    /// `detail.pause_ms`: fencing → the new home serving, as the control plane saw it.
    pub control_pause_ms: Option<i64>,
    /// `detail.bytes`: what the target downloaded for its copy.
    pub bytes: u64,
    /// From the control plane's clock: start → fencing (the copy and its catch-up).
    pub copy_ms: Option<i64>,
    /// Serving → done (the new home's first backup, then the old copy's release).
    pub release_ms: Option<i64>,
    pub error: Option<String>,
}

impl MoveResult {
    pub fn ended(&self) -> bool {
        self.phase == "done" || self.phase == "rolled_back"
    }

    pub fn done(&self) -> bool {
        self.phase == "done"
    }
}

fn since(detail: &Value, to: &str, from: i64) -> Option<i64> {
    detail[to].as_i64().map(|t| t - from)
}

pub fn move_once(sys: &System, org: &OrgId, to: &str) -> anyhow::Result<MoveResult> {
    let requested = Instant::now();
    let started: Value = sys.post(
        &format!("/orgs/{org}/move"),
        &json!({"to": to, "reason": "bench move"}),
    )?;
    let id = started["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the move's answer has no operation id: {started}"))?
        .to_string();
    let mut timed_out = false;
    let op = loop {
        let op: Value = sys.get(&format!("/operations/{id}"))?;
        if !op["finished_ms"].is_null() {
            break op;
        }
        if requested.elapsed() > MOVE_LIMIT {
            timed_out = true;
            let _ = sys.post::<Value>(&format!("/operations/{id}/cancel"), &json!({}));
            break op;
        }
        std::thread::sleep(POLL);
    };
    let ended = Instant::now();
    let detail = &op["detail"];
    let started_ms = op["started_ms"].as_i64().unwrap_or(0);
    Ok(MoveResult {
        operation: id,
        to: to.to_string(),
        phase: if timed_out {
            "timed out".into()
        } else {
            op["phase"].as_str().unwrap_or("?").to_string()
        },
        requested,
        ended,
        total: ended - requested,
        control_pause_ms: detail["pause_ms"].as_i64(),
        bytes: detail["bytes"].as_u64().unwrap_or(0),
        copy_ms: since(detail, "fencing_ms", started_ms),
        release_ms: match (op["finished_ms"].as_i64(), detail["serving_ms"].as_i64()) {
            (Some(f), Some(s)) => Some(f - s),
            _ => None,
        },
        error: op["error"].as_str().map(str::to_string),
    })
}
