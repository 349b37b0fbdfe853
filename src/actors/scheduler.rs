//! `Scheduler`: asks the fetcher for a fetch at start, then every `interval` (plus random jitter)
//! counted from the start of the previous fetch. Never two fetches of one provider at once: a tick
//! that comes while a fetch runs is dropped, and the next one is planned when the fetch finishes.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;

use super::messages::{FetcherMsg, SchedulerMsg};
use super::slot::Slot;

#[derive(Clone)]
pub struct SchedulerArgs {
    pub fetcher: Slot<FetcherMsg>,
    pub interval: Duration,
    pub jitter: Duration,
    /// One fetch, then nothing more (`ingest --once`): no next tick is planned once it finished.
    pub once: bool,
}

pub struct SchedulerState {
    args: SchedulerArgs,
    generation: u64,
    in_flight: bool,
    last_start: Option<Instant>,
    /// A fetch finished (what ends a `once` run).
    finished: bool,
}

pub struct Scheduler;

impl Actor for Scheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<SchedulerMsg>,
        args: SchedulerArgs,
    ) -> Result<SchedulerState, ActorProcessingErr> {
        me.cast(SchedulerMsg::Tick { generation: 0 })?;
        Ok(SchedulerState { args, generation: 0, in_flight: false, last_start: None, finished: false })
    }

    async fn handle(
        &self,
        me: ActorRef<SchedulerMsg>,
        msg: SchedulerMsg,
        state: &mut SchedulerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Tick { .. } | SchedulerMsg::FetchNow => {
                let current = match msg {
                    SchedulerMsg::Tick { generation } => generation == state.generation,
                    _ => true,
                };
                if !current || state.in_flight {
                    return Ok(());
                }
                if state.args.fetcher.cast(FetcherMsg::Fetch { reply_to: me.clone() }).is_ok() {
                    state.in_flight = true;
                    state.last_start = Some(Instant::now());
                } else {
                    tracing::warn!("fetcher is not running; retrying at the next interval");
                    state.plan_next(&me);
                }
            }
            SchedulerMsg::FetchFinished { failed } => {
                state.in_flight = false;
                state.finished = true;
                tracing::debug!(failed, "fetch finished");
                state.plan_next(&me);
            }
            SchedulerMsg::FetcherRestarted => {
                state.in_flight = false;
                state.plan_next(&me);
            }
            SchedulerMsg::SetInterval { interval, jitter } => {
                state.args.interval = interval;
                state.args.jitter = jitter;
                if !state.in_flight {
                    state.plan_next(&me);
                }
            }
        }
        Ok(())
    }
}

impl SchedulerState {
    /// Plans the next tick `interval + jitter` after the last fetch started (at once if overdue);
    /// none after a `once` run's fetch. A planned tick that a newer plan supersedes is ignored.
    fn plan_next(&mut self, me: &ActorRef<SchedulerMsg>) {
        self.generation += 1;
        if self.args.once && self.finished {
            return;
        }
        let generation = self.generation;
        let jitter = if self.args.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.args.jitter.mul_f64(rand::rng().random_range(0.0..1.0))
        };
        let elapsed = self.last_start.map_or(self.args.interval, |t| t.elapsed());
        let delay = (self.args.interval + jitter).saturating_sub(elapsed);
        me.send_after(delay, move || SchedulerMsg::Tick { generation });
    }
}
