//! Where ingestion's CPU-heavy work runs: a small pool of OS threads of lower priority.
//!
//! Parsing and hashing a large feed is seconds of CPU. On tokio's blocking pool it ran on as many
//! threads as there were parsers, at the priority of the threads answering searches, so a big feed
//! took a third of the search throughput on a 2-core machine. Here it runs on
//! `pipeline.ingest_threads` threads (by default every core but one), each with its nice value
//! raised by `pipeline.ingest_nice` (Linux: `setpriority` on the thread id, so only these threads):
//! when searches want the CPU the kernel gives it to them first, and when the machine is otherwise
//! idle ingestion runs at full speed. Ingestion is never stopped, only given a smaller share, so every
//! feed still finishes. By default the threads also run under `SCHED_IDLE` and rest between jobs
//! ([`pace`]) as much as the searches need, down to a guaranteed share ([`share`], ADR 12).
//!
//! The embedded store's writes run here too (`SqliteStore::write`): encoding and writing a round's
//! rows is about as much CPU as parsing it.
//!
//! The pool is process-wide ([`configure`] once at start, from the settings), because every parser
//! actor of every pipeline in the process shares the same cores; a job waits in an unbounded queue,
//! which holds at most one job per parser actor (each awaits its job before taking the next chunk).
//!
//! Ingestion's async work (the fetcher reading the body, the chunker, every actor's message
//! handling, change detection, freeing a round's plans) runs on a runtime of its own,
//! [`ingest_runtime`]: as many worker threads as the pool, lowered the same way. On the searches'
//! runtime a worker busy for a few milliseconds with a 61 MB round delays every request queued on
//! it; on these threads the kernel gives the core to the searches' workers first.
//!
//! Searches' own heavy work (rendering, copying, hashing and compressing large answers) runs on
//! [`answers`]' threads: below the workers, under `SCHED_IDLE` beside ingestion's threads, which
//! rest while they wait.

pub mod answers;
#[cfg(target_os = "linux")]
mod guard;
mod lost;
pub mod pace;
pub mod share;

#[cfg(target_os = "linux")]
pub use guard::{unwatch_thread, watch_search_thread};

use std::sync::OnceLock;

pub use lost::{clock_ticks, cpu_lost_seconds};
pub use pace::paced_seconds;

use answers::Job;

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("ingestion thread panicked: {0}")]
    Panicked(String),
    #[error("ingestion threads are gone")]
    Closed,
}

/// How the pool is sized: `pipeline.ingest_threads`, `pipeline.ingest_nice` and
/// `pipeline.ingest_idle_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// 0: every core but one (at least one thread).
    pub threads: usize,
    /// Added niceness, 0 (same priority as searches) to 19 (lowest).
    pub nice: i32,
    /// Linux `SCHED_IDLE` for the threads: any other thread that wakes up takes the core from them
    /// at once (a niced thread may first finish its slice), and they weigh less than nice 19.
    pub idle: bool,
}

impl PoolSize {
    /// The default of `config/default.toml`.
    pub const DEFAULT: PoolSize = PoolSize { threads: 0, nice: 0, idle: true };

    fn thread_count(self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores.saturating_sub(1).max(1)
    }
}

/// The pool: a queue of jobs and the threads that take them.
pub struct CpuPool {
    jobs: crossbeam_channel::Sender<Job>,
    threads: usize,
    nice: i32,
    idle: bool,
}

static POOL: OnceLock<CpuPool> = OnceLock::new();

/// Never dropped: a runtime may not be dropped from async code, and its threads, like the pool's,
/// live as long as the process.
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Sizes the process's pool. The first call wins (the pool's threads live as long as the process);
/// a later call with other values is logged and ignored, as a restart is needed to change them.
pub fn configure(size: PoolSize) {
    let pool = POOL.get_or_init(|| CpuPool::start(size));
    if pool.threads != size.thread_count() || pool.nice != size.nice || pool.idle != size.idle {
        tracing::warn!(
            threads = pool.threads,
            nice = pool.nice,
            idle = pool.idle,
            wanted_threads = size.thread_count(),
            wanted_nice = size.nice,
            wanted_idle = size.idle,
            "ingestion threads are sized at start: restart to change them"
        );
    }
}

