//! Sealing with an org's data key: XChaCha20-Poly1305, `nonce (24) | ciphertext | tag`.
//!
//! Keeps true: no nonce is used twice under one key. A nonce is a random prefix read once per
//! process and a counter, so two processes (or restarts) sealing for the same org never collide
//! and nothing has to be persisted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use hemvist_proto::DataKey;

/// Bytes of nonce at the front of a sealed body.
pub const NONCE: usize = 24;
/// The Poly1305 tag after the ciphertext: a sealed body is at least `NONCE + TAG` long.
pub const TAG: usize = 16;

/// A nonce never used before in this process: a random prefix read once, then a counter.
fn nonce() -> [u8; NONCE] {
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 16];
        if hemvist_proto::random::fill(&mut p).is_err() {
            // No urandom: the clock and the process id still make a prefix unlikely to repeat.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            p[..16].copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
        }
        p
    });
    let mut n = [0u8; NONCE];
    n[..16].copy_from_slice(prefix);
    n[16..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    n
}

/// `msg` sealed with `aad` bound to it: `nonce | ciphertext | tag`.
pub fn seal(key: &DataKey, aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let nonce = nonce();
    // Encryption fails only for messages beyond what any object holds.
    let sealed = cipher
        .encrypt((&nonce).into(), Payload { msg, aad })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal`] made (`sealed` at least [`NONCE`] long); `None` if the key, the
/// associated data or the bytes are not the ones it was sealed with.
pub fn open(key: &DataKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    cipher
        .decrypt(
            sealed[..NONCE].into(),
            Payload {
                msg: &sealed[NONCE..],
                aad,
            },
        )
        .ok()
}

/// [`open`] into `buffer`, reusing its memory; whether it opened.
pub fn open_into(key: &DataKey, aad: &[u8], sealed: &[u8], buffer: &mut Vec<u8>) -> bool {
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    buffer.clear();
    buffer.extend_from_slice(&sealed[NONCE..]);
    cipher
        .decrypt_in_place(sealed[..NONCE].into(), aad, buffer)
        .is_ok()
}
