//! Export tickets: the control plane asks an org's node for a GDPR export with a short-lived
//! credential both can compute from the join token they share, so no new secret is sent. A
//! ticket names the org, the format and its expiry; it is sent in a header only, never logged.

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(join_token: &str) -> Hmac<Sha256> {
    // A key of its own, derived from the join token: a ticket is never the token's own MAC.
    let mut k = <Hmac<Sha256> as Mac>::new_from_slice(join_token.as_bytes())
        .expect("HMAC takes any key length");
    k.update(b"hemvist export ticket v1");
    let key = k.finalize().into_bytes();
    <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length")
}

/// The ticket for exporting `org` as `format` until `expires_ms`.
pub fn export_ticket(join_token: &str, org: &str, format: &str, expires_ms: i64) -> String {
    let mut m = mac(join_token);
    m.update(format!("{org}\n{format}\n{expires_ms}").as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// Whether `ticket` is the one for these, compared in constant time.
pub fn export_ticket_ok(
    join_token: &str,
    org: &str,
    format: &str,
    expires_ms: i64,
    ticket: &str,
) -> bool {
    let Ok(given) = hex::decode(ticket) else {
        return false;
    };
    let mut m = mac(join_token);
    m.update(format!("{org}\n{format}\n{expires_ms}").as_bytes());
    m.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_only_what_it_names() {
        let t = export_ticket("join-token-0123456789", "acme", "sqlite", 1_000);
        assert!(export_ticket_ok(
            "join-token-0123456789",
            "acme",
            "sqlite",
            1_000,
            &t
        ));
        assert!(!export_ticket_ok(
            "join-token-0123456789",
            "acme",
            "jsonl",
            1_000,
            &t
        ));
        assert!(!export_ticket_ok(
            "join-token-0123456789",
            "acmf",
            "sqlite",
            1_000,
            &t
        ));
        assert!(!export_ticket_ok(
            "join-token-0123456789",
            "acme",
            "sqlite",
            2_000,
            &t
        ));
        assert!(!export_ticket_ok(
            "another-token-012345",
            "acme",
            "sqlite",
            1_000,
            &t
        ));
        assert!(!export_ticket_ok(
            "join-token-0123456789",
            "acme",
            "sqlite",
            1_000,
            "zz"
        ));
    }
}
