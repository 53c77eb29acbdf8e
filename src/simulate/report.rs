//! What a run reports: the shared counters the workers add to, the live counter line, and
//! the final [`Summary`].

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Totals of a run. Readings are counted by what the gateway answered.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub requests: u64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// Readings in requests answered 429 (not stored).
    pub throttled: u64,
    /// Requests that failed otherwise (connection errors, 4xx/5xx other than 422/429).
    pub errors: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Summary {
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} readings in {} requests over {:.1}s: accepted {}, rejected {}, throttled {}, \
             errors {}; {:.0} readings/s accepted",
            self.sent,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.accepted,
            self.rejected,
            self.throttled,
            self.errors,
            self.accepted_per_second()
        )
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) throttled: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub(super) fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message);
        }
    }
}

/// The live counter line: once a second on stderr, rewritten in place on a terminal.
pub(super) fn progress(counters: Arc<Counters>, started: Instant) -> JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = started.elapsed().as_secs_f64();
            let accepted = counters.accepted.load(Ordering::Relaxed);
            let line = format!(
                "{secs:6.1}s  sent {:>10}  accepted {:>10}  rejected {:>8}  throttled {:>8}  errors {:>6}  {:>9.0}/s",
                counters.sent.load(Ordering::Relaxed),
                accepted,
                counters.rejected.load(Ordering::Relaxed),
                counters.throttled.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
                accepted as f64 / secs.max(1e-9),
            );
            if terminal {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}
