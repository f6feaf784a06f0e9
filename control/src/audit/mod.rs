//! The audit log made tamper-evident. The store keeps the hash chain (`store::audit`); this
//! module signs its head now and then (`checkpoint`), keeps each signature where the control
//! plane's disk cannot reach it (`lockbox`: S3 with Object Lock), and judges the chain against them (`verify`).
//! The task that writes them as the chain grows is `crate::checkpointer`.

pub mod checkpoint;
pub mod lockbox;
pub mod report;
pub mod verify;

use anyhow::Context;

use crate::config::AuditConfig;
use checkpoint::{Checkpoint, Signer};
use lockbox::Lockbox;
use verify::Found;

/// The signing key and the store checkpoints go to.
pub struct Checkpoints {
    pub signer: Signer,
    pub lockbox: Lockbox,
    pub interval_ms: u64,
}

impl Checkpoints {
    /// `None` when no checkpoint store is configured.
    pub fn open(config: &AuditConfig) -> anyhow::Result<Option<Checkpoints>> {
        let Some(store) = &config.checkpoints else {
            return Ok(None);
        };
        let seed = config
            .signing_key
            .as_deref()
            .context("[audit.checkpoints] needs a signing key: set HEMVIST_AUDIT_SIGNING_KEY")?;
        Ok(Some(Checkpoints {
            signer: Signer::from_seed_hex(seed)?,
            lockbox: Lockbox::open(store)?,
            interval_ms: config.checkpoint_interval_ms,
        }))
    }

    /// Signs the chain's head and stores it; returns the checkpoint and the version stored.
    pub async fn write(
        &self,
        system: &str,
        head: (i64, String, i64),
        now_ms: i64,
    ) -> anyhow::Result<(Checkpoint, Option<String>)> {
        let (seq, hash, entry_at) = head;
        let c = self.signer.sign(system, seq, &hash, entry_at, now_ms);
        let body = serde_json::to_vec_pretty(&c)?;
        let version = self.lockbox.put(&c.name(), body, now_ms).await?;
        Ok((c, version))
    }

    /// The newest checkpoint of `system` in the store (by the seq it covers) signed by this
    /// key, if any: where a restarted writer picks up.
    pub async fn newest(&self, system: &str) -> anyhow::Result<Option<Checkpoint>> {
        let listed = self.lockbox.list(&format!("checkpoints/{system}/")).await?;
        let key = self.signer.public_key();
        // Names sort by seq; read back from the newest until one is ours.
        for stored in listed.iter().rev() {
            let fetched = self.lockbox.get(stored).await?;
            if let Ok(c) = serde_json::from_slice::<Checkpoint>(&fetched.body) {
                if c.system == system && c.signed_by(&key) {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// Every stored version of every checkpoint of `system`, read back.
    pub async fn read_all(&self, system: &str) -> anyhow::Result<Vec<Found>> {
        let listed = self.lockbox.list(&format!("checkpoints/{system}/")).await?;
        let mut out = Vec::with_capacity(listed.len());
        for stored in listed {
            let fetched = self.lockbox.get(&stored).await?;
            out.push(Found {
                checkpoint: serde_json::from_slice::<Checkpoint>(&fetched.body)
                    .map_err(|e| e.to_string()),
                lock_mode: fetched.lock_mode,
                locked_until: fetched.locked_until,
                stored,
            });
        }
        Ok(out)
    }
}