/// The process's pool (with the default size when [`configure`] was not called).
pub fn pool() -> &'static CpuPool {
    POOL.get_or_init(|| CpuPool::start(PoolSize::DEFAULT))
}

/// The runtime ingestion's actors run on (see the module's doc), built on first use with the pool's
/// thread count and priority: call [`configure`] first. Its blocking threads (the embedded store's
/// reads for the writer, the search cache's reloads the writer starts) are lowered too.
pub fn ingest_runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        let pool = pool();
        let (nice, idle) = (pool.nice, pool.idle);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(pool.threads)
            .thread_name_fn(|| {
                static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{RUNTIME_THREAD}{i}")
            })
            .on_thread_start(move || lower_priority(nice, idle))
            .enable_all()
            .build()
            // Only fails when the OS refuses threads or an epoll instance: nothing runs without them.
            .expect("cannot start the ingestion runtime");
        tracing::info!(threads = pool.threads, nice, idle, "ingestion runtime started");
        runtime
    })
}

/// How the ingestion runtime's threads are named (then a number); the pool's are `planfeed-ingest-N`.
pub const RUNTIME_THREAD: &str = "planfeed-pipe-";

impl CpuPool {
    fn start(size: PoolSize) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let threads = size.thread_count();
        // From this thread, at the process's priority, not from a lowered one.
        #[cfg(target_os = "linux")]
        guard::start_guard();
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("planfeed-ingest-{i}")).spawn(move || {
                lower_priority(size.nice, size.idle);
                for job in rx {
                    let started = std::time::Instant::now();
                    job();
                    let rest = pace::rest_after(started.elapsed());
                    if !rest.is_zero() {
                        std::thread::sleep(rest);
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, thread = i, "cannot start an ingestion thread");
            }
        }
        tracing::info!(threads, nice = size.nice, idle = size.idle, "ingestion threads started");
        Self { jobs: tx, threads, nice: size.nice, idle: size.idle }
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The niceness its threads add to the process's.
    pub fn nice(&self) -> i32 {
        self.nice
    }

    /// Runs `f` on one of the pool's threads and waits for its result; a panic in `f` is caught and
    /// returned as [`CpuError::Panicked`].
    pub async fn run<T, F>(&self, f: F) -> Result<T, CpuError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (job, rx) = answers::job(f);
        self.jobs.send(job).map_err(|_| CpuError::Closed)?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(panic)) => Err(CpuError::Panicked(panic_message(panic.as_ref()))),
            Err(_) => Err(CpuError::Closed),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Lowers the calling thread's priority as much as the pool's threads', once per thread: for
/// ingestion's background threads that are not in the pool (the embedded store's WAL checkpoint).
/// Called by the thread itself when it first has work, after [`configure`] ran.
pub fn lower_current_thread() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOWERED.with(|l| l.replace(true)) {
        lower_priority(pool().nice, pool().idle);
    }
}

thread_local! {
    /// Set on ingestion's threads when they lower themselves.
    static INGESTION_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lowers the calling thread to the priority of [`answers`]' threads, once, unless it is one of
/// ingestion's (already lower): for a blocking thread about to read the store for a search, which
/// would otherwise take a core from the workers at their priority.
pub fn lower_for_answers() {
    if !INGESTION_THREAD.get() {
        answers::lower_current_thread();
    }
}

/// Raises the calling thread's nice value by `nice`, and with `idle` puts it under `SCHED_IDLE`
/// (Linux: per thread; elsewhere a no-op).
fn lower_priority(nice: i32, idle: bool) {
    INGESTION_THREAD.set(true);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id and the main thread's; no
        // memory is shared. The main thread's nice value is the process's (its id is the pid); a
        // thread inherits its creator's, so one started by an already lowered thread (a blocking
        // thread of the ingestion runtime) is set from the process's, not lowered twice.
        let tid = unsafe { libc::gettid() };
        if nice > 0 {
            let rc = unsafe {
                let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (process + nice).min(19))
            };
            if rc != 0 {
                tracing::warn!(tid, nice, error = %std::io::Error::last_os_error(), "cannot lower an ingestion thread's priority");
            }
        }
        // SAFETY: as above; `param` lives across the call. Lowering needs no privilege.
        let param = libc::sched_param { sched_priority: 0 };
        let lowered = idle && unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } == 0;
        if idle && !lowered {
            tracing::warn!(tid, error = %std::io::Error::last_os_error(), "cannot put an ingestion thread under SCHED_IDLE");
        }
        guard::watch_ingest_thread(lowered);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, idle);
}

