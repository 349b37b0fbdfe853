//! The thread that runs the [`super::share`] controller: every [`PERIOD`] it reads the scheduler
//! statistics of the threads it watches (`/proc/self/task/TID/schedstat`: time on a core, time
//! runnable but waiting for one, runs), sums them per kind into a [`Period`], steps the controller,
//! then sets the ingestion threads' rest cap ([`super::pace`]) and, for threads lowered under
//! `SCHED_IDLE`, their policy (`SCHED_OTHER` while promoted, at their nice value).
//!
//! Watched: ingestion's threads (the pool's, the ingestion runtime's, the WAL checkpoint's: each
//! registers itself when it lowers its priority) and the threads that answer searches (the main
//! runtime's workers and blocking threads register themselves at start, [`watch_search_thread`]),
//! and the answer threads ([`super::answers`]: counted as search threads, and promoted on their own
//! while they starve). A thread that is gone, or whose id now names another thread, is dropped.
//!
//! The guard runs at the process's own priority: a thread inherits its creator's policy and nice
//! value, and a guard under `SCHED_IDLE` would starve with the threads it is there to rescue.

use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

use super::share::{AnswerPromotion, Controller, Period, PERIOD};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An ingestion thread; `lowered`: under `SCHED_IDLE`, which promotion lifts.
    Ingest {
        lowered: bool,
    },
    Search,
    /// An answer thread ([`super::answers`]), or a blocking thread lowered to their priority;
    /// `lowered`: under `SCHED_IDLE`, which promotion lifts.
    Answer {
        lowered: bool,
    },
}

struct Watched {
    tid: i32,
    kind: Kind,
    /// The thread's name when it registered: a thread id reused by another thread is not touched.
    name: String,
    last: Stat,
}

