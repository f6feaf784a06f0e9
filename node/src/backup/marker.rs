//! The system marker: one object, `hemvist-system.json`, at the root of a region's backup store,
//! naming the hemvist system (its control plane's store) whose backups it holds. Nodes create it
//! when they first learn the system's id and refuse to back up into a store that names another
//! system; the operator's restore compares it with the control plane it asks for the key. So a
//! store and a control plane of two systems are never mixed silently.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

pub const MARKER_KEY: &str = "hemvist-system.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemMarker {
    pub system_id: String,
    /// Who created it, for people reading the bucket.
    pub created_by: String,
    pub created_ms: i64,
}

/// What a store says about the system it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The store names this system (now, or already did).
    Ours,
    /// The store names another system.
    Foreign(String),
}

/// The store's marker, if it has one.
pub async fn read(store: &dyn ObjectStore) -> anyhow::Result<Option<SystemMarker>> {
    match store.get(&ObjectPath::from(MARKER_KEY)).await {
        Ok(got) => {
            let bytes = got.bytes().await?;
            Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{MARKER_KEY} in this store does not parse: {e}")
            })?))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes the store name `system_id` if it names no system yet (a conditional create, so two
/// nodes racing agree), and says whose it is.
pub async fn claim(
    store: &dyn ObjectStore,
    system_id: &str,
    created_by: &str,
) -> anyhow::Result<Claim> {
    if let Some(m) = read(store).await? {
        return Ok(judge(m, system_id));
    }
    let marker = SystemMarker {
        system_id: system_id.to_string(),
        created_by: created_by.to_string(),
        created_ms: crate::clock::now_ms(),
    };
    let body = PutPayload::from(Bytes::from(serde_json::to_vec_pretty(&marker)?));
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(&ObjectPath::from(MARKER_KEY), body, opts)
        .await
    {
        Ok(_) => Ok(Claim::Ours),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let m = read(store)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{MARKER_KEY} exists and vanished"))?;
            Ok(judge(m, system_id))
        }
        Err(e) => Err(e.into()),
    }
}

fn judge(m: SystemMarker, system_id: &str) -> Claim {
    if m.system_id == system_id {
        Claim::Ours
    } else {
        Claim::Foreign(m.system_id)
    }
}
