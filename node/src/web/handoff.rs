//! The session hand-off: how a signed-in user follows their org to its new home without signing
//! in again, although the browser keeps a cookie per host.
//!
//! The old home, sending such a user on (see [`super::moved`]), puts `hv_handoff=TOKEN` in the
//! address; TOKEN is the session token sealed (XChaCha20-Poly1305) under a key derived from the
//! org's data key, which only the nodes that host or hosted the org and the control plane hold,
//! with the org bound as associated data. Sealed, not only signed: the session token inside is a
//! bearer secret and must not be readable in an address bar, a history or a log. The new home
//! opens it with its own copy of the key and keeps it true that a token:
//! - is refused once expired ([`TTL_MS`] after it was made; one claiming to live longer than that
//!   plus [`SKEW_MS`] is refused too, so no clock can mint a long-lived one);
//! - is refused for another org (associated data) and if any byte was changed (the tag);
//! - is taken once: used token ids are remembered until they expire, at most `capacity` of them;
//!   when that many live ones are remembered, more are refused (the user signs in again) rather
//!   than memory growing.
//!
//! A token grants nothing by itself: the new home still checks the session it carries against
//! the org's own `sessions` table, the one authority after a move.
//!
//! The old home may need the key after it dropped its copy of the org (and with it the data key):
//! most users of a moved org come back after the move is over. So the derived key of an org
//! served here to a signed-in user is remembered, in memory only, for [`RETAIN_MS`] after that
//! last happened; never the data key itself (the derived key cannot open a backup).
//!
//! Here too, so that every web module may name them without a loop: the address's parameters
//! and the marks a moved org's request or answer carries ([`MovedAway`], [`HandedOff`]).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use axum::http::Uri;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use hemvist_proto::{random, DataKey, HemvistError, OrgId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The query parameter that carries a token.
pub const PARAM: &str = "hv_handoff";
/// The query parameter that tells the new home a user came from the old one without a token.
pub const MOVED_PARAM: &str = "hv_moved";
/// How long a token lives: long enough for a browser to follow a redirect on a slow link.
pub const TTL_MS: i64 = 30_000;
/// How far two nodes' clocks may disagree and a token still be taken.
pub const SKEW_MS: i64 = 5_000;
/// How long after an org was last served here its hand-off key is kept.
pub const RETAIN_MS: i64 = 60 * 60 * 1000;

const NONCE: usize = 24;
const TAG: usize = 16;
const ID: usize = 16;
/// No token is longer than this (hex digits); a longer parameter is refused before decoding.
const MAX_HEX: usize = 4096;
/// The longest session token or origin a token carries (a session token is under 200 bytes).
const MAX_FIELD: usize = 1024;
const AAD_LABEL: &[u8] = b"hemvist session hand-off v1\0";

/// The key hand-off tokens of one org are sealed with: SHA-256 of a fixed label and the org's
/// data key, so a token never uses the key that seals the org's backups.
#[derive(Clone)]
pub struct HandoffKey(DataKey);

impl std::fmt::Debug for HandoffKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoffKey(..)")
    }
}

impl HandoffKey {
    pub fn derive(data_key: &DataKey) -> HandoffKey {
        let mut h = Sha256::new();
        h.update(b"hemvist session hand-off v1");
        h.update(data_key.0);
        HandoffKey(DataKey(h.finalize().into()))
    }
}

/// What a token holds, sealed.
#[derive(Serialize, Deserialize)]
struct Plain {
    /// Random; what "used once" remembers.
    id: String,
    expires_ms: i64,
    /// The public URL of the node that made it: a form it sends on comes with that `Origin`.
    from: String,
    session: String,
}

/// A token that opened and is in date; not yet taken ([`Handoffs::take`]).
#[derive(Debug)]
pub struct Opened {
    pub session: String,
    pub from: String,
    id: [u8; ID],
    expires_ms: i64,
}

/// Why a token was refused. None of them tells a client more than "no".
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not hex, too short or too long.
    Malformed,
    /// Not sealed with this org's key for this org, or altered.
    Forged,
    Expired,
    /// Already taken once.
    Used,
    /// Too many live tokens taken to remember another.
    Full,
}

impl Refused {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Forged => "not sealed for this org",
            Refused::Expired => "expired",
            Refused::Used => "already used",
            Refused::Full => "too many hand-offs to remember",
        }
    }
}

fn aad(org: &OrgId) -> Vec<u8> {
    [AAD_LABEL, org.as_str().as_bytes()].concat()
}