/// A thread's scheduler statistics: nanoseconds on a core, nanoseconds waiting for one, runs.
#[derive(Clone, Copy, Default)]
struct Stat {
    ran: u64,
    waited: u64,
    runs: u64,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static GUARD: OnceLock<()> = OnceLock::new();

/// Times ingestion's threads were promoted since the process started.
static PROMOTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
fn promotions() -> u64 {
    PROMOTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Watches the calling ingestion thread (`lowered`: just put under `SCHED_IDLE`).
pub(super) fn watch_ingest_thread(lowered: bool) {
    watch_current(Kind::Ingest { lowered });
}

/// Watches the calling thread as one that answers searches: the controller yields to their waits.
/// For the main runtime's `on_thread_start` (with [`unwatch_thread`] as its `on_thread_stop`). The
/// guard starts with the first ingestion thread: a process that only answers searches has none.
pub fn watch_search_thread() {
    watch_current(Kind::Search);
}

/// Watches the calling thread as an answer thread (`lowered`: just put under `SCHED_IDLE`), in
/// place of what it was watched as (a blocking thread of the main runtime was a search thread). It
/// takes the answer threads' current policy.
pub(super) fn watch_answer_thread(lowered: bool) {
    // SAFETY: returns the calling thread's id.
    let tid = unsafe { libc::gettid() };
    WATCHED.lock().retain(|w| w.tid != tid);
    watch_current(Kind::Answer { lowered });
    if lowered && ANSWERS_PROMOTED.load(std::sync::atomic::Ordering::Relaxed) {
        set_policy(tid, libc::SCHED_OTHER);
    }
}

/// Whether the answer threads are promoted now.
static ANSWERS_PROMOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops watching the calling thread, which is about to end.
pub fn unwatch_thread() {
    // SAFETY: returns the calling thread's id.
    let tid = unsafe { libc::gettid() };
    WATCHED.lock().retain(|w| w.tid != tid);
}

fn watch_current(kind: Kind) {
    // SAFETY: returns the calling thread's id.
    let tid = unsafe { libc::gettid() };
    let Some(last) = schedstat(tid) else { return };
    let name = thread_name(tid).unwrap_or_default();
    WATCHED.lock().push(Watched { tid, kind, name, last });
    if kind != Kind::Search {
        start_guard();
    }
}

/// Starts the guard thread once. Call it from a thread at the process's priority before lowering
/// any (the pool does).
pub(super) fn start_guard() {
    GUARD.get_or_init(|| {
        let started = std::thread::Builder::new().name("planfeed-cpu-guard".into()).spawn(guard);
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the ingestion threads' CPU guard");
        }
    });
}

fn guard() {
    // In case a lowered thread started it after all: the normal policy needs no privilege.
    // SAFETY: returns the calling thread's id.
    set_policy(unsafe { libc::gettid() }, libc::SCHED_OTHER);
    let mut controller = Controller::default();
    let mut rested = super::pace::rested();
    let mut got = 1.0;
    let mut lost = super::lost::Lost::new();
    let mut answers = AnswerPromotion::default();
    loop {
        std::thread::sleep(PERIOD);
        let mut period = look();
        period.throttled = lost.since_last().throttled;
        let now_rested = super::pace::rested();
        period.ingest_rested = now_rested.saturating_sub(rested);
        rested = now_rested;
        let was_promoted = controller.promoted;
        controller.step(&period, super::pace::min_share(), super::pace::hurrying());
        super::pace::set_cap(controller.cap);
        if controller.promoted != was_promoted {
            promote(controller.promoted, &period);
        }
        if answers.step(period.answer_ran, period.answer_waited) {
            promote_answers(answers.promoted);
        }
        if let Some(now) = period.ingest_got() {
            // About the last second.
            got = 0.9 * got + 0.1 * now;
        }
        publish(&controller, &period, got);
    }
}

/// Reads every watched thread's statistics since the previous look, dropping the threads gone.
fn look() -> Period {
    let mut p = Period::default();
    WATCHED.lock().retain_mut(|w| {
        let Some(now) = schedstat(w.tid).filter(|_| thread_name(w.tid).is_some_and(|n| n == w.name)) else {
            return false;
        };
        let (ran, waited) = (now.ran.saturating_sub(w.last.ran), now.waited.saturating_sub(w.last.waited));
        match w.kind {
            Kind::Search => {
                p.search_ran += Duration::from_nanos(ran);
                p.search_runs += now.runs.saturating_sub(w.last.runs);
                p.search_waited += Duration::from_nanos(waited);
            }
            Kind::Ingest { .. } => {
                p.ingest_ran += Duration::from_nanos(ran);
                p.ingest_waited += Duration::from_nanos(waited);
            }
            Kind::Answer { .. } => {
                // Searches' work too: while it waits behind ingestion, ingestion rests.
                p.search_ran += Duration::from_nanos(ran);
                p.search_runs += now.runs.saturating_sub(w.last.runs);
                p.search_waited += Duration::from_nanos(waited);
                p.answer_ran += Duration::from_nanos(ran);
                p.answer_waited += Duration::from_nanos(waited);
            }
        }
        w.last = now;
        true
    });
    p
}

/// Moves the lowered ingestion threads to `SCHED_OTHER` (`up`) or back under `SCHED_IDLE`.
fn promote(up: bool, p: &Period) {
    tracing::debug!(
        up,
        ingest_got = p.ingest_got(),
        search_runs = p.search_runs,
        search_waited_ms = p.search_waited.as_millis() as u64,
        "ingestion threads' policy"
    );
    if up {
        PROMOTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("planfeed_ingest_starvation_promotions_total").increment(1);
    }
    set_lowered_policy(Kind::Ingest { lowered: true }, up);
}

/// Held while the answer threads' policy changes (a test changes it too).
static ANSWER_POLICY: Mutex<()> = Mutex::new(());

/// Holds the answer threads' policy still (the guard waits to change it) and says whether they are
/// promoted: a test reads their policy under it.
#[cfg(test)]
pub(super) fn hold_answer_policy() -> (impl Drop, bool) {
    let held = ANSWER_POLICY.lock();
    (held, ANSWERS_PROMOTED.load(std::sync::atomic::Ordering::Relaxed))
}

/// Moves the lowered answer threads to `SCHED_OTHER` (`up`) or back under `SCHED_IDLE`.
fn promote_answers(up: bool) {
    let _changing = ANSWER_POLICY.lock();
    set_answers_policy(up);
}

fn set_answers_policy(up: bool) {
    tracing::debug!(up, "answer threads' policy");
    ANSWERS_PROMOTED.store(up, std::sync::atomic::Ordering::Relaxed);
    if up {
        metrics::counter!("planfeed_answer_starvation_promotions_total").increment(1);
    }
    set_lowered_policy(Kind::Answer { lowered: true }, up);
}

/// Gives every watched thread of `kind` the normal policy (`up`) or `SCHED_IDLE`.
fn set_lowered_policy(kind: Kind, up: bool) {
    let policy = if up { libc::SCHED_OTHER } else { libc::SCHED_IDLE };
    for w in WATCHED.lock().iter().filter(|w| w.kind == kind) {
        set_policy(w.tid, policy);
    }
}

fn publish(c: &Controller, p: &Period, got: f64) {
    metrics::gauge!("planfeed_ingest_cap").set(c.cap);
    metrics::gauge!("planfeed_ingest_share_got").set(got);
    metrics::gauge!("planfeed_ingest_promoted").set(if c.promoted { 1.0 } else { 0.0 });
    let wait = if p.search_runs == 0 { 0.0 } else { p.search_waited.as_secs_f64() / p.search_runs as f64 };
    metrics::gauge!("planfeed_ingest_search_wait_seconds").set(wait);
    metrics::counter!("planfeed_ingest_periods_total", "reason" => c.reason.label()).increment(1);
}

fn set_policy(tid: i32, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on a thread of this process; `param` lives across the call.
    // Moving between SCHED_IDLE and SCHED_OTHER needs no privilege (RLIMIT_NICE allows the
    // thread's own nice value, which this does not change).
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        tracing::warn!(tid, policy, error = %std::io::Error::last_os_error(), "cannot change a lowered thread's policy");
    }
}

