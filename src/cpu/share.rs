//! How much of the CPU ingestion takes, decided every [`PERIOD`] from what the searches need.
//!
//! Two levers, one rule. Ingestion's threads run under `SCHED_IDLE` (a woken search thread takes
//! the core from them at once) and, after each job, rest in proportion to the *cap* in force
//! ([`super::pace`]): at a cap of 0.25 a thread works a quarter of the time. The controller moves
//! the cap from what the searches' threads went through in the last period, read from the kernel's
//! scheduler statistics (time each thread waited runnable for a core, and how many times it ran):
//!
//! - **Searches delayed**: they used enough CPU to matter ([`MIN_SEARCH_CPU`] of a period, 5 % of a
//!   core: a trickle says nothing) and a run waited [`DELAY_TARGET`] or more for a core on average.
//!   The cap falls by a third, down to `pipeline.min_ingest_share`. Priorities cannot stop a thread
//!   inside a system call (a store write) from keeping its core on a kernel that does not preempt
//!   kernel code: working less often does (ADR 12).
//! - **Quota spent**: the searches used enough CPU to matter and the process's cgroup was
//!   throttled [`THROTTLE_TARGET`] or more by its CPU quota ([`super::lost`]). Throttling pauses
//!   the searches' threads with the rest, whatever their priority, and comes from spending the
//!   whole quota: the cap falls as for a delay.
//! - **Otherwise** (no searches, a trickle, or searches that wait for nothing) the cap rises by a
//!   tenth of the range per period, back to 1 within a second: spare CPU goes to ingestion.
//!
//! The floor holds both ways: when ingestion's threads got less than `min_ingest_share` of the time
//! they wanted (waiting for a core behind saturating searches or a busy neighbour process), they
//! are *promoted* to the normal policy, where the kernel shares the cores fairly. While promoted the
//! cap follows what ingestion gets rather than the searches' waits (which stay long, the cores
//! being full): up by half when it got less than the floor, down by a third when it got more than
//! one and a half times the floor. A fixed cap on top of a fair share gave ingestion a share of a
//! share (a quarter of its time, each job slowed by the cores it shares: a tenth of its speed),
//! and no cap gave it half the machine (the searches kept 0.55 of their speed). They go back under
//! `SCHED_IDLE` once the searches have not been delayed for [`CALM_PERIODS`] periods. A fetch past half its time limit
//! ([`super::pace::Hurry`]) lifts the cap and promotes a waiting thread at once.

use std::time::Duration;

/// How often the controller looks.
pub const PERIOD: Duration = Duration::from_millis(100);
/// Mean wait for a core, per run of a search thread, above which searches count as delayed.
pub const DELAY_TARGET: Duration = Duration::from_micros(100);
/// CPU the search threads used in a period below which their waits say nothing (a trickle).
pub const MIN_SEARCH_CPU: Duration = Duration::from_millis(5);
/// Time the process's cgroup was throttled by its CPU quota in a period from which active searches
/// count as paused: a few milliseconds of a period of 100 ms.
pub const THROTTLE_TARGET: Duration = Duration::from_millis(5);
/// Undelayed periods after which promoted ingestion threads go back under `SCHED_IDLE`.
pub const CALM_PERIODS: u32 = 10;

/// What the threads went through in one period (sums over the search threads and over the
/// ingestion threads).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Period {
    pub search_ran: Duration,
    pub search_runs: u64,
    pub search_waited: Duration,
    pub ingest_ran: Duration,
    pub ingest_waited: Duration,
    /// Time ingestion's threads rested after jobs, by the cap.
    pub ingest_rested: Duration,
    /// Time the process's cgroup was throttled by its CPU quota ([`super::lost`]).
    pub throttled: Duration,
    /// The answer threads' ([`super::answers`]), also counted in the search figures above: for
    /// [`AnswerPromotion`].
    pub answer_ran: Duration,
    pub answer_waited: Duration,
}

/// Time the answer threads waited for a core in a period from which, running less than a tenth of
/// it, they count as starved ([`AnswerPromotion`]).
pub const ANSWER_STARVED_WAIT: Duration = Duration::from_millis(50);

