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
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex.trim(), &mut key)
            .map_err(|_| HemvistError::invalid("a data key is 64 hex digits"))?;
        Ok(DataKey(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
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
        assert!(DataKey::from_hex(&"ab".repeat(33)).is_err());
        assert_eq!(DataKey::from_hex(&"AB".repeat(32)).unwrap(), key);
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }
}