/// CPU time the calling thread has used.
#[cfg(test)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into `ts`, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A thread of this process's scheduler statistics.
fn schedstat(tid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some(Stat { ran: fields.next()??, waited: fields.next()??, runs: fields.next()?? })
}

fn thread_name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok().map(|n| n.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{CpuPool, PoolSize};
    use std::time::Instant;

    /// Busy loops of another process at the test's priority keep every core busy; a job on a
    /// `SCHED_IDLE` thread still finishes, because the guard promotes its thread when it gets less
    /// than its floor, and the thread is back under `SCHED_IDLE` once the neighbours stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_thread_starved_by_another_process_gets_the_normal_policy_then_goes_back() {
        let pool = CpuPool::start(PoolSize { threads: 1, nice: 0, idle: true });
        // SAFETY: returns the pool thread's own id.
        let tid = pool.run(|| unsafe { libc::gettid() }).await.unwrap();
        let before = promotions();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut hogs: Vec<_> = (0..cores)
            .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
            .collect();
        // 100 ms of CPU: half a minute at 0.3 % of a core, well under a second once promoted.
        let job = pool.run(|| {
            let started = thread_cpu_time();
            while thread_cpu_time() - started < Duration::from_millis(100) {
                std::hint::spin_loop();
            }
        });
        let waited = tokio::time::timeout(Duration::from_secs(60), job).await;
        for h in &mut hogs {
            h.kill().unwrap();
            h.wait().unwrap();
        }
        assert!(waited.is_ok(), "the job on the idle thread never finished beside busy neighbours");
        assert!(promotions() > before, "the guard never promoted the starved thread");
        // Back under SCHED_IDLE once the searches (none here) have been calm for a while.
        let deadline = Instant::now() + PERIOD * 200;
        // SAFETY: reads another thread's policy of this process.
        while unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_IDLE {
            assert!(Instant::now() < deadline, "the thread never went back under SCHED_IDLE");
            tokio::time::sleep(PERIOD).await;
        }
    }

    /// Promoting the answer threads moves every lowered one to the normal policy (and one that
    /// starts meanwhile takes it), demoting moves them back under `SCHED_IDLE`. When the guard
    /// does it is `share::AnswerPromotion`'s (tested there).
    #[tokio::test]
    async fn promoting_the_answer_threads_lifts_them_all_and_demoting_lowers_them_back() {
        // SAFETY: returns the calling thread's id; reads a thread's policy of this process.
        let tid = crate::cpu::answers::run(|| unsafe { libc::gettid() }).await;
        let policy = |tid| unsafe { libc::sched_getscheduler(tid) };
        // The guard may have promoted them (another test's busy loops): it cannot meanwhile.
        let _changing = ANSWER_POLICY.lock();
        set_answers_policy(true);
        assert_eq!(policy(tid), libc::SCHED_OTHER);
        // A thread lowered while they are promoted joins them.
        let late = std::thread::spawn(|| {
            crate::cpu::answers::lower_current_thread();
            unsafe { libc::sched_getscheduler(0) }
        });
        assert_eq!(late.join().unwrap(), libc::SCHED_OTHER);
        set_answers_policy(false);
        assert_eq!(policy(tid), libc::SCHED_IDLE);
    }
}
