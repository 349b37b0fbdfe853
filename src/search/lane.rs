//! The lanes of run queries: a short one for reads of a few days and a wide one for the rest, each
//! with at most a few reads in flight, the waiting ones let through earliest deadline first.
//!
//! A search of a cold range that is not short is allowed about twice the time the store takes to
//! read it alone. In the order runs were started (a fair semaphore), a year asked just after the
//! open range waited for every run of the open range before its own: measured at 4–19× its direct
//! read while the open range stayed under 2×. So each run carries a deadline: when it was started
//! plus twice the store's time for its search's estimated bytes ([`Lane::deadline_after`]), and a
//! search that joins a run still waiting lowers the run's deadline to its own. The run with the
//! earliest deadline goes next: a small search overtakes a big one that has slack left, and a big
//! one is never starved, as every later search's deadline ends up after its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::store::ReadSize;

/// Store queries of one search (or background refresh) in flight at once.
pub const RUNS_IN_FLIGHT: usize = 4;
/// A search (or reload) whose missing days come to at most this many estimated bytes reads them on
/// the short lane: about a month of a busy feed. Wider reads take the wide lane, so a cold day or
/// month never queues behind the runs of a cold year or of the open range.
pub const SHORT_READ_BYTES: u64 = 2 << 20;
/// Run queries in flight at once in the whole process, per lane. Bounded across searches, so a
/// burst of cold searches does not open a connection and a server query per run at once (a
/// replica left alone by a failover refused connections under such a burst).
pub const SHORT_LANE: usize = 4;
pub const WIDE_LANE: usize = RUNS_IN_FLIGHT;

/// The store's time per estimated byte of a run, for deadlines: about 10 ms per MB (ClickHouse
/// 18.16 on 2 cores reads the 63 MB open range of the bench in 0.5–0.7 s). Only the order of
/// deadlines matters, so a rough figure is enough.
const STORE_NANOS_PER_BYTE: u64 = 10;

/// A run's deadline in nanoseconds since the lane's origin: shared by the run and every search
/// that waits for it, which may only bring it forward.
#[derive(Debug, Clone)]
pub(super) struct Deadline(Arc<AtomicU64>);

impl Deadline {
    /// Brings the deadline forward to `nanos` (never back).
    pub(super) fn advance_to(&self, nanos: u64) {
        self.0.fetch_min(nanos, Ordering::AcqRel);
    }

    /// A deadline of its own with the same value (each run of a search is joined on its own).
    pub(super) fn fork(&self) -> Deadline {
        Deadline(Arc::new(AtomicU64::new(self.nanos())))
    }

    pub(super) fn nanos(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The process-wide lanes run queries wait on ([`SHORT_LANE`], [`WIDE_LANE`]), and which one a read
/// takes.
pub(super) struct Lanes {
    short: Arc<Lane>,
    wide: Arc<Lane>,
    /// Most estimated bytes a read may bring and still take the short lane ([`SHORT_READ_BYTES`]
    /// unless set).
    short_read_bytes: AtomicU64,
}

/// The lane a read of some estimated bytes takes ([`Lanes::pick`]).
pub(super) struct Pick<'a> {
    pub(super) lane: &'a Arc<Lane>,
    /// Whether it is the short lane (whose reads join only short reads in flight).
    pub(super) short: bool,
    /// What the store's reads give for their priority.
    pub(super) size: ReadSize,
}

impl Lanes {
    pub(super) fn new() -> Self {
        Self {
            short: Lane::new(SHORT_LANE),
            wide: Lane::new(WIDE_LANE),
            short_read_bytes: AtomicU64::new(SHORT_READ_BYTES),
        }
    }

    /// Bounds the estimated bytes of a read on the short lane, for tests and benches with small
    /// data.
    pub(super) fn set_short_read_bytes(&self, bytes: u64) {
        self.short_read_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The lane of a read of `bytes` estimated bytes.
    pub(super) fn pick(&self, bytes: u64) -> Pick<'_> {
        if bytes <= self.short_read_bytes.load(Ordering::Relaxed) {
            Pick { lane: &self.short, short: true, size: ReadSize::Short }
        } else {
            Pick { lane: &self.wide, short: false, size: ReadSize::Wide }
        }
    }
}

/// At most `permits` holders at once; the waiting ones get a freed permit earliest deadline first
/// (then first come).
pub(super) struct Lane {
    origin: Instant,
    state: Mutex<State>,
}

struct State {
    free: usize,
    next_ticket: u64,
    waiting: Vec<Waiter>,
}

struct Waiter {
    ticket: u64,
    deadline: Deadline,
    wake: oneshot::Sender<()>,
}

/// A place in the lane, released when dropped.
pub(super) struct LanePermit {
    lane: Arc<Lane>,
}

impl Drop for LanePermit {
    fn drop(&mut self) {
        self.lane.release();
    }
}

/// A waiting acquisition: leaves the queue when dropped before its turn, and gives back a permit
/// it was handed but never took.
struct Waiting {
    lane: Arc<Lane>,
    ticket: u64,
    wake: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut state = self.lane.state.lock();
        if let Some(at) = state.waiting.iter().position(|w| w.ticket == self.ticket) {
            state.waiting.swap_remove(at);
        } else if self.wake.try_recv().is_ok() {
            drop(state);
            self.lane.release();
        }
    }
}