/// A token for `session` of `org`, made by the node at `from`, valid for [`TTL_MS`].
pub fn seal(
    key: &HandoffKey,
    org: &OrgId,
    session: &str,
    from: &str,
    now_ms: i64,
) -> Result<String, HemvistError> {
    if session.len() > MAX_FIELD || from.len() > MAX_FIELD {
        return Err(HemvistError::invalid("too long to hand off"));
    }
    let plain = Plain {
        id: random::hex(ID)?,
        expires_ms: now_ms + TTL_MS,
        from: from.to_string(),
        session: session.to_string(),
    };
    let msg = serde_json::to_vec(&plain)
        .map_err(|e| HemvistError::internal(format!("encode a hand-off: {e}")))?;
    // A random 24-byte nonce: XChaCha's nonces are long enough that random ones never repeat.
    let mut nonce = [0u8; NONCE];
    random::fill(&mut nonce)?;
    let cipher = XChaCha20Poly1305::new((&key.0 .0).into());
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &msg,
                aad: &aad(org),
            },
        )
        .map_err(|_| HemvistError::internal("seal a hand-off"))?;
    Ok(hex::encode([&nonce[..], &sealed].concat()))
}

/// Opens a token for `org` and checks its dates; whether it was used is [`Handoffs::take`]'s.
pub fn open(key: &HandoffKey, org: &OrgId, token: &str, now_ms: i64) -> Result<Opened, Refused> {
    if token.len() > MAX_HEX {
        return Err(Refused::Malformed);
    }
    let bytes = hex::decode(token).map_err(|_| Refused::Malformed)?;
    if bytes.len() < NONCE + TAG {
        return Err(Refused::Malformed);
    }
    let cipher = XChaCha20Poly1305::new((&key.0 .0).into());
    let msg = cipher
        .decrypt(
            bytes[..NONCE].into(),
            Payload {
                msg: &bytes[NONCE..],
                aad: &aad(org),
            },
        )
        .map_err(|_| Refused::Forged)?;
    // Sealed by a holder of the key, so well-formed unless that holder is broken; still checked.
    let plain: Plain = serde_json::from_slice(&msg).map_err(|_| Refused::Forged)?;
    let mut id = [0u8; ID];
    hex::decode_to_slice(&plain.id, &mut id).map_err(|_| Refused::Forged)?;
    let of_org = crate::users::token_org(&plain.session) == Some(org.as_str());
    if !of_org || plain.session.len() > MAX_FIELD || plain.from.len() > MAX_FIELD {
        return Err(Refused::Forged);
    }
    if plain.expires_ms <= now_ms - SKEW_MS || plain.expires_ms > now_ms + TTL_MS + SKEW_MS {
        return Err(Refused::Expired);
    }
    Ok(Opened {
        session: plain.session,
        from: plain.from,
        id,
        expires_ms: plain.expires_ms,
    })
}

struct Retained {
    key: HandoffKey,
    last_served_ms: i64,
}

/// What a node remembers of hand-offs: the tokens it took, and the keys of orgs it served.
pub struct Handoffs {
    capacity: usize,
    used: Mutex<HashMap<[u8; ID], i64>>,
    retained: Mutex<lru::LruCache<OrgId, Retained>>,
}

impl Default for Handoffs {
    fn default() -> Self {
        Handoffs::new(100_000, 10_000)
    }
}

