//! What stands between the internet and the password check: the form's signed one-use token
//! ([`FormTokens`]), failure budgets per account and per client address ([`Throttle`]), and the
//! fixed pool that does the hashing ([`PasswordChecker`]). Every refusal is cheap, counted in
//! /metrics, and logged with the org, the client address and a short tag of the account (keyed,
//! so it cannot be reversed to the email); never with the password.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use hemvist_proto::{random, HemvistError, OrgId};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::throttle::Throttle;
use super::tokens::FormTokens;
use crate::users::PasswordChecker;

/// Sign-in limits. The defaults hold a node to two concurrent password checks (about 40 MiB with
/// the control plane's argon2 parameters) and an account to 100 wrong guesses a minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigninLimits {
    /// Password checks running at once, each on its own thread with its own memory.
    pub hash_workers: usize,
    /// Checks waiting for a worker; beyond them a sign-in is answered 429.
    pub hash_queue: usize,
    /// Failed sign-ins per account (org and email) in a window.
    pub account_failures: u32,
    /// Failed sign-ins per client address (IPv6: per /64) in a window.
    pub address_failures: u32,
    pub window_secs: u64,
    /// How long a sign-in form stays valid.
    pub form_ttl_secs: u64,
}

impl Default for SigninLimits {
    fn default() -> Self {
        SigninLimits {
            hash_workers: 2,
            hash_queue: 8,
            account_failures: 100,
            address_failures: 300,
            window_secs: 60,
            form_ttl_secs: 3600,
        }
    }
}

/// Accounts and addresses remembered by the failure budgets; the least recently seen go first.
const REMEMBERED: usize = 65_536;
/// Used sign-in forms remembered until they expire.
const USED_FORMS: usize = 200_000;

pub struct Signin {
    pub form_ttl_secs: u64,
    pub checker: PasswordChecker,
    pub tokens: FormTokens,
    pub accounts: Throttle<[u8; 16]>,
    pub addresses: Throttle<[u8; 16]>,
    tag_key: [u8; 32],
    busy_logged_ms: AtomicI64,
}

impl Signin {
    pub fn new(limits: &SigninLimits) -> Result<Self, HemvistError> {
        let window = Duration::from_secs(limits.window_secs.max(1));
        let mut tag_key = [0u8; 32];
        random::fill(&mut tag_key)?;
        Ok(Signin {
            form_ttl_secs: limits.form_ttl_secs,
            checker: PasswordChecker::new(limits.hash_workers, limits.hash_queue),
            tokens: FormTokens::new(limits.form_ttl_secs as i64 * 1000, USED_FORMS)?,
            accounts: Throttle::new(limits.account_failures, window, REMEMBERED),
            addresses: Throttle::new(limits.address_failures, window, REMEMBERED),
            tag_key,
            busy_logged_ms: AtomicI64::new(0),
        })
    }

    /// The account's key for its failure budget (org and email, case and spaces aside).
    pub fn account(&self, org: &OrgId, email: &str) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.tag_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(org.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(email.trim().to_lowercase().as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        key
    }

    /// Whether a "too busy" refusal should be logged now: at most one line a second.
    pub fn log_busy_now(&self, now_ms: i64) -> bool {
        let last = self.busy_logged_ms.load(Ordering::Relaxed);
        now_ms - last >= 1000
            && self
                .busy_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A short tag of an account for logs: the same account, the same tag, in this process.
pub fn tag(account: &[u8; 16]) -> String {
    hex::encode(&account[..6])
}

/// A client address's key for its failure budget; an IPv6 client owns its whole /64.
pub fn address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            if v6.to_ipv4_mapped().is_none() {
                o[8..].fill(0);
            }
            o
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_prefix_and_an_account_ignores_case() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address(a), address(b));
        assert_ne!(address(a), address(c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v4b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_ne!(address(v4), address(v4b));

        let s = Signin::new(&SigninLimits::default()).unwrap();
        let org = OrgId::parse("acme").unwrap();
        assert_eq!(
            s.account(&org, " Ada@Acme.example"),
            s.account(&org, "ada@acme.example")
        );
        assert_ne!(
            s.account(&org, "ada@acme.example"),
            s.account(&OrgId::parse("other").unwrap(), "ada@acme.example")
        );
        assert_eq!(tag(&s.account(&org, "x")).len(), 12);
    }
}
