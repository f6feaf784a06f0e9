//! Uploads: every object is created with a conditional put, retried with backoff.
//!
//! Keeps true: nothing is ever overwritten (DESIGN invariant 1), but a pack scrubbed of a
//! purged org ([`Uploader::overwrite_key`], under [`Uploader::pack_lock`]). A create that finds
//! the key taken is this same upload retried after an answer was lost, so it counts as done. An
//! attempt without an answer within its time limit is a failure like any other (counted,
//! retried).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hemvist_proto::HemvistError;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::metrics::BackupMetrics;
use crate::backup::format::ObjectName;

/// The store, and the counters every upload adds to.
#[derive(Clone, Copy)]
pub struct Uploader<'a> {
    pub store: &'a Arc<dyn ObjectStore>,
    pub metrics: &'a BackupMetrics,
    /// One attempt's limit, before a second per MiB of the object.
    pub timeout: Duration,
    /// Held while this node deletes or scrubs a pack, so a scrub never writes back a pack
    /// deleted since it was read.
    pub pack_lock: &'a tokio::sync::Mutex<()>,
}

impl Uploader<'_> {
    /// Creates an object; one that exists already is this same upload retried.
    pub async fn put(&self, name: &ObjectName, bytes: Vec<u8>) -> Result<(), HemvistError> {
        self.put_key(&name.key(), bytes).await
    }

    pub async fn put_key(&self, name: &str, bytes: Vec<u8>) -> Result<(), HemvistError> {
        self.upload(name, PutPayload::from(Bytes::from(bytes)), PutMode::Create)
            .await
    }

    /// Creates an object from its parts, sent in order as one body (no copy joins them).
    pub async fn put_parts(
        &self,
        name: &ObjectName,
        parts: Vec<Vec<u8>>,
    ) -> Result<(), HemvistError> {
        let payload: PutPayload = parts.into_iter().map(Bytes::from).collect();
        self.upload(&name.key(), payload, PutMode::Create).await
    }

    /// Writes an object over the one its key holds: only a pack being scrubbed, with
    /// [`Uploader::pack_lock`] held since the pack was read.
    pub async fn overwrite_key(&self, name: &str, bytes: Vec<u8>) -> Result<(), HemvistError> {
        self.upload(
            name,
            PutPayload::from(Bytes::from(bytes)),
            PutMode::Overwrite,
        )
        .await
    }

    async fn upload(
        &self,
        name: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<(), HemvistError> {
        let key = ObjectPath::from(name);
        let len = payload.content_length() as u64;
        let mut delay = Duration::from_millis(100);
        let limit = self.timeout + Duration::from_secs(len / (1024 * 1024));
        loop {
            let opts = PutOptions {
                mode: mode.clone(),
                ..Default::default()
            };
            let attempt = self.store.put_opts(&key, payload.clone(), opts);
            let answer = match tokio::time::timeout(limit, attempt).await {
                Ok(answer) => answer,
                Err(_) => Err(object_store::Error::Generic {
                    store: "backup",
                    source: format!("no answer within {} ms", limit.as_millis()).into(),
                }),
            };
            match answer {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
                    self.metrics.puts.fetch_add(1, Ordering::Relaxed);
                    self.metrics.put_bytes.fetch_add(len, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.put_failures.fetch_add(1, Ordering::Relaxed);
                    if delay > Duration::from_secs(8) {
                        return Err(HemvistError::unavailable(format!(
                            "backup: upload of {name} failed: {e}"
                        )));
                    }
                    tracing::warn!(key = %name, error = %e, "backup upload failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}