impl Handoffs {
    /// At most `used` live tokens remembered as taken, and the keys of `orgs` orgs.
    pub fn new(used: usize, orgs: usize) -> Self {
        Handoffs {
            capacity: used,
            used: Mutex::new(HashMap::new()),
            retained: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(orgs).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Takes an opened token; a second time it is refused.
    pub fn take(&self, t: &Opened, now_ms: i64) -> Result<(), Refused> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(&t.id) {
            return Err(Refused::Used);
        }
        if used.len() >= self.capacity {
            // Kept until the latest moment `open` would still take it.
            used.retain(|_, expires| *expires > now_ms - SKEW_MS);
            if used.len() >= self.capacity {
                return Err(Refused::Full);
            }
        }
        used.insert(t.id, t.expires_ms);
        Ok(())
    }

    /// `org` was served here to a signed-in user, with this data key (`None`: the key was
    /// revoked, or has not come yet): keep (or forget) its hand-off key.
    pub fn served(&self, org: &OrgId, data_key: Option<&DataKey>, now_ms: i64) {
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        match (data_key, retained.get_mut(org)) {
            (None, _) => {
                retained.pop(org);
            }
            (Some(_), Some(r)) => r.last_served_ms = now_ms,
            (Some(k), None) => {
                retained.put(
                    org.clone(),
                    Retained {
                        key: HandoffKey::derive(k),
                        last_served_ms: now_ms,
                    },
                );
            }
        }
    }

    /// The hand-off key of an org served here within [`RETAIN_MS`].
    pub fn retained(&self, org: &OrgId, now_ms: i64) -> Option<HandoffKey> {
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        match retained.peek(org) {
            Some(r) if now_ms - r.last_served_ms <= RETAIN_MS => Some(r.key.clone()),
            Some(_) => {
                retained.pop(org);
                None
            }
            None => None,
        }
    }
}

/// Set on an answer by `OrgCtx`: the org lives on the node at `node_url`.
#[derive(Clone)]
pub(super) struct MovedAway {
    pub node_url: String,
}

/// Set on a request whose session came in a hand-off made by the node at `from` (its public
/// URL): a form it sent on comes with that node's `Origin`.
#[derive(Clone)]
pub(super) struct HandedOff {
    pub from: String,
}

/// The value of `name` in a raw query string (no decoding: our parameters are plain).
pub(super) fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `path_and_query` without the parameters `names`.
pub(super) fn without(path_and_query: &str, names: &[&str]) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter(|kv| !names.contains(&kv.split('=').next().unwrap_or_default()))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// `path_and_query` with `name=value` added.
pub(super) fn with(path_and_query: &str, name: &str, value: &str) -> String {
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}{name}={value}")
}