/// When the answer threads leave `SCHED_IDLE`: in a period where they waited at least
/// [`ANSWER_STARVED_WAIT`] for a core and ran less than a tenth of that (threads of normal
/// priority, of this process or another, kept every core: under `SCHED_IDLE` beside others of their
/// kind they get a share, not almost nothing), they take the normal policy at their nice value;
/// they go back after [`CALM_PERIODS`] periods in a row in which they waited less than that or ran
/// at least a quarter as long as they waited.
#[derive(Debug, Default)]
pub struct AnswerPromotion {
    pub promoted: bool,
    calm: u32,
}

impl AnswerPromotion {
    /// Takes a period's figures of the answer threads; true when `promoted` changed.
    pub fn step(&mut self, ran: Duration, waited: Duration) -> bool {
        if !self.promoted {
            self.promoted = waited >= ANSWER_STARVED_WAIT && ran * 10 < waited;
            self.calm = 0;
            return self.promoted;
        }
        let calm = waited < ANSWER_STARVED_WAIT || ran * 4 >= waited;
        self.calm = if calm { self.calm + 1 } else { 0 };
        self.promoted = self.calm < CALM_PERIODS;
        !self.promoted
    }
}

impl Period {
    /// Whether the searches were delayed (see the module's doc).
    pub fn searches_delayed(&self) -> bool {
        self.search_ran >= MIN_SEARCH_CPU
            && self.search_runs > 0
            && self.search_waited / self.search_runs as u32 >= DELAY_TARGET
    }

    /// Whether the CPU quota paused the searches: they used enough CPU to matter and the cgroup
    /// was throttled [`THROTTLE_TARGET`] or more.
    pub fn searches_throttled(&self) -> bool {
        self.search_ran >= MIN_SEARCH_CPU && self.throttled >= THROTTLE_TARGET
    }

    /// The share of the time it wanted that ingestion got (ran, against ran + waited + rested);
    /// `None` when it wanted under a twentieth of a period (it was idle: nothing to judge).
    pub fn ingest_got(&self) -> Option<f64> {
        let wanted = self.ingest_ran + self.ingest_waited + self.ingest_rested;
        (wanted >= PERIOD / 20).then(|| self.ingest_ran.as_secs_f64() / wanted.as_secs_f64())
    }
}

/// Why the cap and the policy are what they are (the `reason` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Nothing to yield to: the cap is rising or at 1.
    Spare,
    /// Searches were delayed: the cap is falling or at the floor.
    SearchesDelayed,
    /// The CPU quota throttled the process beside the searches: the cap is falling or at the floor.
    CpuQuota,
    /// A fetch past half its time limit: no cap.
    Hurry,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Spare => "spare",
            Reason::SearchesDelayed => "searches_delayed",
            Reason::CpuQuota => "cpu_quota",
            Reason::Hurry => "hurry",
        }
    }
}

/// The controller's state: the cap in force and whether ingestion is promoted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Controller {
    pub cap: f64,
    pub promoted: bool,
    pub reason: Reason,
    calm: u32,
}

impl Default for Controller {
    fn default() -> Self {
        Controller { cap: 1.0, promoted: false, reason: Reason::Spare, calm: 0 }
    }
}

