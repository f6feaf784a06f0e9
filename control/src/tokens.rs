//! Who may use the admin API: the bootstrap token from the configuration (actor `config`) and
//! named tokens made through the API, each revocable. Keeps true: a token is shown once, when it
//! is made, and never stored (only its SHA-256); a revoked token opens nothing; every request is
//! attributed to the token's name, which is what the audit log records as the actor.

use hemvist_proto::{HemvistError, NodeId};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::plane::Plane;
use crate::store::TokenRecord;

/// The actor of the configuration's bootstrap token.
pub const CONFIG_ACTOR: &str = "config";

/// A token just made: the only time it is ever shown.
#[derive(Serialize)]
pub struct NewToken {
    pub name: String,
    pub token: String,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Plane {
    /// The actor a presented bearer token speaks for, if any.
    pub fn authenticate(&self, presented: &str) -> Result<Option<String>, HemvistError> {
        if presented.is_empty() {
            return Ok(None);
        }
        if crate::auth::tokens_equal(presented, &self.config.admin_token) {
            return Ok(Some(CONFIG_ACTOR.to_string()));
        }
        if !presented.starts_with("hvt_") || presented.len() > 128 {
            return Ok(None);
        }
        Ok(self.store.live_token(&digest(presented))?.map(|t| t.name))
    }

    /// Whether `actor`, as [`Plane::authenticate`] named it at a sign-in, may still act: the
    /// configured admin token always, a named token until it is revoked (a dashboard session
    /// ends with its token).
    pub fn actor_still_valid(&self, actor: &str) -> Result<bool, HemvistError> {
        if actor == CONFIG_ACTOR {
            return Ok(true);
        }
        Ok(self
            .store
            .tokens()?
            .iter()
            .any(|t| t.name == actor && t.revoked_ms.is_none()))
    }

    /// A new named token; audited with who made it.
    pub fn create_token(&self, name: &str, actor: &str) -> Result<NewToken, HemvistError> {
        // Token names are shaped like ids so they are safe in a log line and an audit entry.
        let name = NodeId::parse(name)
            .map_err(|e| HemvistError::invalid(e.to_string().replace("node id", "token name")))?
            .to_string();
        if name == CONFIG_ACTOR {
            return Err(HemvistError::invalid(
                "the name config is the bootstrap token's",
            ));
        }
        if self.store.tokens()?.iter().any(|t| t.name == name) {
            return Err(HemvistError::conflict(format!(
                "a token named {name} exists already (names are not reused, so the audit log \
                 stays unambiguous)"
            )));
        }
        let token = format!("hvt_{}", hemvist_proto::random::hex(16)?);
        self.store
            .create_token(&name, &digest(&token), actor, crate::clock::now_ms())?;
        self.store.audit(
            actor,
            "token.created",
            None,
            &serde_json::json!({ "name": name }),
        )?;
        Ok(NewToken { name, token })
    }

    pub fn list_tokens(&self) -> Result<Vec<TokenRecord>, HemvistError> {
        Ok(self.store.tokens()?)
    }

    pub fn revoke_token(&self, name: &str, actor: &str) -> Result<TokenRecord, HemvistError> {
        let revoked = self.store.revoke_token(name, crate::clock::now_ms())?;
        let token = self
            .store
            .tokens()?
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| HemvistError::not_found(format!("no token named {name}")))?;
        if revoked {
            self.store.audit(
                actor,
                "token.revoked",
                None,
                &serde_json::json!({ "name": name }),
            )?;
        }
        Ok(token)
    }
}
