//! Keeps ingestion under `SCHED_IDLE` moving beside CPU-bound neighbours.
//!
//! Under `SCHED_IDLE` a thread weighs 3 against a normal thread's 1,024, and a search thread that
//! wakes takes the core from it at once: beside planfeed's own searches that is the point (the
//! closed-loop tail during a 61 MB round fell from 2.45× to 1.35× its idle value). But a neighbour
//! process that keeps every core busy (a build, a batch job) would leave ingestion about 0.3 % of
//! a core for as long as it runs. So a guard thread reads each such thread's scheduler statistics
//! (`/proc/self/task/TID/schedstat`: time on a core, time runnable but waiting for one) every
//! [`PERIOD`]; a thread that waited for a core more than [`STARVED`] of a period is moved to
//! `SCHED_OTHER` at its raised nice value (about a tenth of a core against a busy neighbour, what
//! `ingest_nice` alone gives) for [`HOLD`], then back under `SCHED_IDLE`. Beside planfeed's own
//! searches the threads still run between requests, so they rarely wait that long. While a fetch
//! is past half its time limit ([`super::pace::Hurry`]) a starved thread is promoted whoever keeps
//! it waiting.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often the guard looks.
pub(super) const PERIOD: Duration = Duration::from_millis(100);
/// Waiting for a core longer than this within one period is starving.
const STARVED: Duration = Duration::from_millis(90);
/// How long a starved thread keeps the normal policy.
const HOLD: Duration = Duration::from_secs(1);

struct Watched {
    tid: i32,
    /// The thread's name when it was lowered: a thread id reused by another thread is not touched.
    name: String,
    waited_ns: u64,
    ran_ns: u64,
    normal_until: Option<Instant>,
}

static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());
static GUARD: OnceLock<()> = OnceLock::new();

/// Threads the guard gave the normal policy back to since the process started.
static PROMOTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
fn promotions() -> u64 {
    PROMOTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Watches the calling thread, just put under `SCHED_IDLE` (starts the guard on first use).
pub(super) fn watch_current_thread() {
    // SAFETY: returns the calling thread's id.
    let tid = unsafe { libc::gettid() };
    let Some((ran_ns, waited_ns)) = schedstat(tid) else { return };
    let name = thread_name(tid).unwrap_or_default();
    WATCHED.lock().push(Watched { tid, name, waited_ns, ran_ns, normal_until: None });
    start_guard();
}

/// Starts the guard thread once. Call it from a thread at the process's priority before lowering
/// any (the pool does): a thread inherits its creator's policy and nice value, and a guard under
/// `SCHED_IDLE` would starve with the threads it is there to rescue.
pub(super) fn start_guard() {
    GUARD.get_or_init(|| {
        let started = std::thread::Builder::new().name("planfeed-cpu-guard".into()).spawn(guard);
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the ingestion threads' starvation guard");
        }
    });
}

fn guard() {
    // In case a lowered thread started it after all: the normal policy needs no privilege (its
    // nice value stays, which only weighs it less).
    // SAFETY: returns the calling thread's id.
    set_policy(unsafe { libc::gettid() }, libc::SCHED_OTHER);
    let mut process_ns = process_cpu_ns();
    loop {
        std::thread::sleep(PERIOD);
        let now = Instant::now();
        let mut watched = WATCHED.lock();
        let ran_before: u64 = watched.iter().map(|w| w.ran_ns).sum();
        let total = process_cpu_ns();
        // Whether the threads of this process that are not watched (searches) used less than half
        // a core: then a watched thread that waited was kept waiting by another process.
        let looks: Vec<Look> = watched.iter_mut().map(look).collect();
        let ran_after: u64 = watched.iter().map(|w| w.ran_ns).sum();
        let ours = total.saturating_sub(process_ns).saturating_sub(ran_after.saturating_sub(ran_before));
        process_ns = total;
        let outside = Duration::from_nanos(ours) < PERIOD / 2;
        // A fetch past half its time limit must finish: a starved thread is promoted at once.
        let at_once = outside || super::pace::hurrying();
        let mut i = 0;
        watched.retain_mut(|w| {
            let l = looks[i];
            i += 1;
            act(w, l, at_once, now)
        });
    }
}

