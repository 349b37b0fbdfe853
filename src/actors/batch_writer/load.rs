//! The writer's bookkeeping at start: what the spool will deliver and what the store holds, per
//! plan key. Loaded once; when the store cannot be read yet, retried in the background.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::actors::persisted::Persisted;
use crate::delivery::Spool;

use crate::retry::{retry, RetryPolicy};
use crate::store::{SharedStore, StoreError, StoreResult};

/// The bookkeeping: the spool's pending plans, then the store's (read in this order, a plan
/// replayed in between is found in the store).
pub(super) async fn load_states(store: &SharedStore, spool: Option<&Arc<Spool>>) -> StoreResult<Persisted> {
    let started = Instant::now();
    let spooled = match spool {
        Some(spool) if spool.entries() > 0 => {
            spool.plan_states().await.map_err(|e| StoreError::Unavailable(e.to_string()))?
        }
        _ => Vec::new(),
    };
    let mut persisted: Persisted = store.load_plan_states().await?.into_iter().collect();
    let pending = spooled.len();
    for (key, state) in spooled {
        match persisted.get(&key) {
            Some(s) if s.version > state.version => {}
            _ => {
                persisted.insert(&key, state);
            }
        }
    }
    let floor = persisted.version_floor();
    crate::clock::observe(floor);
    tracing::info!(
        plans = persisted.len(),
        version_floor = floor,
        spooled = pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "writer loaded plan states"
    );
    Ok(persisted)
}

/// [`load_states`] retried with capped backoff until it succeeds.
pub(super) async fn load_until_done(store: &SharedStore, spool: Option<&Arc<Spool>>) -> Persisted {
    let policy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(1));
    let loaded = retry(
        &policy,
        u32::MAX,
        "load_plan_states",
        || load_states(store, spool),
        |_| true,
        |e, _, delay| tracing::debug!(error = %e, delay_ms = delay.as_millis() as u64, "plan states not readable yet"),
    );
    // Only `u32::MAX` failures in a row (decades) end the loop: then start empty.
    loaded.await.unwrap_or_default()
}
