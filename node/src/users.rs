//! An org's users and their sessions, kept in the org's own database.
//!
//! Passwords are argon2id hashes made by the control plane (plain passwords never reach a
//! node's disk or the wire between control plane and node). A session token is
//! `{org}.{64 hex}`: the org part lets any node refuse a token of another org with 403 before
//! touching a database; only the SHA-256 of the token is stored. Passwords are checked on a
//! fixed pool of threads ([`PasswordChecker`]), so no number of attempts can grow memory.
//!
//! Signing in and out needs no tenant write when the node has no room for one (storage full,
//! see `crate::disk`): the session is then kept in this node's memory only (it lasts its TTL or
//! until the node restarts, whichever comes first), and a session ended meanwhile is
//! remembered as ended, so its row cannot bring it back.

use std::sync::{mpsc, Arc, Mutex};

use argon2::password_hash::Output;
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use hemvist_proto::{random, ErrorKind, HemvistError, OrgId};
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

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

/// The user an email names in this org, with their stored hash: (id, PHC string).
pub fn find_user(
    w: &Writer,
    org: &OrgId,
    email: &str,
) -> Result<Option<(i64, String)>, HemvistError> {
    let email = email.trim().to_string();
    w.read(org, |c| {
        c.query_row(
            "SELECT id, password_hash FROM users WHERE email = ?1",
            [&email],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    })
}

/// The user `found` if `password` is theirs. An unknown email costs the same hash through the
/// same pool as a wrong password, so neither the answer nor its timing tells which it was.
pub async fn check_password(
    admitted: Admitted,
    found: Option<(i64, String)>,
    password: String,
) -> Result<Option<i64>, HemvistError> {
    // A valid hash of nothing in particular, with the control plane's parameters.
    const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$WAxe0ptXKpZvtnXJCpwXDJ0ED5kxrFaJFyVnKnrUPvs";
    let (user_id, hash) = match found {
        Some((id, hash)) => (Some(id), hash),
        None => (None, DECOY.to_string()),
    };
    let matched = admitted.verify(hash, password).await?;
    Ok(user_id.filter(|_| matched))
}

/// Opens a session for a user whose password was checked. Returns (token, csrf). With no room
/// for the write (storage full), the session lives in `sessions` only.
pub fn open_session(
    w: &Writer,
    sessions: &SessionCache,
    org: &OrgId,
    user_id: i64,
) -> Result<(String, String), HemvistError> {
    let token = format!("{org}.{}", random::hex(32)?);
    let csrf = random::hex(16)?;
    let (th, c) = (token_hash(&token), csrf.clone());
    let now = now_ms();
    let written = w.write(org, move |tx| {
        tx.execute("DELETE FROM sessions WHERE expires_ms < ?1", [now])?;
        tx.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![th, user_id, c, now, now + SESSION_TTL_MS],
        )?;
        Ok(())
    });
    match written {
        Ok(()) => {}
        Err(e) if e.kind == ErrorKind::StorageFull => {
            let (email, name): (String, String) = w.read(org, |c| {
                c.query_row(
                    "SELECT email, name FROM users WHERE id = ?1",
                    [user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })?;
            let session = Session {
                user_id,
                email,
                name,
                csrf: csrf.clone(),
            };
            sessions.put_pinned(token_hash(&token), session, now + SESSION_TTL_MS);
            tracing::warn!(%org, "storage full: a session is kept in this node's memory only");
        }
        Err(e) => return Err(e),
    }
    Ok((token, csrf))
}

/// Password checks on a fixed set of threads, each reusing one memory block for every hash.
///
/// An argon2 check holds its whole memory cost (19 MiB with the control plane's parameters)
/// while it runs. Run on a thread per request, concurrent attempts multiplied that, and glibc
/// kept each thread's arena after the thread was done. Here the memory is `workers` blocks,
/// allocated once, whatever the number of attempts; at most `workers + queue` checks are
/// admitted at once and the rest are told to come back ([`Busy`]).
pub struct PasswordChecker {
    capacity: usize,
    admission: Arc<Semaphore>,
    jobs: Option<mpsc::Sender<Job>>,
}

/// No room for another password check now; retrying in a moment can help.
#[derive(Debug)]
pub struct Busy;

/// A place among the checks admitted; the check itself is [`Admitted::verify`].
pub struct Admitted {
    permit: OwnedSemaphorePermit,
    jobs: Option<mpsc::Sender<Job>>,
}

struct Job {
    hash: String,
    password: String,
    reply: oneshot::Sender<bool>,
    _permit: OwnedSemaphorePermit,
}

/// No stored hash may ask for more memory than this (in 1 KiB blocks): 256 MiB per worker.
const MAX_BLOCKS: usize = 256 * 1024;

impl PasswordChecker {
    pub fn new(workers: usize, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("hemvist-password-{i}"))
                .spawn(move || check_passwords(&rx));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::error!(error = %e, "cannot start a password-check thread"),
            }
        }
        PasswordChecker {
            capacity: started + queue,
            admission: Arc::new(Semaphore::new(started + queue)),
            jobs: (started > 0).then_some(tx),
        }
    }

    /// Checks admitted and not yet answered (running or queued).
    pub fn admitted(&self) -> usize {
        self.capacity - self.admission.available_permits()
    }

    /// A place for one check, or [`Busy`] when every worker and queue place is taken.
    pub fn admit(&self) -> Result<Admitted, Busy> {
        let permit = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        Ok(Admitted {
            permit,
            jobs: self.jobs.clone(),
        })
    }
}

