//! The `leader` row: which control replica leads, as a lease with a fencing token. Replicas
//! on one PostgreSQL claim it; the one holding it runs the reconciler and the operations, and
//! every write it makes checks, in its own transaction, that the token is still its own and
//! the lease still live (`sql::Conn::fence`), so a deposed leader's late write fails.
//!
//! Keeps true: the token grows by one whenever the holder changes, never otherwise; a lease is
//! measured on the database's clock, so the replicas' clocks do not matter; a holder is one
//! process (its id is new at every start), so a restarted replica waits out its predecessor's
//! lease like anyone else.

use serde::Serialize;

use super::db::Store;
use super::error::Result;
use super::sql::{params, Conn, Params};

/// The lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderLease {
    pub holder: String,
    pub token: i64,
    pub expires_ms: i64,
    /// The holder's admin API and gRPC addresses, as it advertises them.
    pub api_url: String,
    pub grpc_url: String,
    /// The database's clock when this was read.
    pub now_ms: i64,
}

impl LeaderLease {
    pub fn live(&self) -> bool {
        !self.holder.is_empty() && self.expires_ms > self.now_ms
    }
}

impl Store {
    /// Takes the lease if it is free or has run out, or renews it if `held` (the token this
    /// holder got) is still its own; answers the lease as it stands after.
    pub fn claim_leadership(
        &self,
        holder: &str,
        held: Option<i64>,
        ttl_ms: i64,
        api_url: &str,
        grpc_url: &str,
    ) -> Result<LeaderLease> {
        let conn = self.lock();
        let now = conn.now_sql();
        conn.execute_unfenced(
            &format!(
                "UPDATE leader SET
                   token = CASE WHEN holder = ?1 AND token = ?2 THEN token ELSE token + 1 END,
                   holder = ?1, expires_ms = {now} + ?3, api_url = ?4, grpc_url = ?5
                 WHERE one = 1 AND ((holder = ?1 AND token = ?2) OR expires_ms < {now})"
            ),
            params![holder, held.unwrap_or(-1), ttl_ms, api_url, grpc_url].values()?,
        )?;
        read(&conn)
    }

    /// The lease as it stands.
    pub fn leader(&self) -> Result<LeaderLease> {
        read(&self.lock())
    }

    /// Gives the lease up at once (a replica stopping), if it is still this holder's.
    pub fn resign_leadership(&self, holder: &str, token: i64) -> Result<()> {
        let conn = self.lock();
        conn.execute_unfenced(
            "UPDATE leader SET expires_ms = 0 WHERE one = 1 AND holder = ?1 AND token = ?2",
            params![holder, token].values()?,
        )?;
        Ok(())
    }

    /// From now on every write of this store checks that `token` still holds the lease.
    pub fn fence_with(&self, token: i64) {
        self.lock().fence(Some(token));
    }
}

fn read(conn: &Conn) -> Result<LeaderLease> {
    let now = conn.now_sql();
    Ok(conn.query_row(
        &format!(
            "SELECT holder, token, expires_ms, api_url, grpc_url, {now} FROM leader WHERE one = 1"
        ),
        [],
        |r| {
            Ok(LeaderLease {
                holder: r.get(0)?,
                token: r.get(1)?,
                expires_ms: r.get(2)?,
                api_url: r.get(3)?,
                grpc_url: r.get(4)?,
                now_ms: r.get(5)?,
            })
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::super::db::temp_store;

    #[test]
    fn one_holder_at_a_time_and_the_token_grows_with_each_new_one() {
        let (store, _) = temp_store();
        let a = store
            .claim_leadership("a", None, 60_000, "http://a", "http://a:1")
            .unwrap();
        assert_eq!((a.holder.as_str(), a.token), ("a", 1));
        assert!(a.live());
        // b cannot take a live lease; a renews it under the same token.
        let b = store
            .claim_leadership("b", None, 60_000, "http://b", "http://b:1")
            .unwrap();
        assert_eq!((b.holder.as_str(), b.token), ("a", 1));
        let a2 = store
            .claim_leadership("a", Some(1), 60_000, "http://a", "http://a:1")
            .unwrap();
        assert_eq!((a2.holder.as_str(), a2.token), ("a", 1));
        // Once it runs out, b takes it under a new token, and a's renewal no longer holds.
        store.resign_leadership("a", 1).unwrap();
        let b = store
            .claim_leadership("b", None, 60_000, "http://b", "http://b:1")
            .unwrap();
        assert_eq!(
            (b.holder.as_str(), b.token, b.api_url.as_str()),
            ("b", 2, "http://b")
        );
        let a3 = store
            .claim_leadership("a", Some(1), 60_000, "http://a", "http://a:1")
            .unwrap();
        assert_eq!((a3.holder.as_str(), a3.token), ("b", 2));
    }

    #[test]
    fn a_fenced_write_fails_once_another_holder_has_the_lease() {
        let (store, _) = temp_store();
        let a = store.claim_leadership("a", None, 60_000, "", "").unwrap();
        store.fence_with(a.token);
        store
            .audit("a", "test.write", None, &serde_json::json!({}))
            .unwrap();
        // Another replica (here: the same database) takes over.
        store.resign_leadership("a", a.token).unwrap();
        store.claim_leadership("b", None, 60_000, "", "").unwrap();
        let late = store.audit("a", "test.late", None, &serde_json::json!({}));
        assert!(
            matches!(late, Err(super::super::StoreError::Fenced(_))),
            "a deposed leader's write must fail: {late:?}"
        );
        assert!(store.audit_of_action("test.late").unwrap().is_empty());
    }
}
