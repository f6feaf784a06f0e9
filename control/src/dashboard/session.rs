//! Operators' dashboard sessions. An operator signs in with the admin token or a named token
//! (checked as the API checks them); the session lives in this control plane's memory only,
//! keyed by the SHA-256 of a random id that only the operator's cookie holds, with its own
//! random CSRF token that every form carries. Nothing derived from the token is kept: the
//! session names its actor, as the audit log does. A restart signs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;

use hemvist_proto::HemvistError;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;

/// How long a session lasts from its sign-in.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;
/// At most this many live sessions; the oldest goes first.
const MAX_SESSIONS: usize = 1_000;

#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, as the audit log names them ("admin", "token:NAME").
    pub actor: String,
    /// What every form of this session must send back.
    pub csrf: String,
    pub expires_ms: i64,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// A new session for `actor`: the cookie's value (given once) and the session.
    pub fn create(&self, actor: &str) -> Result<(String, Session), HemvistError> {
        let cookie = hemvist_proto::random::hex(32)?;
        let session = Session {
            actor: actor.to_string(),
            csrf: hemvist_proto::random::hex(32)?,
            expires_ms: now_ms() + SESSION_MS,
        };
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        live.retain(|_, s| s.expires_ms > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live
                .iter()
                .min_by_key(|(_, s)| s.expires_ms)
                .map(|(k, _)| *k)
            {
                live.remove(&oldest);
            }
        }
        live.insert(key(&cookie), session.clone());
        Ok((cookie, session))
    }

    /// The live session the cookie names, if any.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        if cookie.len() != 64 {
            return None;
        }
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&key(cookie))
            .filter(|s| s.expires_ms > now_ms())
            .cloned()
    }

    pub fn remove(&self, cookie: &str) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(cookie));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_alone_and_ends_when_removed() {
        let sessions = Sessions::default();
        let (cookie, session) = sessions.create("token:ops").unwrap();
        assert_eq!(cookie.len(), 64);
        assert_ne!(cookie, session.csrf);
        assert_eq!(sessions.get(&cookie).unwrap().actor, "token:ops");
        assert!(sessions.get(&session.csrf).is_none());
        assert!(sessions.get("short").is_none());
        sessions.remove(&cookie);
        assert!(sessions.get(&cookie).is_none());
    }
}