/// What one look found of a watched thread.
#[derive(Clone, Copy)]
enum Look {
    Gone,
    Waited(Duration),
}

fn look(w: &mut Watched) -> Look {
    let Some((ran_ns, waited_ns)) = schedstat(w.tid) else { return Look::Gone };
    if thread_name(w.tid).is_none_or(|n| n != w.name) {
        return Look::Gone;
    }
    let waited = Duration::from_nanos(waited_ns.saturating_sub(w.waited_ns));
    w.waited_ns = waited_ns;
    w.ran_ns = ran_ns;
    Look::Waited(waited)
}

/// Promotes a starved thread when `at_once` (another process starves it, or a fetch hurries),
/// demotes one whose hold is over; `false` when it is gone.
fn act(w: &mut Watched, look: Look, at_once: bool, now: Instant) -> bool {
    let Look::Waited(waited) = look else { return false };
    match w.normal_until {
        Some(until) if now >= until => {
            set_policy(w.tid, libc::SCHED_IDLE);
            w.normal_until = None;
        }
        Some(_) => {}
        None if waited > STARVED && at_once => {
            tracing::debug!(
                tid = w.tid,
                waited_ms = waited.as_millis() as u64,
                at_once,
                "ingestion thread starved: normal policy for a while"
            );
            set_policy(w.tid, libc::SCHED_OTHER);
            PROMOTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("planfeed_ingest_starvation_promotions_total").increment(1);
            w.normal_until = Some(now + HOLD);
        }
        None => {}
    }
    true
}

fn set_policy(tid: i32, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on a thread of this process; `param` lives across the call.
    // Moving between SCHED_IDLE and SCHED_OTHER needs no privilege (RLIMIT_NICE allows the
    // thread's own nice value, which this does not change).
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        tracing::warn!(tid, policy, error = %std::io::Error::last_os_error(), "cannot change an ingestion thread's policy");
    }
}

/// CPU time of the whole process, in nanoseconds.
fn process_cpu_ns() -> u64 {
    cpu_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time the calling thread has used.
#[cfg(test)]
fn thread_cpu_time() -> Duration {
    Duration::from_nanos(cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID))
}

/// The CPU time `clock` measures (the process's, the calling thread's), in nanoseconds.
fn cpu_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into `ts`, which lives across the call.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds a thread of this process has run and has waited runnable for a core.
fn schedstat(tid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

fn thread_name(tid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok().map(|n| n.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{CpuPool, PoolSize};

    /// Busy loops of another process at the test's priority keep every core busy; a job on a
    /// `SCHED_IDLE` thread still finishes, because the guard gives its thread the normal policy, and
    /// the thread is back under `SCHED_IDLE` once the neighbours stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_thread_starved_by_another_process_gets_the_normal_policy_then_goes_back() {
        let pool = CpuPool::start(PoolSize { threads: 1, nice: 10, idle: true });
        // SAFETY: returns the pool thread's own id.
        let tid = pool.run(|| unsafe { libc::gettid() }).await.unwrap();
        let before = promotions();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut hogs: Vec<_> = (0..cores)
            .map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap())
            .collect();
        // 100 ms of CPU: half a minute at 0.3 % of a core, about a second once promoted.
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
        // Back under SCHED_IDLE within a hold and a period once the neighbours are gone.
        let deadline = Instant::now() + HOLD * 10;
        // SAFETY: reads another thread's policy of this process.
        while unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_IDLE {
            assert!(Instant::now() < deadline, "the thread never went back under SCHED_IDLE");
            tokio::time::sleep(PERIOD).await;
        }
    }
}
