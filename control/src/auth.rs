//! Shared-secret checks: a presented token is compared in time independent of where it differs,
//! so timing tells an attacker nothing about how close a guess was.

/// Compares secrets in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
