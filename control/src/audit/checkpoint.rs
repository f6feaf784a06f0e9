//! A checkpoint: the audit chain's head (seq and hash) at a moment, signed with the control
//! plane's ed25519 key. Kept outside the control plane's disk (see `lockbox`), checkpoints make
//! a truncated or rewritten chain detectable: the chain must still hold, at each checkpoint's
//! seq, the hash that was signed.

use anyhow::{bail, Context};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

const FORMAT: &str = "hemvist-audit-checkpoint/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    /// The control plane's system id: checkpoints of another system are not this chain's.
    pub system: String,
    /// The newest entry it covers.
    pub seq: i64,
    pub hash: String,
    /// When that entry was written, and when it was signed.
    pub entry_at_ms: i64,
    pub signed_at_ms: i64,
    /// The signer's public key, hex (whether it is the trusted one is the verifier's question).
    pub public_key: String,
    pub signature: String,
}

impl Checkpoint {
    /// The bytes the signature covers: every field but the signature, in a fixed order.
    fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.format,
            self.system,
            self.seq,
            self.hash,
            self.entry_at_ms,
            self.signed_at_ms,
            self.public_key
        )
        .into_bytes()
    }

    /// The object key it is kept under: sorted by seq.
    pub fn name(&self) -> String {
        format!("checkpoints/{}/{:012}.json", self.system, self.seq)
    }

    /// Whether `public_key` (hex) signed exactly this.
    pub fn signed_by(&self, public_key: &str) -> bool {
        if self.format != FORMAT || !self.public_key.eq_ignore_ascii_case(public_key) {
            return false;
        }
        let (Ok(key), Ok(sig)) = (hex::decode(public_key), hex::decode(&self.signature)) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, key)
            .verify(&self.signed_bytes(), &sig)
            .is_ok()
    }
}

/// The control plane's signing key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

impl Signer {
    /// From the 32-byte seed, 64 hex digits.
    pub fn from_seed_hex(seed: &str) -> anyhow::Result<Signer> {
        let seed = hex::decode(seed.trim()).context("the audit signing key is not hex")?;
        if seed.len() != 32 {
            bail!("the audit signing key must be 32 bytes (64 hex digits)");
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| anyhow::anyhow!("the audit signing key is not a valid ed25519 seed"))?;
        Ok(Signer { pair })
    }

    /// Hex; safe to show anyone (it is how checkpoints are told to be ours).
    pub fn public_key(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn sign(
        &self,
        system: &str,
        seq: i64,
        hash: &str,
        entry_at_ms: i64,
        now_ms: i64,
    ) -> Checkpoint {
        let mut c = Checkpoint {
            format: FORMAT.into(),
            system: system.into(),
            seq,
            hash: hash.into(),
            entry_at_ms,
            signed_at_ms: now_ms,
            public_key: self.public_key(),
            signature: String::new(),
        };
        c.signature = hex::encode(self.pair.sign(&c.signed_bytes()).as_ref());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn a_signed_checkpoint_verifies_and_any_change_does_not() {
        let signer = Signer::from_seed_hex(SEED).unwrap();
        let c = signer.sign("sys", 42, "ab".repeat(32).as_str(), 1_000, 2_000);
        assert!(c.signed_by(&signer.public_key()));
        let mut other = c.clone();
        other.seq = 41;
        assert!(!other.signed_by(&signer.public_key()), "seq changed");
        let mut other = c.clone();
        other.hash = "cd".repeat(32);
        assert!(!other.signed_by(&signer.public_key()), "hash changed");
        let stranger = Signer::from_seed_hex(&"11".repeat(32)).unwrap();
        let forged = stranger.sign("sys", 42, &c.hash, 1_000, 2_000);
        assert!(!forged.signed_by(&signer.public_key()), "another key");
        assert_eq!(c.name(), "checkpoints/sys/000000000042.json");
    }

    #[test]
    fn bad_seeds_are_refused() {
        assert!(Signer::from_seed_hex("zz").is_err());
        assert!(Signer::from_seed_hex(&"00".repeat(31)).is_err());
    }
}