impl Admitted {
    /// Whether `password` matches the PHC string `hash`.
    pub async fn verify(self, hash: String, password: String) -> Result<bool, HemvistError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash,
            password,
            reply,
            _permit: self.permit,
        };
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok());
        if !sent {
            return Err(HemvistError::internal(
                "no password-check thread is running",
            ));
        }
        answer
            .await
            .map_err(|_| HemvistError::internal("the password check did not answer"))
    }
}

fn check_passwords(jobs: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            hash,
            password,
            reply,
            _permit: permit,
        }) = job
        else {
            return;
        };
        if reply.is_closed() {
            continue;
        }
        let matched = match verify(&mut memory, &hash, password.as_bytes()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "a stored password hash cannot be checked");
                false
            }
        };
        // The place is free before the answer arrives, so whoever got it may be let in at once.
        drop(permit);
        let _ = reply.send(matched);
    }
}

/// argon2 verification into `memory`, grown to the hash's cost once and then reused.
fn verify(memory: &mut Vec<Block>, phc: &str, password: &[u8]) -> Result<bool, String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string: {e}"))?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| e.to_string())?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
    let expected = hash.hash.ok_or("the hash has no output")?;
    let salt = hash.salt.ok_or("the hash has no salt")?;
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    let blocks = params.block_count();
    if blocks > MAX_BLOCKS {
        return Err(format!("the hash asks for {blocks} KiB, more than allowed"));
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
        .map_err(|e| e.to_string())?;
    let computed = Output::new(&out).map_err(|e| e.to_string())?;
    // Output's equality is constant-time.
    Ok(computed == expected)
}

/// Recently used sessions, so a signed-in user's requests do not each read the database.
/// Sessions are only created and ended on this node (the org's one writer), so the cache is
/// told of every change; entries still expire on their own. While the node has no room for
/// a tenant write, it also holds the sessions opened meanwhile (`pinned`: never evicted, as
/// no row stands behind them) and those ended meanwhile (`ended`: their row is still there).
pub struct SessionCache {
    entries: std::sync::Mutex<lru::LruCache<Vec<u8>, (Session, i64)>>,
    pinned: std::sync::Mutex<lru::LruCache<Vec<u8>, (Session, i64)>>,
    ended: std::sync::Mutex<lru::LruCache<Vec<u8>, i64>>,
}