/// The calling thread's nice value (Linux), for tests.
#[cfg(all(test, target_os = "linux"))]
fn current_nice() -> i32 {
    // SAFETY: reads the calling thread's own priority.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_pools_threads_with_their_priority_and_panics_are_caught() {
        let pool = CpuPool::start(PoolSize { threads: 2, nice: 7, idle: false });
        assert_eq!(pool.threads(), 2);
        let (name, nice) =
            pool.run(|| (std::thread::current().name().map(String::from), current_nice())).await.unwrap();
        assert!(name.is_some_and(|n| n.starts_with("planfeed-ingest-")));
        // The test's own thread started at some nice value n; the pool's threads are n + 7 (capped).
        assert_eq!(nice, (current_nice() + 7).min(19));
        let err = pool.run(|| -> u32 { panic!("bad chunk") }).await.unwrap_err();
        assert!(matches!(&err, CpuError::Panicked(m) if m == "bad chunk"), "{err}");
        // The pool survives a panic.
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn jobs_beyond_the_thread_count_wait_their_turn() {
        let pool = CpuPool::start(PoolSize { threads: 1, nice: 0, idle: false });
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs = (0..8).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            pool.run(move || {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                std::hint::black_box((0..10_000u64).sum::<u64>());
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            })
        });
        for r in futures::future::join_all(jobs).await {
            r.unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1, "one thread: one job at a time");
    }

    #[tokio::test]
    async fn the_idle_policy_puts_the_threads_under_sched_idle() {
        let pool = CpuPool::start(PoolSize { threads: 1, nice: 3, idle: true });
        // SAFETY: reads the calling thread's own policy.
        let (policy, nice) =
            pool.run(|| (unsafe { libc::sched_getscheduler(0) }, current_nice())).await.unwrap();
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(nice, (current_nice() + 3).min(19));
        let normal = CpuPool::start(PoolSize { threads: 1, nice: 0, idle: false });
        let policy = normal.run(|| unsafe { libc::sched_getscheduler(0) }).await.unwrap();
        assert_eq!(policy, libc::SCHED_OTHER);
    }

    #[tokio::test]
    async fn the_ingestion_runtime_runs_tasks_on_its_own_lowered_threads() {
        let here = current_nice();
        let (name, nice) = ingest_runtime()
            .spawn(async { (std::thread::current().name().map(String::from), current_nice()) })
            .await
            .unwrap();
        assert!(name.is_some_and(|n| n.starts_with(RUNTIME_THREAD)));
        assert_eq!(nice, (here + pool().nice()).min(19));
        // What a task there spawns stays there.
        let inner = ingest_runtime()
            .spawn(async { tokio::spawn(async { std::thread::current().name().map(String::from) }).await })
            .await
            .unwrap()
            .unwrap();
        assert!(inner.is_some_and(|n| n.starts_with(RUNTIME_THREAD)));
        // A blocking thread, started by an already lowered worker, is lowered once, not twice.
        let blocking = ingest_runtime()
            .spawn(async { tokio::task::spawn_blocking(current_nice).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(blocking, (here + pool().nice()).min(19));
    }

    #[test]
    fn the_default_leaves_one_core_to_searches() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(PoolSize::DEFAULT.thread_count(), cores.saturating_sub(1).max(1));
        assert_eq!(PoolSize { threads: 3, nice: 0, idle: false }.thread_count(), 3);
    }
}
