//! Where a search answer's heavy work runs: rendering the days a store read brought, copying a
//! large body together, hashing it, compressing it with gzip; on threads of their own at a lower
//! priority than the workers that answer searches (nice +[`NICE`]). The store's blocking reads for
//! searches run at the same priority (`cpu::lower_for_answers`).
//!
//! Compressing a 1-month answer (665 KB of JSON) takes 17–50 ms of one core. Run on the searches'
//! runtime, it held a worker that long, and every request queued on that worker waited behind it: a
//! client asking a new month with gzip several times a second took another client's warm 1-day p99
//! from 0.2 to 15–30 ms. Here a worker hands the body over and answers other requests until the
//! compressed form comes back; the kernel gives a core to a worker that wakes up before these
//! threads (nice +[`NICE`]), so the wait of a cheap request no longer follows the cost of an
//! expensive one. At most [`threads`] compressions run at once (every core but one), so answers that
//! need compressing share at most that many cores, whoever asks for them.
//!
//! The threads count as search threads for the share controller (`cpu::share`): their CPU is
//! what searches take, not ingestion's, and they run before ingestion's threads.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

/// Added niceness of the threads: a worker of nice 0 weighs about nine times as much (1024 against
/// 110), and ingestion's threads under `SCHED_IDLE` weigh far less.
pub const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send + 'static>;

static JOBS: OnceLock<crossbeam_channel::Sender<Job>> = OnceLock::new();

/// Work on fewer bytes than this runs in place ([`run_sized`]): copying or hashing 64 KiB takes
/// tens of microseconds, about what handing it over and back costs.
pub const IN_PLACE_BYTES: usize = 64 << 10;

/// Threads for answers' work: one per core. Their priority, not their number, keeps them from
/// delaying the workers; the work budget of each client (`server.rate_limit`) bounds what one
/// client makes them do.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn jobs() -> &'static crossbeam_channel::Sender<Job> {
    JOBS.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads() {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("planfeed-answer-{i}")).spawn(move || {
                lower_current_thread();
                #[cfg(target_os = "linux")]
                super::guard::watch_search_thread();
                for job in rx {
                    job();
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, thread = i, "cannot start an answer thread");
            }
        }
        tx
    })
}

/// Runs `f`, work on `bytes` bytes, in place when they are fewer than [`IN_PLACE_BYTES`], else on
/// an answer thread ([`run`]).
pub async fn run_sized<T, F>(bytes: usize, f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if bytes < IN_PLACE_BYTES {
        f()
    } else {
        run(f).await
    }
}

/// Runs `f` on an answer thread and waits for its result; a panic in `f` is raised again here, as
/// if `f` had run in place. Runs `f` in place when no thread could be started.
pub async fn run<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    if let Err(unsent) = jobs().send(job) {
        (unsent.into_inner())();
    }
    match rx.await {
        Ok(Ok(out)) => out,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // Every thread failed to start and the job ran in place: its sender is gone only if it
        // ran; a job is never dropped unrun while a thread holds the queue.
        Err(_) => unreachable!("an answer job is run before its result is dropped"),
    }
}

/// Raises the calling thread's nice value by [`NICE`] over the process's, once per thread (Linux;
/// elsewhere a no-op).
pub(super) fn lower_current_thread() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id and the process's.
        let rc = unsafe {
            let tid = libc::gettid();
            let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (process + NICE).min(19))
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower an answer thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn work_runs_on_the_answer_threads_at_their_priority_and_panics_reach_the_caller() {
        // SAFETY: reads the calling thread's own priority.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let here = nice();
        let (name, there) = run(move || (std::thread::current().name().map(String::from), nice())).await;
        assert!(name.is_some_and(|n| n.starts_with("planfeed-answer-")));
        assert_eq!(there, (here + NICE).min(19));
        let caught = tokio::spawn(run(|| -> u32 { panic!("bad body") })).await.unwrap_err();
        assert!(caught.is_panic());
        // The threads survive a panic.
        assert_eq!(run(|| 2 + 2).await, 4);
    }
}
