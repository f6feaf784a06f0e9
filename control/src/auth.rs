//! Shared-secret checks: a presented token is compared in time independent of where it differs,
//! so timing tells an attacker nothing about how close a guess was.

use subtle::ConstantTimeEq;

/// Compares secrets in time independent of where they differ (only a length mismatch returns
/// early, and the length of a token is no secret).
pub fn tokens_equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(super::tokens_equal("s3cret-token", "s3cret-token"));
        assert!(!super::tokens_equal("s3cret-token", "s3cret-tokem"));
        assert!(!super::tokens_equal("s3cret-token", "s3cret-toke"));
        assert!(!super::tokens_equal("", "s3cret-token"));
    }
}
