//! Whether the store refuses writes now, and what the operator must fix: said once in the log when
//! a refusal starts (or changes cause) and once when the store takes writes again, named by
//! `/ready` ([`super::Delivery::refusal`]), counted in `planfeed_store_refusals_total{reason}`
//! and shown by `planfeed_store_refusing`.

use parking_lot::Mutex;

use crate::store::{Refusal, StoreError};

pub(super) struct Refusals {
    /// How the log names the store ("ClickHouse", "the embedded store").
    store: &'static str,
    current: Mutex<Option<(Refusal, String)>>,
}

impl Refusals {
    pub(super) fn new(store_name: &str) -> Self {
        let store = match store_name {
            "clickhouse" => "ClickHouse",
            "embedded" => "the embedded store",
            _ => "the store",
        };
        crate::metrics::set_store_refusing(false);
        Self { store, current: Mutex::new(None) }
    }

    /// Takes the outcome of one store call: `None` (it succeeded) ends a refusal; a refusal starts
    /// or goes on; other failures say nothing about refusing.
    pub(super) fn observe(&self, failure: Option<&StoreError>) {
        match failure {
            None => self.clear(),
            Some(e @ StoreError::Refused { cause, .. }) => self.set(*cause, e),
            Some(_) => {}
        }
    }

    /// Every plan of a batch was rejected and nothing proved the store takes plans.
    pub(super) fn unproven(&self, e: &StoreError) {
        self.set(Refusal::Unproven, e);
    }

    fn set(&self, cause: Refusal, e: &StoreError) {
        crate::metrics::record_store_refusal(cause.label());
        let remedy = cause.remedy(self.store);
        let mut current = self.current.lock();
        if current.as_ref().is_none_or(|(c, _)| *c != cause) {
            tracing::error!(reason = cause.label(), error = %e, "{remedy}; writes wait in the spool until it is fixed");
            crate::metrics::set_store_refusing(true);
        }
        *current = Some((cause, format!("{remedy} ({e})")));
    }

    fn clear(&self) {
        let mut current = self.current.lock();
        if let Some((cause, _)) = current.take() {
            tracing::info!(reason = cause.label(), "{} takes writes again", self.store);
            crate::metrics::set_store_refusing(false);
        }
    }

    pub(super) fn current(&self) -> Option<String> {
        self.current.lock().as_ref().map(|(_, text)| text.clone())
    }
}
