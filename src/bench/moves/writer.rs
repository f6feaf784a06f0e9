//! The steady write load: one signed-in user adding a contact at a fixed rate through the real
//! form, one write at a time, on a thread (and runtime) of its own so the system's work does not
//! delay its clock. A 307 is followed by posting the same form to its Location (the org's new
//! home, which the writer then keeps); a 503 or no answer is tried again 50 ms later. Slots
//! missed while a write waits are skipped, not made up: a write's wait is the pause it saw.
//!
//! Every write is recorded: when it was first sent, when it ended (acknowledged or given up),
//! and what it met on the way. Records are small and fixed-size (the name is derived from the
//! sequence number), so memory grows by a few bytes per write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::session::{origin_of, sign_in, Answer};

/// At most this many answers other than 303 are kept, to say what a slow write met.
const EVENTS: usize = 5_000;
/// How long one write is tried before it is given up.
const GIVE_UP: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u32,
    pub first: Instant,
    pub end: Instant,
    pub acked: bool,
    /// The status that ended a write that was not acknowledged (0: no answer).
    pub refused: Option<u16>,
    pub redirects: u16,
    pub unavailable: u16,
    pub no_answer: u16,
}

/// The contact name of write `seq`.
pub fn name(prefix: &str, seq: u32) -> String {
    format!("{prefix} {seq:07}")
}

/// One answer other than 303: which write, when, from where, what.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u32,
    pub at: Instant,
    pub origin: String,
    pub answer: String,
}

/// What the writer came to: every write's record, and the answers other than 303.
#[derive(Debug, Default)]
pub struct Written {
    pub records: Vec<Record>,
    pub events: Vec<Event>,
}

/// Stops writing when dropped (a size that failed halfway leaves no writer behind).
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Written>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Who writes, and where first.
pub struct Login {
    pub base: String,
    pub org: String,
    pub email: String,
    pub password: String,
}

impl Writer {
    /// Signs in and starts writing; fails if signing in does.
    pub fn start(login: Login, prefix: String, rate: u32) -> anyhow::Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready, signed_in) = mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e.into()));
                        return Written::default();
                    }
                };
                rt.block_on(write_loop(login, prefix, rate, flag, ready))
            })
            .context("start the writer thread")?;
        signed_in
            .recv()
            .context("the writer thread ended before signing in")??;
        Ok(Writer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after the write under way; every write's record.
    pub fn stop(mut self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

async fn write_loop(
    login: Login,
    prefix: String,
    rate: u32,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<anyhow::Result<()>>,
) -> Written {
    let session = match sign_in(&login.base, &login.org, &login.email, &login.password).await {
        Ok(s) => {
            let _ = ready.send(Ok(()));
            s
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Written::default();
        }
    };
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut home = login.base.clone();
    let mut records = Vec::new();
    let mut events = Vec::new();
    let mut next = Instant::now();
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        next = (next + period).max(Instant::now());
        seq += 1;
        let name = name(&prefix, seq);
        let first = Instant::now();
        let mut r = Record {
            seq,
            first,
            end: first,
            acked: false,
            refused: None,
            redirects: 0,
            unavailable: 0,
            no_answer: 0,
        };
        let mut url = format!("{home}/o/{}/contacts", session.org);
        loop {
            let answer = session.add_contact(&url, &name).await;
            if !matches!(answer, Answer::Acked) && events.len() < EVENTS {
                events.push(Event {
                    seq,
                    at: Instant::now(),
                    origin: origin_of(&url).to_string(),
                    answer: answer.describe(),
                });
            }
            match answer {
                Answer::Acked => {
                    r.acked = true;
                    break;
                }
                Answer::Moved(to) => {
                    r.redirects += 1;
                    home = origin_of(&to).to_string();
                    url = to;
                    if r.redirects > 5 {
                        r.refused = Some(307);
                        break;
                    }
                    continue;
                }
                Answer::Unavailable => r.unavailable += 1,
                Answer::Silent => r.no_answer += 1,
                Answer::Refused(status) => {
                    r.refused = Some(status);
                    break;
                }
            }
            if first.elapsed() > GIVE_UP {
                r.refused = Some(0);
                break;
            }
            tokio::time::sleep(RETRY).await;
        }
        r.end = Instant::now();
        records.push(r);
    }
    Written { records, events }
}
