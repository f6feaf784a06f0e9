//! The workload both replicators are given: the same tenants (named and keyed the same way in
//! every process), the same row written, paced the same way.
//!
//! Keeps true: a phase's writes are spread evenly over each second and the phase ends on time
//! whatever the writes cost, so both replicators see the same load.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The write every writer makes: one small contact (the schema's triggers fill its search
/// index too).
pub const INSERT: &str = "INSERT INTO contacts (name, created_ms, updated_ms) VALUES (?1, ?2, ?2)";

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The org of the `i`th tenant (from 1): `t00001`, ...
pub fn org_name(i: usize) -> String {
    format!("t{i:05}")
}

/// The data key of the `i`th tenant: as in production every org has one, and hemvist seals its
/// backups with it; here it is made up, the same in both processes.
pub fn data_key(i: usize) -> hemvist_proto::DataKey {
    let mut rng = crate::dev::demo::Rng::new(i as u64);
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    hemvist_proto::DataKey(key)
}

/// The `writers` tenants written, spread evenly over all of them.
pub fn writer_orgs<T: Clone>(all: &[T], writers: usize) -> Vec<T> {
    let writers = writers.min(all.len());
    (0..writers)
        .map(|i| all[i * all.len() / writers].clone())
        .collect()
}

/// Calls `write(i)` for each of `writers` once a second, spread evenly over the second, for
/// `seconds`. A write late for its slot runs at once; the phase still ends on time. Returns
/// how many writes were made.
pub fn paced(
    writers: usize,
    seconds: u64,
    mut write: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    if writers == 0 {
        return Ok(0);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut k = 0;
    loop {
        let due = start + Duration::from_secs_f64(k as f64 / writers as f64);
        let now = Instant::now();
        if due >= end || now >= end {
            return Ok(k);
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        write(k % writers)?;
        k += 1;
    }
}
