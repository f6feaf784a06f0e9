//! Randomness from the operating system, for everything that must not be guessed: data keys,
//! session tokens, CSRF tokens, password salts, nonce prefixes, generated passwords.

use crate::HemvistError;

/// Fills `buf` from the operating system's generator (`getrandom(2)` on Linux).
pub fn fill(buf: &mut [u8]) -> Result<(), HemvistError> {
    getrandom::fill(buf).map_err(|e| HemvistError::internal(format!("read OS randomness: {e}")))
}

/// `bytes` random bytes, as lowercase hex.
pub fn hex(bytes: usize) -> Result<String, HemvistError> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf)?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_as_long_as_asked_and_differs_each_time() {
        let (a, b) = (super::hex(16).unwrap(), super::hex(16).unwrap());
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
