//! The sign-in form's token: issued by this process, bound to one org, valid for a while and
//! used once. `hex(nonce ‖ expiry ‖ mac)`, the MAC an HMAC-SHA-256 under a key drawn at start;
//! nobody else can make one, so an equal cookie and field prove nothing unless the server made
//! them. Used nonces are kept until they expire, at most `capacity` of them.

use std::collections::HashMap;
use std::sync::Mutex;

use hemvist_proto::{random, HemvistError, OrgId};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const NONCE: usize = 16;
const TAG: usize = 16;
const LEN: usize = NONCE + 8 + TAG;

pub struct FormTokens {
    key: [u8; 32],
    ttl_ms: i64,
    capacity: usize,
    used: Mutex<HashMap<[u8; NONCE], i64>>,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not one of ours, of another org, or expired.
    Invalid,
    /// Ours, but already used.
    Used,
    /// Too many live tokens used to remember another; retrying later can help.
    Full,
}

/// A token that checked out, not yet used.
#[derive(Debug)]
pub struct Valid {
    nonce: [u8; NONCE],
    expires_ms: i64,
}

impl FormTokens {
    pub fn new(ttl_ms: i64, capacity: usize) -> Result<Self, HemvistError> {
        let mut key = [0u8; 32];
        random::fill(&mut key)?;
        Ok(FormTokens {
            key,
            ttl_ms,
            capacity,
            used: Mutex::new(HashMap::new()),
        })
    }

    fn mac(&self, org: &OrgId, body: &[u8]) -> Hmac<Sha256> {
        // A key of any length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"hemvist sign-in form\0");
        mac.update(org.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(body);
        mac
    }

    pub fn issue(&self, org: &OrgId, now_ms: i64) -> Result<String, HemvistError> {
        let mut token = [0u8; LEN];
        random::fill(&mut token[..NONCE])?;
        token[NONCE..NONCE + 8].copy_from_slice(&(now_ms + self.ttl_ms).to_be_bytes());
        let tag = self.mac(org, &token[..NONCE + 8]).finalize().into_bytes();
        token[NONCE + 8..].copy_from_slice(&tag[..TAG]);
        Ok(hex::encode(token))
    }

    /// Whether `token` is one this process issued for `org` that has not expired.
    pub fn check(&self, org: &OrgId, token: &str, now_ms: i64) -> Result<Valid, Refused> {
        let bytes = hex::decode(token).map_err(|_| Refused::Invalid)?;
        let bytes: [u8; LEN] = bytes.try_into().map_err(|_| Refused::Invalid)?;
        self.mac(org, &bytes[..NONCE + 8])
            .verify_truncated_left(&bytes[NONCE + 8..])
            .map_err(|_| Refused::Invalid)?;
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&bytes[NONCE..NONCE + 8]);
        let expires_ms = i64::from_be_bytes(expiry);
        if expires_ms <= now_ms {
            return Err(Refused::Invalid);
        }
        let mut nonce = [0u8; NONCE];
        nonce.copy_from_slice(&bytes[..NONCE]);
        Ok(Valid { nonce, expires_ms })
    }

    /// Uses a valid token up; a second use is refused.
    pub fn consume(&self, t: Valid, now_ms: i64) -> Result<(), Refused> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.contains_key(&t.nonce) {
            return Err(Refused::Used);
        }
        if used.len() >= self.capacity {
            used.retain(|_, expires| *expires > now_ms);
            if used.len() >= self.capacity {
                return Err(Refused::Full);
            }
        }
        used.insert(t.nonce, t.expires_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    #[test]
    fn a_token_works_once_for_its_org_until_it_expires() {
        let tokens = FormTokens::new(1_000, 100).unwrap();
        let t = tokens.issue(&org("a"), 0).unwrap();
        assert_eq!(
            tokens.check(&org("b"), &t, 10).unwrap_err(),
            Refused::Invalid
        );
        assert_eq!(
            tokens.check(&org("a"), &t, 1_000).unwrap_err(),
            Refused::Invalid
        );
        let valid = tokens.check(&org("a"), &t, 10).unwrap();
        tokens.consume(valid, 10).unwrap();
        let again = tokens.check(&org("a"), &t, 20).unwrap();
        assert_eq!(tokens.consume(again, 20).unwrap_err(), Refused::Used);
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let tokens = FormTokens::new(1_000, 100).unwrap();
        let t = tokens.issue(&org("a"), 0).unwrap();
        for forged in ["", "x", "t0ken", &"0".repeat(LEN * 2), &t[..t.len() - 2]] {
            assert_eq!(
                tokens.check(&org("a"), forged, 0).unwrap_err(),
                Refused::Invalid
            );
        }
        let mut altered = t.clone().into_bytes();
        altered[0] = if altered[0] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            tokens.check(&org("a"), &altered, 0).unwrap_err(),
            Refused::Invalid
        );
        let other = FormTokens::new(1_000, 100).unwrap();
        assert_eq!(other.check(&org("a"), &t, 0).unwrap_err(), Refused::Invalid);
    }

    #[test]
    fn used_tokens_are_remembered_within_bounds() {
        let tokens = FormTokens::new(100, 2).unwrap();
        let use_one = |now| {
            let t = tokens.issue(&org("a"), now).unwrap();
            let v = tokens.check(&org("a"), &t, now).unwrap();
            tokens.consume(v, now)
        };
        use_one(0).unwrap();
        use_one(0).unwrap();
        assert_eq!(use_one(50).unwrap_err(), Refused::Full);
        use_one(150).unwrap();
        assert!(tokens.used.lock().unwrap().len() <= 2);
    }
}