/// Sessions kept in memory only (and sessions ended while their rows could not be deleted),
/// at most; beyond, the oldest go first.
const MEMORY_ONLY: usize = 100_000;

fn lru<V>(n: usize) -> std::sync::Mutex<lru::LruCache<Vec<u8>, V>> {
    std::sync::Mutex::new(lru::LruCache::new(
        std::num::NonZeroUsize::new(n).unwrap_or(std::num::NonZeroUsize::MIN),
    ))
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            entries: lru(10_000),
            pinned: lru(MEMORY_ONLY),
            ended: lru(MEMORY_ONLY),
        }
    }
}

impl SessionCache {
    fn get(&self, key: &[u8]) -> Option<Session> {
        let now = now_ms();
        for map in [&self.entries, &self.pinned] {
            let mut entries = map.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(key) {
                Some((s, expires)) if *expires > now => return Some(s.clone()),
                Some(_) => {
                    entries.pop(key);
                }
                None => {}
            }
        }
        None
    }

    fn put(&self, key: Vec<u8>, s: Session, expires: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.put(key, (s, expires));
    }

    /// A session with no row behind it: kept until it expires or the node restarts.
    fn put_pinned(&self, key: Vec<u8>, s: Session, expires: i64) {
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        pinned.put(key, (s, expires));
    }

    fn forget(&self, key: &[u8]) {
        for map in [&self.entries, &self.pinned] {
            map.lock().unwrap_or_else(|p| p.into_inner()).pop(key);
        }
    }

    /// A session ended whose row could not be deleted: refused until it would have expired.
    fn end(&self, key: Vec<u8>) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.put(key, now_ms() + SESSION_TTL_MS);
    }

    fn is_ended(&self, key: &[u8]) -> bool {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        match ended.get(key) {
            Some(until) if *until > now_ms() => true,
            Some(_) => {
                ended.pop(key);
                false
            }
            None => false,
        }
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
    if sessions.is_ended(&th) {
        return Ok(None);
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
    let key = th.clone();
    match w.write(org, move |tx| {
        tx.execute("DELETE FROM sessions WHERE token_hash = ?1", [key])?;
        Ok(())
    }) {
        Err(e) if e.kind == ErrorKind::StorageFull => {
            sessions.end(th);
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn hash(password: &str) -> String {
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn passwords_are_checked_on_the_pool_and_the_pool_is_bounded() {
        let checker = PasswordChecker::new(1, 1);
        let stored = hash("right");
        let ok = checker.admit().unwrap();
        assert!(ok.verify(stored.clone(), "right".into()).await.unwrap());
        let wrong = checker.admit().unwrap();
        assert!(!wrong.verify(stored.clone(), "wrong".into()).await.unwrap());

        let (a, b) = (checker.admit().unwrap(), checker.admit().unwrap());
        assert!(checker.admit().is_err(), "one worker and one queue place");
        assert_eq!(checker.admitted(), 2);
        drop(a);
        assert!(b.verify(stored.clone(), "right".into()).await.unwrap());
        assert_eq!(checker.admitted(), 0);

        // An unknown email is checked against the decoy, and is never a match.
        let unknown = check_password(checker.admit().unwrap(), None, "right".into());
        assert_eq!(unknown.await.unwrap(), None);
        let known = check_password(checker.admit().unwrap(), Some((7, stored)), "right".into());
        assert_eq!(known.await.unwrap(), Some(7));
    }

    #[test]
    fn one_memory_block_serves_every_check() {
        let stored = hash("pw");
        let mut memory = Vec::new();
        assert!(verify(&mut memory, &stored, b"pw").unwrap());
        let (len, at) = (memory.len(), memory.as_ptr());
        assert_eq!(len, Params::DEFAULT_M_COST as usize);
        assert!(!verify(&mut memory, &stored, b"other").unwrap());
        assert_eq!((memory.len(), memory.as_ptr()), (len, at));
        assert!(verify(&mut memory, "not a hash", b"pw").is_err());
    }
}
