//! An org's users and their sessions, kept in the org's own database.
//!
//! Passwords are argon2id hashes made by the control plane (plain passwords never reach a
//! node's disk or the wire between control plane and node). A session token is
//! `{org}.{64 hex}`: the org part lets any node refuse a token of another org with 403 before
//! touching a database; only the SHA-256 of the token is stored.

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use hemvist_proto::{random, ErrorKind, HemvistError, OrgId};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::writes::Writer;

pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The org a session token claims to belong to (unverified).
pub fn token_org(token: &str) -> Option<&str> {
    token.split_once('.').map(|(org, _)| org)
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: i64,
    pub email: String,
    pub name: String,
    pub csrf: String,
}

/// Adds a user with an already-hashed password. Idempotent for the same email and hash.
pub fn add_user(
    w: &Writer,
    org: &OrgId,
    email: &str,
    name: &str,
    password_hash: &str,
) -> Result<bool, HemvistError> {
    PasswordHash::new(password_hash)
        .map_err(|_| HemvistError::invalid("password hash is not a PHC string"))?;
    let email = email.trim().to_string();
    let name = name.trim().to_string();
    let hash = password_hash.to_string();
    w.write(org, move |tx| {
        let existing: Option<String> = tx
            .query_row(
                "SELECT password_hash FROM users WHERE email = ?1",
                [&email],
                |r| r.get(0),
            )
            .optional()?;
        match existing {
            Some(h) if h == hash => Ok(false),
            Some(_) => Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
                Some(format!("a different user {email} already exists")),
            )),
            None => {
                tx.execute(
                    "INSERT INTO users (email, name, password_hash, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    params![email, name, hash, now_ms()],
                )?;
                Ok(true)
            }
        }
    })
    .map_err(|e| {
        if e.message.contains("already exists") {
            HemvistError::conflict(e.message)
        } else {
            e
        }
    })
}

/// Checks a password and opens a session. Returns (token, csrf). The same error for an unknown
/// email and a wrong password, and a hash check either way, so neither leaks which it was.
pub fn sign_in(
    w: &Writer,
    org: &OrgId,
    email: &str,
    password: &str,
) -> Result<(String, String), HemvistError> {
    let email = email.trim().to_string();
    let found: Option<(i64, String)> = w.read(org, |c| {
        c.query_row(
            "SELECT id, password_hash FROM users WHERE email = ?1",
            [&email],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    })?;
    // A valid hash of nothing in particular, so unknown emails cost the same as known ones.
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$WAxe0ptXKpZvtnXJCpwXDJ0ED5kxrFaJFyVnKnrUPvs";
    let (user_id, hash) = found.clone().unwrap_or((0, DECOY.to_string()));
    let parsed =
        PasswordHash::new(&hash).map_err(|_| HemvistError::internal("stored hash is invalid"))?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    if !ok || found.is_none() {
        return Err(HemvistError::new(
            ErrorKind::Unauthenticated,
            "wrong email or password",
        ));
    }
    let token = format!("{org}.{}", random::hex(32)?);
    let csrf = random::hex(16)?;
    let (th, c) = (token_hash(&token), csrf.clone());
    w.write(org, move |tx| {
        let now = now_ms();
        tx.execute("DELETE FROM sessions WHERE expires_ms < ?1", [now])?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![th, user_id, c, now, now + SESSION_TTL_MS],
        )?;
        Ok(())
    })?;
    Ok((token, csrf))
}

/// Recently used sessions, so a signed-in user's requests do not each read the database.
/// Sessions are only created and ended on this node (the org's one writer), so the cache is
/// told of every change; entries still expire on their own.
pub struct SessionCache {
    entries: std::sync::Mutex<lru::LruCache<Vec<u8>, (Session, i64)>>,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(10_000).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }
}

impl SessionCache {
    fn get(&self, key: &[u8]) -> Option<Session> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((s, expires)) if *expires > now_ms() => Some(s.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: Vec<u8>, s: Session, expires: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.put(key, (s, expires));
    }

    fn forget(&self, key: &[u8]) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.pop(key);
    }
}

/// The session from memory only: no database read, so callable on an async thread.
pub fn cached_session(sessions: &SessionCache, org: &OrgId, token: &str) -> Option<Session> {
    if token_org(token) != Some(org.as_str()) || token.len() > 200 {
        return None;
    }
    sessions.get(&token_hash(token))
}

/// The live session a token stands for in this org, if any.
pub fn session(
    w: &Writer,
    sessions: &SessionCache,
    org: &OrgId,
    token: &str,
) -> Result<Option<Session>, HemvistError> {
    if token_org(token) != Some(org.as_str()) || token.len() > 200 {
        return Ok(None);
    }
    let th = token_hash(token);
    if let Some(s) = sessions.get(&th) {
        return Ok(Some(s));
    }
    let found = w.read(org, |c| {
        c.prepare_cached(
            "SELECT s.user_id, u.email, u.name, s.csrf, s.expires_ms FROM sessions s
             JOIN users u ON u.id = s.user_id WHERE s.token_hash = ?1 AND s.expires_ms > ?2",
        )?
        .query_row(params![th, now_ms()], |r| {
            Ok((
                Session {
                    user_id: r.get(0)?,
                    email: r.get(1)?,
                    name: r.get(2)?,
                    csrf: r.get(3)?,
                },
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()
    })?;
    Ok(found.map(|(s, expires)| {
        sessions.put(th, s.clone(), expires);
        s
    }))
}

pub fn sign_out(
    w: &Writer,
    sessions: &SessionCache,
    org: &OrgId,
    token: &str,
) -> Result<(), HemvistError> {
    let th = token_hash(token);
    sessions.forget(&th);
    w.write(org, move |tx| {
        tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [th])?;
        Ok(())
    })
}
