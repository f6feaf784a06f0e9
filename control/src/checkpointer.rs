//! Writes a checkpoint whenever the chain has grown since the last one, at most once per
//! interval, and a last one on shutdown. An idle control plane writes none.
//!
//! It signs a head only if the chain still holds, at the last checkpoint's seq, the hash that
//! checkpoint signed: a chain edited or cut back on disk is never laundered into a fresh
//! checkpoint. It stops signing, says so, and `audit verify` names the damage.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::plane::Plane;

pub async fn run(plane: Arc<Plane>, shutdown: CancellationToken) {
    let Some(checkpoints) = &plane.checkpoints else {
        return;
    };
    let every = Duration::from_millis(checkpoints.interval_ms);
    let mut written: Option<i64> = None;
    // The last checkpoint (seq, hash) the chain must still agree with; read from the store at
    // start (until it answers, nothing is signed).
    let mut anchor: Option<Option<(i64, String)>> = None;
    let mut failing = false;
    let mut refused = false;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = shutdown.cancelled() => true,
        };
        let p = plane.clone();
        let head = match tokio::task::spawn_blocking(move || p.store.audit_head()).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => {
                if stopping {
                    return;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "audit checkpoint: cannot read the chain's head");
                continue;
            }
            Err(_) => return,
        };
        if anchor.is_none() {
            match checkpoints.newest(&plane.system_id).await {
                Ok(c) => {
                    written = c.as_ref().map(|c| c.seq);
                    anchor = Some(c.map(|c| (c.seq, c.hash)));
                }
                Err(e) => {
                    plane.metrics.audit_checkpoint_failures.inc();
                    if !failing {
                        tracing::warn!(error = %e, "audit checkpoint store cannot be read; trying again");
                    }
                    failing = true;
                    if stopping {
                        return;
                    }
                    continue;
                }
            }
        }
        if let Some(Some((seq, hash))) = &anchor {
            let (p, at) = (plane.clone(), *seq);
            let now = tokio::task::spawn_blocking(move || p.store.audit_hash_at(at)).await;
            if !matches!(&now, Ok(Ok(Some(h))) if h == hash) {
                plane.metrics.audit_checkpoint_failures.inc();
                if !refused {
                    tracing::error!(seq, "the audit chain no longer holds what its last checkpoint signed: no new checkpoint is signed; run `hemvist audit verify`");
                }
                refused = true;
                if stopping {
                    return;
                }
                continue;
            }
        }
        if written != Some(head.0) {
            let seq = head.0;
            let write = checkpoints.write(&plane.system_id, head, now_ms());
            // On shutdown the whole drain has 5 s.
            let limit = Duration::from_secs(if stopping { 3 } else { 10 });
            match tokio::time::timeout(limit, write).await {
                Ok(Ok((c, version))) => {
                    written = Some(seq);
                    anchor = Some(Some((c.seq, c.hash.clone())));
                    plane.metrics.audit_checkpoints.inc();
                    if failing {
                        tracing::info!(seq, "audit checkpoints are written again");
                        failing = false;
                    }
                    tracing::debug!(seq, name = %c.name(), version = ?version, "audit checkpoint written");
                }
                Ok(Err(e)) => {
                    plane.metrics.audit_checkpoint_failures.inc();
                    if !failing {
                        tracing::warn!(error = %e, seq, "audit checkpoint not written; trying again");
                    }
                    failing = true;
                }
                Err(_) => {
                    plane.metrics.audit_checkpoint_failures.inc();
                    if !failing {
                        tracing::warn!(
                            seq,
                            "audit checkpoint store did not answer in time; trying again"
                        );
                    }
                    failing = true;
                }
            }
        }
        if stopping {
            return;
        }
    }
}
