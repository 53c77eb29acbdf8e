//! The threads history queries read on: their own, at the lowest CPU priority, so that a
//! heavy query takes only the CPU that intake and live feeds leave. On Linux each thread
//! takes the `SCHED_IDLE` policy: a thread of intake or a live feed that wakes takes the core
//! from it at once. A query that cannot finish that way ends at `[query] timeout`.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::QueryError;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of low-priority threads taking jobs in order.
#[derive(Debug)]
pub(crate) struct Pool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Pool {
    pub(crate) fn new(threads: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("query-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "a query thread could not start");
            }
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    }

    /// Runs `f` on a query thread; a panic is an error, not a crash.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A query that timed out (or whose client left) is not worked on.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        });
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| QueryError::Task("no query thread is running".into()))?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(_)) => Err(QueryError::Task("the query panicked".into())),
            Err(_) => Err(QueryError::Task("the query thread stopped".into())),
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call; pid 0 is this thread alone.
    let done = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if done != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "a query thread keeps its priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_at_the_lowest_priority_and_a_panic_is_an_error() {
        let pool = Pool::new(2);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: asks this thread's own policy.
            let policy = pool
                .run(|| unsafe { libc::sched_getscheduler(0) })
                .await
                .unwrap();
            assert_eq!(policy, libc::SCHED_IDLE);
        }
        assert_eq!(pool.run(|| 6 * 7).await.unwrap(), 42);
        let failed = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(failed, Err(QueryError::Task(_))));
        assert_eq!(pool.run(|| 1).await.unwrap(), 1, "the thread lives on");
    }
}
