//! An org's data key: 32 bytes that seal its backups. The control plane makes it and keeps the
//! one copy that survives; destroying that copy makes the org's backups unreadable. Never
//! printed: its `Debug` shows nothing of it.

use crate::HemvistError;

#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(pub [u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn from_hex(hex: &str) -> Result<DataKey, HemvistError> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HemvistError::invalid("a data key is 64 hex digits"));
        }
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| HemvistError::invalid("a data key is 64 hex digits"))?;
        }
        Ok(DataKey(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_debug_hides_the_key() {
        let key = DataKey([0xab; 32]);
        assert_eq!(DataKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(DataKey::from_hex("ab").is_err());
        assert!(DataKey::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }
}