impl Controller {
    /// Moves the cap and the policy after `p`, with the floor `min` (0 < min <= 1) and whether a
    /// fetch hurries.
    pub fn step(&mut self, p: &Period, min: f64, hurry: bool) {
        let delayed = p.searches_delayed() || p.searches_throttled();
        let starved = p.ingest_got().is_some_and(|got| got < min) && p.ingest_waited > p.ingest_rested;
        if hurry {
            self.cap = 1.0;
            self.reason = Reason::Hurry;
            self.promoted |= p.ingest_waited >= PERIOD / 2 || starved;
        } else if delayed {
            self.cap = match p.ingest_got() {
                // Promoted: the cap keeps ingestion between the floor and one and a half times it.
                Some(got) if self.promoted && got < min => (self.cap * 1.5).min(1.0),
                Some(got) if self.promoted && got <= 1.5 * min => self.cap,
                _ => self.cap * (2.0 / 3.0),
            };
            self.reason = if p.searches_delayed() { Reason::SearchesDelayed } else { Reason::CpuQuota };
        } else {
            // Ten steps from the floor to 1 (the last one rounded up).
            let up = self.cap + (1.0 - min) / 10.0;
            self.cap = if up > 1.0 - 1e-9 { 1.0 } else { up };
            self.reason = Reason::Spare;
        }
        self.cap = self.cap.max(min);
        self.calm = if delayed { 0 } else { self.calm.saturating_add(1) };
        if starved {
            self.promoted = true;
        } else if self.promoted && self.calm >= CALM_PERIODS && !hurry {
            self.promoted = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    fn searches(runs: u64, mean_wait: Duration) -> Period {
        // Each run 50 µs of CPU: 1,000 runs a period are half a core.
        let search_ran = US * 50 * runs as u32;
        Period { search_ran, search_runs: runs, search_waited: mean_wait * runs as u32, ..Period::default() }
    }

    fn ingest(mut p: Period, ran: Duration, waited: Duration, rested: Duration) -> Period {
        p.ingest_ran = ran;
        p.ingest_waited = waited;
        p.ingest_rested = rested;
        p
    }

    #[test]
    fn delayed_searches_lower_the_cap_to_the_floor_and_calm_ones_raise_it_back() {
        let mut c = Controller::default();
        let delayed = ingest(searches(1_000, 300 * US), 150 * MS, 10 * MS, Duration::ZERO);
        c.step(&delayed, 0.25, false);
        assert!((c.cap - 2.0 / 3.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.reason, Reason::SearchesDelayed);
        for _ in 0..10 {
            c.step(&delayed, 0.25, false);
        }
        assert_eq!(c.cap, 0.25);
        assert!(!c.promoted, "ingestion got what it wanted: no promotion");
        // Searches that wait for nothing: the cap climbs by 0.075 a period, back to 1 in ten.
        let calm = ingest(searches(1_000, 20 * US), 150 * MS, Duration::ZERO, 50 * MS);
        c.step(&calm, 0.25, false);
        assert!((c.cap - 0.325).abs() < 1e-9, "{c:?}");
        assert_eq!(c.reason, Reason::Spare);
        for _ in 0..9 {
            c.step(&calm, 0.25, false);
        }
        assert_eq!(c.cap, 1.0);
    }

    #[test]
    fn a_trickle_of_searches_never_lowers_the_cap_however_long_its_waits() {
        let mut c = Controller::default();
        // Ten searches a second, each waiting 5 ms: a single unlucky wait, not a demand for CPU.
        let trickle = ingest(searches(1, 5 * MS), 190 * MS, 10 * MS, Duration::ZERO);
        for _ in 0..20 {
            c.step(&trickle, 0.25, false);
        }
        assert_eq!((c.cap, c.promoted, c.reason), (1.0, false, Reason::Spare));
    }

    #[test]
    fn ingestion_kept_below_its_floor_is_promoted_and_kept_near_it_until_the_searches_are_calm() {
        let mut c = Controller { cap: 0.25, ..Controller::default() };
        // Saturating searches: ingestion ran 10 ms of the 200 ms it wanted (5 %).
        let saturated = ingest(searches(5_000, 400 * US), 10 * MS, 190 * MS, Duration::ZERO);
        c.step(&saturated, 0.25, false);
        assert!(c.promoted);
        // Promoted, it still gets too little (rests on top of a shared core): the cap rises by half.
        let short = ingest(searches(5_000, 400 * US), 20 * MS, 30 * MS, 60 * MS);
        c.step(&short, 0.25, false);
        assert!((c.cap - 0.375).abs() < 1e-9, "{c:?}");
        // Within the floor and one and a half times it: the cap holds.
        let within = ingest(searches(5_000, 400 * US), 30 * MS, 30 * MS, 50 * MS);
        c.step(&within, 0.25, false);
        assert!((c.cap - 0.375).abs() < 1e-9, "{c:?}");
        // A fair share of half the time is more than the searches should lose: down by a third.
        let fair = ingest(searches(5_000, 400 * US), 100 * MS, 100 * MS, Duration::ZERO);
        c.step(&fair, 0.25, false);
        assert!((c.cap - 0.25).abs() < 1e-9, "{c:?}");
        assert!(c.promoted);
        // The searches stop: back under SCHED_IDLE after CALM_PERIODS quiet periods.
        let quiet = ingest(Period::default(), 200 * MS, Duration::ZERO, Duration::ZERO);
        for _ in 0..CALM_PERIODS - 1 {
            c.step(&quiet, 0.25, false);
        }
        assert!(c.promoted);
        c.step(&quiet, 0.25, false);
        assert!(!c.promoted);
    }

    #[test]
    fn answer_threads_are_promoted_while_starved_and_back_after_calm_periods() {
        let mut a = AnswerPromotion::default();
        // Sharing the cores with others under SCHED_IDLE (a fifth of what they wanted): not starved.
        assert!(!a.step(30 * MS, 150 * MS));
        // Short waits however little they ran: not starved.
        assert!(!a.step(MS, 40 * MS));
        // Busy neighbours of normal priority: 2 ms of the 150 ms they wanted.
        assert!(a.step(2 * MS, 150 * MS) && a.promoted);
        // Still held back once promoted: promoted it stays.
        for _ in 0..CALM_PERIODS * 2 {
            assert!(!a.step(15 * MS, 150 * MS) && a.promoted);
        }
        // Calm (idle, or running as long as they wait) for CALM_PERIODS in a row: back.
        for i in 1..CALM_PERIODS {
            let figures = if i % 2 == 0 { (Duration::ZERO, Duration::ZERO) } else { (40 * MS, 150 * MS) };
            assert!(!a.step(figures.0, figures.1) && a.promoted);
        }
        assert!(a.step(Duration::ZERO, Duration::ZERO) && !a.promoted);
    }

    #[test]
    fn rests_alone_never_count_as_starving() {
        let mut c = Controller { cap: 0.25, ..Controller::default() };
        // Ingestion got 25 % because it rested the rest: that is the cap, not a shortage.
        let resting = ingest(searches(5_000, 400 * US), 25 * MS, 5 * MS, 70 * MS);
        c.step(&resting, 0.5, false);
        assert!(!c.promoted);
        assert_eq!(c.cap, 0.5, "the floor is raised at once by a reload");
    }

    #[test]
    fn a_hurrying_fetch_lifts_the_cap_and_promotes_a_waiting_thread() {
        let mut c = Controller { cap: 0.25, ..Controller::default() };
        let waiting = ingest(searches(5_000, 400 * US), 40 * MS, 60 * MS, Duration::ZERO);
        c.step(&waiting, 0.25, true);
        assert_eq!((c.cap, c.promoted, c.reason), (1.0, true, Reason::Hurry));
    }

    #[test]
    fn a_quota_throttling_searches_lowers_the_cap_and_alone_does_not() {
        let mut c = Controller::default();
        // Searches that wait for nothing, but the quota paused the process for 20 ms.
        let throttled = ingest(searches(1_000, 20 * US), 150 * MS, Duration::ZERO, Duration::ZERO);
        let throttled = Period { throttled: 20 * MS, ..throttled };
        c.step(&throttled, 0.25, false);
        assert!((c.cap - 2.0 / 3.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.reason, Reason::CpuQuota);
        // A millisecond is noise; throttling without searches costs them nothing.
        let noise = Period { throttled: MS, ..throttled };
        let alone = ingest(Period::default(), 150 * MS, Duration::ZERO, Duration::ZERO);
        let alone = Period { throttled: 20 * MS, ..alone };
        for p in [noise, alone] {
            let mut c = Controller { cap: 0.5, ..Controller::default() };
            c.step(&p, 0.25, false);
            assert_eq!((c.cap, c.reason), (0.575, Reason::Spare), "{p:?}");
        }
    }

    #[test]
    fn an_idle_ingestion_is_not_judged() {
        assert_eq!(ingest(Period::default(), MS, 2 * MS, Duration::ZERO).ingest_got(), None);
        let got = ingest(Period::default(), 30 * MS, 10 * MS, 60 * MS).ingest_got().unwrap();
        assert!((got - 0.3).abs() < 1e-9);
    }
}
