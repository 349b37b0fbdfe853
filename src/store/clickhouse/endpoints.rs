//! The replicas a store talks to, and which of them answer.
//!
//! Every statement goes to the first healthy replica in configured order (so a process reads its
//! own writes: it keeps talking to the same replica while that one answers) and, when a replica
//! fails transiently (refused, timed out, read-only), to the next one. A failing replica is marked
//! down at once; a background probe (several replicas only) pings every replica each second and
//! marks it up again once it answers. A replica marked down is still tried last, so a store whose
//! replicas are all marked down keeps trying rather than refusing. A statement in flight on a
//! replica that gets marked down meanwhile (the probe found it frozen) is abandoned and moved to the
//! next replica at once, instead of waiting out its `query_timeout` there.
//!
//! Health is published per replica as the gauge `planfeed_clickhouse_endpoint_up{endpoint}` and in
//! a process-wide board that `/ready` shows ([`endpoint_health`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use clickhouse::Client;

use super::classify::timed;
use crate::store::{StoreError, StoreResult};

/// Delay between two probes of every replica.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A replica slower than this to answer a probe counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One replica: its HTTP interface and whether it answered last time.
pub(super) struct Endpoint {
    pub(super) url: String,
    pub(super) client: Client,
    up: AtomicBool,
    /// Woken when the replica is marked down: statements in flight on it move on.
    marked_down: tokio::sync::Notify,
}

pub(super) struct Endpoints {
    list: Vec<Endpoint>,
}

impl Endpoints {
    /// `clients` pairs each replica's URL with its client; every replica starts as up.
    pub(super) fn new(clients: Vec<(String, Client)>) -> Arc<Self> {
        let list: Vec<Endpoint> = clients
            .into_iter()
            .map(|(url, client)| Endpoint {
                url,
                client,
                up: AtomicBool::new(true),
                marked_down: tokio::sync::Notify::new(),
            })
            .collect();
        for e in &list {
            publish(&e.url, true);
        }
        let me = Arc::new(Self { list });
        if me.list.len() > 1 {
            tokio::spawn(probe(Arc::downgrade(&me)));
        }
        me
    }

    /// Replicas to try, in order: the healthy ones in configured order, then the others.
    /// Decided once per operation, so a replica marked down on the way is not tried twice.
    fn order(&self) -> Vec<&Endpoint> {
        let (mut up, down): (Vec<&Endpoint>, Vec<&Endpoint>) =
            self.list.iter().partition(|e| e.up.load(Ordering::Relaxed));
        up.extend(down);
        up
    }

    /// Runs `op` on the first replica that answers: a transient failure marks the replica down and
    /// moves on to the next; a permanent one is returned at once (another replica would refuse it
    /// too). When every replica failed, the last failure is returned.
    pub(super) async fn on_any<T, F, Fut>(&self, what: &str, op: F) -> StoreResult<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut last = None;
        for endpoint in self.order() {
            let elsewhere =
                || self.list.iter().any(|e| !std::ptr::eq(e, endpoint) && e.up.load(Ordering::Acquire));
            match endpoint.unless_marked_down(op(endpoint.client.clone()), elsewhere).await {
                Ok(value) => {
                    endpoint.mark(true);
                    return Ok(value);
                }
                Err(e) if e.is_transient() => {
                    if self.list.len() > 1 {
                        tracing::warn!(endpoint = %endpoint.url, error = %e, operation = what, "clickhouse replica failed; trying the next");
                    }
                    endpoint.mark(false);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no clickhouse replica configured".into())))
    }

    /// Pings every replica at once and returns as soon as one answers (a frozen replica must not
    /// hold up the readiness probe); the last failure when none does.
    pub(super) async fn ping_any(&self, limit: Duration) -> StoreResult<()> {
        let pings = self.list.iter().map(|e| {
            Box::pin(async move {
                let answer = ping(&e.client, limit).await;
                e.mark(answer.is_ok());
                answer
            })
        });
        futures::future::select_ok(pings).await.map(|_| ())
    }

    /// Pings every replica at once and records every answer: `Ok` when any answered, else the
    /// first replica's failure.
    pub(super) async fn ping_all(&self, limit: Duration) -> StoreResult<()> {
        let pings = self.list.iter().map(|e| async move {
            let answer = ping(&e.client, limit).await;
            e.mark(answer.is_ok());
            answer
        });
        let answers = futures::future::join_all(pings).await;
        if answers.iter().any(Result::is_ok) {
            return Ok(());
        }
        answers.into_iter().next().unwrap_or(Ok(()))
    }
}

impl Endpoint {
    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!(endpoint = %self.url, "clickhouse replica answers again");
            } else {
                tracing::warn!(endpoint = %self.url, "clickhouse replica marked down");
                self.marked_down.notify_waiters();
            }
        }
        publish(&self.url, up);
    }

    /// `statement`, abandoned as a transient failure if this replica is marked down before it ends
    /// while `elsewhere` says another replica is up (with none, the statement is waited for: there
    /// is nowhere better to go). A replica already marked down (tried last) is waited for too.
    async fn unless_marked_down<T>(
        &self,
        statement: impl Future<Output = StoreResult<T>>,
        elsewhere: impl Fn() -> bool,
    ) -> StoreResult<T> {
        tokio::pin!(statement);
        loop {
            let marked_down = self.marked_down.notified();
            tokio::pin!(marked_down);
            marked_down.as_mut().enable();
            if !self.up.load(Ordering::Acquire) {
                return statement.await;
            }
            tokio::select! {
                out = &mut statement => return out,
                () = marked_down => {
                    if elsewhere() {
                        return Err(StoreError::Unavailable(format!(
                            "clickhouse replica {} marked down while the statement ran",
                            self.url
                        )));
                    }
                }
            }
        }
    }
}

async fn ping(client: &Client, limit: Duration) -> StoreResult<()> {
    let one: u8 = timed(limit, client.query("SELECT toUInt8(1)").fetch_one()).await?;
    if one == 1 {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!("clickhouse ping answered {one}")))
    }
}

/// Probes every replica each [`PROBE_INTERVAL`] until the store is dropped.
async fn probe(endpoints: Weak<Endpoints>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(endpoints) = endpoints.upgrade() else { return };
        let _ = endpoints.ping_all(PROBE_TIMEOUT).await;
    }
}

/// The last known state of every replica this process talks to, by URL (`true`: answers).
pub fn endpoint_health() -> BTreeMap<String, bool> {
    board().lock().map(|b| b.clone()).unwrap_or_default()
}

fn board() -> &'static Mutex<BTreeMap<String, bool>> {
    static BOARD: std::sync::OnceLock<Mutex<BTreeMap<String, bool>>> = std::sync::OnceLock::new();
    BOARD.get_or_init(Default::default)
}

fn publish(url: &str, up: bool) {
    if let Ok(mut b) = board().lock() {
        b.insert(url.to_string(), up);
    }
    crate::metrics::record_store_endpoint(url, up);
}
