//! Where a search answer's heavy work runs: rendering the days a store read brought, copying a
//! large body together, hashing it, compressing it with gzip; on threads of their own below the
//! workers that answer searches. The store's blocking reads for searches are lowered the same way
//! (`cpu::lower_for_answers`).
//!
//! Compressing a 1-month answer (665 KB of JSON) takes 17–50 ms of one core. Run on the searches'
//! runtime, it held a worker that long, and every request queued on that worker waited behind it: a
//! client asking a new month with gzip a few dozen times a second took another client's warm 1-day
//! p99 from 0.2 to 15–30 ms. Handed to threads at nice +10, it still took it to 0.8–1.5 ms: the
//! kernel lets a thread of lower weight finish its slice before a worker that wakes up. So these
//! threads run under `SCHED_IDLE`, like ingestion's: any worker that wakes takes the core at once
//! (0.20–0.23 ms against 0.16 alone), and between them and ingestion's threads the cores are shared.
//!
//! Under `SCHED_IDLE` they could starve while threads of normal priority (of this process or
//! another) keep every core busy; the guard moves them to the normal policy at nice +[`NICE`] while
//! they wait much longer than they run (`cpu::share::AnswerPromotion`), and back once that stops.
//! Their waits count as the searches' for the share controller: while they wait behind
//! ingestion's threads (both under `SCHED_IDLE`), ingestion rests.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;

/// Added niceness of the threads, which counts while they are promoted: a worker of nice 0 weighs
/// about nine times as much (1024 against 110).
pub const NICE: i32 = 10;

/// A job's closure, boxed for a queue (here and in the ingestion pool).
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// `f` as a job for a thread of a queue, and where its result (or its panic) arrives.
pub(super) fn job<T, F>(f: F) -> (Job, tokio::sync::oneshot::Receiver<std::thread::Result<T>>)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(f)));
    });
    (job, rx)
}

static JOBS: OnceLock<crossbeam_channel::Sender<Job>> = OnceLock::new();

/// Work on fewer bytes than this runs in place ([`run_sized`]): copying or hashing 64 KiB takes
/// tens of microseconds, about what handing it over and back costs.
pub const IN_PLACE_BYTES: usize = 64 << 10;

/// Threads for answers' work: one per core. Their policy, not their number, keeps them from
/// delaying the workers; the work budget of each client (`server.rate_limit`) bounds what one
/// client makes them do.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The threads' queue, started on first use. It holds at most one job per search or store read in
/// flight, which the connection limits and the read lanes bound.
fn jobs() -> &'static crossbeam_channel::Sender<Job> {
    JOBS.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads() {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("planfeed-answer-{i}")).spawn(move || {
                lower_current_thread();
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
    let (job, rx) = job(f);
    if let Err(unsent) = jobs().send(job) {
        (unsent.into_inner())();
    }
    match rx.await {
        Ok(Ok(out)) => out,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // A job sent is run (the queue's sender lives as long as the process, so its threads
        // never stop), and one that could not be sent ran above: it always sends its result.
        Err(_) => unreachable!("an answer job is run before its result is dropped"),
    }
}

/// Lowers the calling thread, once: nice +[`NICE`] over the process's and `SCHED_IDLE`, watched
/// by the guard, which lifts it to the normal policy while answers starve (Linux; elsewhere a
/// no-op).
pub(super) fn lower_current_thread() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if LOWERED.replace(true) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // While this thread is still at the process's priority: the guard's thread inherits it.
        super::guard::start_guard();
        // SAFETY: plain system calls on the calling thread's own id and the process's; `param`
        // lives across the call. Lowering needs no privilege.
        let tid = unsafe { libc::gettid() };
        let rc = unsafe {
            let process = libc::getpriority(libc::PRIO_PROCESS, libc::getpid() as libc::id_t);
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (process + NICE).min(19))
        };
        if rc != 0 {
            tracing::warn!(tid, error = %std::io::Error::last_os_error(), "cannot lower an answer thread's priority");
        }
        let param = libc::sched_param { sched_priority: 0 };
        let lowered = unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } == 0;
        if !lowered {
            tracing::warn!(tid, error = %std::io::Error::last_os_error(), "cannot put an answer thread under SCHED_IDLE");
        }
        super::guard::watch_answer_thread(lowered);
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
        // Under SCHED_IDLE unless the guard promoted them (a busy machine starves them), which it
        // cannot do meanwhile.
        let (held, promoted) = crate::cpu::guard::hold_answer_policy();
        // SAFETY: reads the calling thread's own policy.
        let policy = run(|| unsafe { libc::sched_getscheduler(0) }).await;
        assert_eq!(policy, if promoted { libc::SCHED_OTHER } else { libc::SCHED_IDLE });
        drop(held);
        let caught = tokio::spawn(run(|| -> u32 { panic!("bad body") })).await.unwrap_err();
        assert!(caught.is_panic());
        // The threads survive a panic.
        assert_eq!(run(|| 2 + 2).await, 4);
    }
}