/// Whether a request's address says it came from an old home that could not hand it off.
pub(super) fn came_moved(uri: &Uri) -> bool {
    uri.query()
        .and_then(|q| param(q, MOVED_PARAM))
        .is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "http://127.0.0.1:7710";

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    fn key(b: u8) -> HandoffKey {
        HandoffKey::derive(&DataKey([b; 32]))
    }

    #[test]
    fn a_token_opens_for_its_org_with_its_key_until_it_expires() {
        let (k, acme) = (key(1), org("acme"));
        let t = seal(&k, &acme, "acme.0123abcd", FROM, 1_000).unwrap();
        assert!(
            !t.contains("0123abcd"),
            "the session is not readable in the token"
        );
        let opened = open(&k, &acme, &t, 1_000 + TTL_MS - 1).unwrap();
        assert_eq!(
            (opened.session.as_str(), opened.from.as_str()),
            ("acme.0123abcd", FROM)
        );
        // Within the clock skew allowed, and not after.
        assert!(open(&k, &acme, &t, 1_000 + TTL_MS + SKEW_MS - 1).is_ok());
        assert_eq!(
            open(&k, &acme, &t, 1_000 + TTL_MS + SKEW_MS).unwrap_err(),
            Refused::Expired
        );
        // Made by a node whose clock is far ahead: it would live too long here.
        let ahead = seal(&k, &acme, "acme.0123abcd", FROM, 1_000 + 2 * SKEW_MS).unwrap();
        assert_eq!(
            open(&k, &acme, &ahead, 1_000).unwrap_err(),
            Refused::Expired
        );
    }

    #[test]
    fn another_org_another_key_or_a_changed_byte_is_refused() {
        let (k, acme) = (key(1), org("acme"));
        let t = seal(&k, &acme, "acme.0123abcd", FROM, 0).unwrap();
        assert_eq!(open(&k, &org("other"), &t, 0).unwrap_err(), Refused::Forged);
        assert_eq!(open(&key(2), &acme, &t, 0).unwrap_err(), Refused::Forged);
        for at in [0, NONCE * 2 + 1, t.len() - 1] {
            let mut altered = t.clone().into_bytes();
            altered[at] = if altered[at] == b'0' { b'1' } else { b'0' };
            let altered = String::from_utf8(altered).unwrap();
            assert_eq!(
                open(&k, &acme, &altered, 0).unwrap_err(),
                Refused::Forged,
                "{at}"
            );
        }
        assert_eq!(
            open(&k, &acme, &t[..t.len() - 2], 0).unwrap_err(),
            Refused::Forged
        );
        // A token sealed for this org that carries another org's session is refused as well.
        let odd = seal(&k, &acme, "other.0123abcd", FROM, 0).unwrap();
        assert_eq!(open(&k, &acme, &odd, 0).unwrap_err(), Refused::Forged);
    }

    #[test]
    fn garbage_is_malformed_and_never_panics() {
        let (k, acme) = (key(1), org("acme"));
        let long = "ab".repeat(MAX_HEX);
        let short = "00".repeat(NONCE + TAG - 1);
        for garbage in ["", "x", "zz", "abc", "%00", "\u{e5}\u{e5}", &short, &long] {
            assert_eq!(
                open(&k, &acme, garbage, 0).unwrap_err(),
                Refused::Malformed,
                "{garbage:?}"
            );
        }
        let just_long_enough = "00".repeat(NONCE + TAG);
        assert_eq!(
            open(&k, &acme, &just_long_enough, 0).unwrap_err(),
            Refused::Forged
        );
    }

    #[test]
    fn a_token_is_taken_once_and_memory_stays_bounded() {
        let (k, acme) = (key(1), org("acme"));
        let handoffs = Handoffs::new(2, 10);
        let t = seal(&k, &acme, "acme.1", FROM, 0).unwrap();
        handoffs.take(&open(&k, &acme, &t, 0).unwrap(), 0).unwrap();
        let again = open(&k, &acme, &t, 10).unwrap();
        assert_eq!(handoffs.take(&again, 10).unwrap_err(), Refused::Used);

        let take_new = |now| {
            let t = seal(&k, &acme, "acme.1", FROM, now).unwrap();
            handoffs.take(&open(&k, &acme, &t, now).unwrap(), now)
        };
        take_new(0).unwrap();
        assert_eq!(take_new(10).unwrap_err(), Refused::Full);
        // Once the first two can no longer be opened, they are forgotten.
        take_new(TTL_MS + SKEW_MS + 1).unwrap();
        assert!(handoffs.used.lock().unwrap().len() <= 2);
    }

    #[test]
    fn an_orgs_key_is_kept_for_a_while_after_it_was_last_served() {
        let handoffs = Handoffs::new(10, 2);
        let (acme, data_key) = (org("acme"), DataKey([7; 32]));
        assert!(handoffs.retained(&acme, 0).is_none());
        handoffs.served(&acme, Some(&data_key), 0);
        let kept = handoffs.retained(&acme, RETAIN_MS).expect("kept");
        let t = seal(&kept, &acme, "acme.1", FROM, 0).unwrap();
        assert!(open(&HandoffKey::derive(&data_key), &acme, &t, 0).is_ok());
        assert!(handoffs.retained(&acme, RETAIN_MS + 1).is_none());
        assert!(
            handoffs.retained(&acme, 0).is_none(),
            "forgotten once stale"
        );

        // Served again refreshes it; a revoked key is forgotten at once.
        handoffs.served(&acme, Some(&data_key), 0);
        handoffs.served(&acme, Some(&data_key), RETAIN_MS);
        assert!(handoffs.retained(&acme, 2 * RETAIN_MS).is_some());
        handoffs.served(&acme, None, 2 * RETAIN_MS);
        assert!(handoffs.retained(&acme, 2 * RETAIN_MS).is_none());

        // Bounded: the least recently served org goes first.
        for o in ["a", "b", "c"] {
            handoffs.served(&org(o), Some(&data_key), 0);
        }
        assert!(handoffs.retained(&org("a"), 0).is_none());
        assert!(handoffs.retained(&org("c"), 0).is_some());
        assert_eq!(format!("{kept:?}"), "HandoffKey(..)");
    }

    #[test]
    fn parameters_come_and_go_and_the_rest_stays() {
        assert_eq!(param("q=a&hv_handoff=ab12&page=2", PARAM), Some("ab12"));
        assert_eq!(param("q=a&hv_handoffx=1", PARAM), None);
        assert_eq!(param("hv_moved", MOVED_PARAM), Some(""));
        assert_eq!(
            without("/o/a/?q=%C3%85&hv_handoff=1&page=2", &[PARAM]),
            "/o/a/?q=%C3%85&page=2"
        );
        assert_eq!(without("/o/a/?hv_handoff=1", &[PARAM]), "/o/a/");
        assert_eq!(
            without("/o/a/?hv_moved=1&hv_handoff=1", &[PARAM, MOVED_PARAM]),
            "/o/a/"
        );
        assert_eq!(without("/o/a/", &[PARAM]), "/o/a/");
        assert_eq!(with("/o/a/", MOVED_PARAM, "1"), "/o/a/?hv_moved=1");
        assert_eq!(with("/o/a/?q=x", MOVED_PARAM, "1"), "/o/a/?q=x&hv_moved=1");
        assert!(came_moved(
            &"/o/a/signin?next=%2Fo%2Fa%2F&hv_moved=1".parse().unwrap()
        ));
        assert!(!came_moved(&"/o/a/signin?hv_moved=0".parse().unwrap()));
    }
}
