//! Connection workers: one single-threaded tokio runtime per worker thread, each serving the
//! connections the accept loop hands it (round robin) from accept to close.
//!
//! A proxied request wakes several tasks in turn: the browser connection's task, the
//! upstream connection's task (hyper's client runs each pooled connection as its own task)
//! and back. On the work-stealing runtime those tasks land on different threads, so each
//! request pays for cross-thread wake-ups (futex, inter-processor interrupts) and for moving
//! its state between CPU caches. Here both sides of a request stay on one thread: the
//! browser connection is served by its worker's runtime, and the upstream client keeps a
//! pool per thread (see `portcullis::proxy::Forwarder`), so the upstream connection's task
//! runs on the same runtime as well. This is nginx's model (a worker per core), with tokio.
//! On by default on hosts with up to two CPUs (one worker, [`default_count`]);
//! `server.workers = 0` serves connections on the work-stealing runtime instead. The price of
//! a worker is that if it loses its CPU it stalls every connection it owns, which shows as
//! tail latency on a host shared with other busy processes, and that a connection never
//! moves to another worker.
//!
//! Everything else (the accept loop, background tasks, the admin listener, reloads) stays on
//! the main runtime. Work a request starts (a token refresh, a store call) runs on the
//! worker's runtime; shared state (the session cache, the single-flight table, store pools)
//! is `Send + Sync` and works from any runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::sync::mpsc;

/// A job for a worker: runs on the worker's runtime. The accept loop sends one per
/// accepted connection.
pub type Job = Box<dyn FnOnce() + Send>;

/// The worker threads; dropping this ends them once their connections are done (the
/// process normally exits first).
pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` worker threads (`portcullis-worker-<i>`), each with a single-threaded
    /// runtime (I/O and timers enabled). `count = 0` starts none: [`Workers::run`] then hands
    /// jobs back to the caller (`Err`), which runs them on its own runtime.
    ///
    /// # Errors
    /// A message when a thread or runtime cannot be created.
    pub fn start(count: usize) -> Result<Self, String> {
        let mut queues = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start connection worker runtime: {e}"))?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                    // The queue closed (the listener stopped): do not wait for connections
                    // still open past the drain deadline; the process is exiting.
                    runtime.shutdown_background();
                })
                .map_err(|e| format!("cannot start connection worker thread: {e}"))?;
            queues.push(tx);
        }
        Ok(Self {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// No worker threads: every job is handed back.
    pub fn none() -> Self {
        Self {
            queues: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Number of worker threads.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Runs `job` on the next worker (round robin), inside its runtime (so `tokio::spawn`
    /// there spawns on that worker). `Err(job)` when there are no workers or the chosen one
    /// has stopped: the caller runs it itself.
    pub fn run(&self, job: Job) -> Result<(), Job> {
        if self.queues.is_empty() {
            return Err(job);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        self.queues[i].send(job).map_err(|e| e.0)
    }
}

/// The default number of workers, a thread count: 1 on a host with at most two CPUs, else 0
/// (the work-stealing runtime serves connections). The CPU count is
/// `std::thread::available_parallelism` (it follows the process's CPU affinity and a cgroup
/// CPU quota, rounded down, but not CPU shares or a Kubernetes CPU request); 1 when it cannot
/// be read.
///
/// Measured on a 2-CPU host against nginx with `wrk` (`bench/RESULTS.md`, run 10), one
/// worker beat the work-stealing runtime on every figure: 27–31 µs of CPU per request
/// against 36–38, 0.79–0.90× nginx's req/s against 0.67–0.73×, p99 1.8–2.2 ms against
/// 2.2–4.5 ms (nginx: 1.3–2.1). The work-stealing runtime wakes its idle threads to look for
/// work a request's tasks have just made, and on a host with spare CPU (an outside load
/// generator, real browsers) most of those searches find none. Two workers on two CPUs lost
/// on p99 (4.3–4.5 ms): a worker that loses its CPU to another busy process stalls every
/// connection it owns.
///
/// Larger hosts keep the work-stealing runtime until they are measured: a connection stays on
/// its worker, so a few multiplexed connections (an HTTP/2 front proxy) would be confined to
/// as many cores, and a pod whose CPU request is far below its node's CPU count would start a
/// worker per node CPU. `server.workers = N` chooses N workers on any host.
pub fn default_count() -> usize {
    default_for(thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// [`default_count`] for a host with `cpus` CPUs.
fn default_for(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_worker_threads_round_robin_and_can_spawn_there() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers
                .run(Box::new(move || {
                    let name = thread::current().name().unwrap_or_default().to_owned();
                    // A job runs inside its worker's runtime.
                    tokio::spawn(async move {
                        tx.send(name).unwrap();
                    });
                }))
                .unwrap_or_else(|_| panic!("worker refused a job"));
        }
        let mut names: Vec<String> = (0..4).map(|_| rx.recv().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "portcullis-worker-0",
                "portcullis-worker-0",
                "portcullis-worker-1",
                "portcullis-worker-1"
            ]
        );
    }

    #[test]
    fn default_is_one_worker_up_to_two_cpus_and_the_work_stealing_runtime_above() {
        assert_eq!(default_for(1), 1);
        assert_eq!(default_for(2), 1);
        assert_eq!(default_for(3), 0);
        assert_eq!(default_for(64), 0);
    }

    #[test]
    fn no_workers_hands_the_job_back() {
        let workers = Workers::start(0).unwrap();
        assert!(workers.run(Box::new(|| {})).is_err());
    }
}