impl Lane {
    pub(super) fn new(permits: usize) -> Arc<Self> {
        let state = State { free: permits, next_ticket: 0, waiting: Vec::new() };
        Arc::new(Self { origin: Instant::now(), state: Mutex::new(state) })
    }

    /// The deadline of a read of `bytes` estimated bytes started now: now plus twice the store's
    /// time for them.
    pub(super) fn deadline_after(&self, bytes: u64) -> Deadline {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let allowed = bytes.saturating_mul(2 * STORE_NANOS_PER_BYTE);
        Deadline(Arc::new(AtomicU64::new(now.saturating_add(allowed))))
    }

    /// Waits for a place in the lane: at once when one is free and nobody waits, else when the
    /// freed places have gone to every waiter of an earlier deadline.
    pub(super) async fn acquire(self: Arc<Self>, deadline: Deadline) -> LanePermit {
        let waiting = {
            let mut state = self.state.lock();
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                drop(state);
                return LanePermit { lane: self };
            }
            let (tx, rx) = oneshot::channel();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.push(Waiter { ticket, deadline, wake: tx });
            Waiting { lane: self.clone(), ticket, wake: rx, taken: false }
        };
        let mut waiting = waiting;
        // The sender is only dropped after a send (a waiter is removed from the queue to be woken).
        let _ = (&mut waiting.wake).await;
        waiting.taken = true;
        LanePermit { lane: self }
    }

    /// Hands a freed place to the waiter of the earliest deadline, or keeps it free.
    fn release(&self) {
        let mut state = self.state.lock();
        loop {
            let next = state
                .waiting
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| (w.deadline.nanos(), w.ticket))
                .map(|(i, _)| i);
            let Some(at) = next else {
                state.free += 1;
                return;
            };
            let waiter = state.waiting.swap_remove(at);
            if waiter.wake.send(()).is_ok() {
                return;
            }
        }
    }

    /// Waiting acquisitions (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }
}

/// How long a deadline is from now, for logs and tests.
#[cfg(test)]
fn slack(lane: &Lane, deadline: &Deadline) -> std::time::Duration {
    let now = u64::try_from(lane.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
    std::time::Duration::from_nanos(deadline.nanos().saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns an acquisition that records its name in `order` once it holds the permit, then
    /// releases it; waits until it is queued.
    async fn queue(
        lane: &Arc<Lane>,
        deadline: Deadline,
        name: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<()> {
        let before = lane.waiting();
        let (lane2, order) = (lane.clone(), order.clone());
        let task = tokio::spawn(async move {
            let _permit = lane2.acquire(deadline).await;
            order.lock().push(name);
        });
        while lane.waiting() == before {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn the_earliest_deadline_goes_first_and_a_joined_run_moves_up() {
        let lane = Lane::new(1);
        let held = lane.clone().acquire(lane.deadline_after(0)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let open = lane.deadline_after(60 << 20);
        let year = lane.deadline_after(12 << 20);
        let joined = lane.deadline_after(60 << 20);
        assert!(slack(&lane, &open) > slack(&lane, &year));
        let tasks = [
            queue(&lane, open.clone(), "open", &order).await,
            queue(&lane, joined.clone(), "open, joined by a day", &order).await,
            queue(&lane, year, "year", &order).await,
        ];
        // A search with a near deadline joins the second run of the open range.
        joined.advance_to(lane.deadline_after(1 << 20).nanos());
        // Never back: a later, wider search joining changes nothing.
        joined.advance_to(lane.deadline_after(600 << 20).nanos());
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), ["open, joined by a day", "year", "open"]);
        assert_eq!(lane.state.lock().free, 1, "every permit came back");
    }

    #[tokio::test]
    async fn a_waiter_dropped_before_its_turn_leaves_the_queue_and_loses_no_permit() {
        let lane = Lane::new(2);
        let a = lane.clone().acquire(lane.deadline_after(0)).await;
        let b = lane.clone().acquire(lane.deadline_after(0)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let gone = queue(&lane, lane.deadline_after(0), "gone", &order).await;
        let next = queue(&lane, lane.deadline_after(1 << 20), "next", &order).await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(lane.waiting(), 1);
        drop(a);
        next.await.unwrap();
        drop(b);
        assert_eq!(*order.lock(), ["next"]);
        assert_eq!(lane.state.lock().free, 2);
        // Both places are free again: two acquisitions get them at once.
        let _x = lane.clone().acquire(lane.deadline_after(0)).await;
        let _y = lane.clone().acquire(lane.deadline_after(0)).await;
        assert_eq!(lane.state.lock().free, 0);
    }
}
