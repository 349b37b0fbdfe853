//! Who may hold a connection and for how long: the limits in force (changed by a reload without
//! a restart), the count of open connections per client, and each connection's watchdog.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::ConnectionSettings;
use crate::http::rate_limit::client_key;

/// `server.connections` as the accept loop and the watchdogs read it: atomics, so a reload
/// changes them under a running server. A lower limit refuses new connections until enough
/// have closed (open ones are not cut); new timeouts apply to every connection at once.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_connections: AtomicUsize,
    max_per_client: AtomicUsize,
    idle_ms: AtomicU64,
    header_ms: AtomicU64,
    /// Leading bits an IPv6 client is counted by (`server.rate_limit.ipv6_prefix`, the rate
    /// limits' keying), so the addresses of one /64 share one client's connections.
    ipv6_prefix: AtomicU8,
    /// A flood is on: idle connections are closed after [`FLOOD_IDLE`].
    flood: AtomicBool,
    /// Wakes the watchdogs so they measure against the new timeouts.
    changed: Notify,
}

impl ConnectionLimits {
    pub fn new(s: &ConnectionSettings) -> Arc<Self> {
        let limits = Self {
            max_connections: AtomicUsize::new(0),
            max_per_client: AtomicUsize::new(0),
            idle_ms: AtomicU64::new(0),
            header_ms: AtomicU64::new(0),
            ipv6_prefix: AtomicU8::new(64),
            flood: AtomicBool::new(false),
            changed: Notify::new(),
        };
        limits.update(s);
        Arc::new(limits)
    }

    /// Puts `s` in force (it must be valid).
    pub fn update(&self, s: &ConnectionSettings) {
        self.max_connections.store(s.max_connections, Ordering::Relaxed);
        self.max_per_client.store(s.max_connections_per_client, Ordering::Relaxed);
        self.idle_ms.store(s.idle_timeout.as_millis() as u64, Ordering::Relaxed);
        self.header_ms.store(s.header_read_timeout.as_millis() as u64, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Counts IPv6 clients by their first `bits` (from `server.rate_limit.ipv6_prefix`; 64 until
    /// set); connections open keep the key they were counted under.
    pub fn set_ipv6_prefix(&self, bits: u8) {
        self.ipv6_prefix.store(bits.min(128), Ordering::Relaxed);
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    pub fn max_connections_per_client(&self) -> usize {
        self.max_per_client.load(Ordering::Relaxed)
    }

    /// `idle_timeout`, or [`FLOOD_IDLE`] while a flood is on.
    fn idle_ms(&self) -> u64 {
        let idle = self.idle_ms.load(Ordering::Relaxed);
        if self.flood.load(Ordering::Relaxed) {
            idle.min(FLOOD_IDLE.as_millis() as u64)
        } else {
            idle
        }
    }

    /// Turns the flood state on or off; says whether it changed.
    fn set_flood(&self, on: bool) -> bool {
        let changed = self.flood.swap(on, Ordering::Relaxed) != on;
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    fn header_ms(&self) -> u64 {
        self.header_ms.load(Ordering::Relaxed)
    }
}

/// Open connections, in total and per client IP, and the server's shutdown: once it drains,
/// every connection finishes the request it is answering and closes.
pub(super) struct Registry {
    limits: Arc<ConnectionLimits>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    draining: AtomicBool,
    /// Wakes the watchdogs when the server starts draining.
    drain: Notify,
    /// Woken when the last connection closed.
    emptied: Notify,
}

/// A flood: at least this many connections open at once. It is over once no more than
/// [`FLOOD_OVER`] are left.
const FLOOD_CONNECTIONS: usize = 1024;
const FLOOD_OVER: usize = FLOOD_CONNECTIONS / 8;
/// While a flood is on, a connection idle this long is closed whatever `idle_timeout` says.
/// A flood's clients may leave thousands of sockets behind (a client that pipelines requests and
/// stops reading): each holds ~27 KB, and waiting the full idle timeout for them kept RSS at
/// several times its idle level for 20 s after the flood. Keep-alive clients reconnect in a
/// millisecond; memory and descriptors come back within seconds.
pub const FLOOD_IDLE: Duration = Duration::from_secs(2);

/// Hands glibc's free pages back to the system once a flood is over, off the async threads. The
/// connections' buffers come from mimalloc (the binary's allocator), which returns its own free
/// pages by itself; glibc's heap still holds what C code allocates (SQLite's page cache and its
/// statements), which `malloc_trim` releases.
fn release_memory() {
    tokio::task::spawn_blocking(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

/// Resolves once `done` holds, looking again each time `notify` wakes its waiters (it must be
/// notified after `done` comes to hold).
async fn until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let mut notified = std::pin::pin!(notify.notified());
        // Registered before looking, so a notification between the look and the wait is not lost.
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

/// A connection's place in the [`Registry`], given back when dropped.
pub(super) struct Slot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Registry {
    pub(super) fn new(limits: Arc<ConnectionLimits>) -> Self {
        Self {
            limits,
            per_client: Mutex::default(),
            total: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain: Notify::new(),
            emptied: Notify::new(),
        }
    }

    /// Asks every connection, open or yet to be watched, to finish what it answers and close.
    pub(super) fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.notify_waiters();
    }

    /// Resolves once the server drains.
    async fn draining(&self) {
        until(&self.drain, || self.draining.load(Ordering::Acquire)).await;
    }

    /// Resolves once no connection is open.
    pub(super) async fn emptied(&self) {
        until(&self.emptied, || self.total.load(Ordering::Acquire) == 0).await;
    }

    /// A slot for a new connection from `ip` (counted under its client key, see
    /// [`client_key`]), or `None` (counted by reason) over a limit.
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let limits = &self.limits;
        let ip = client_key(ip, limits.ipv6_prefix.load(Ordering::Relaxed));
        let mut per_client = self.per_client.lock();
        let total = self.total.load(Ordering::Relaxed);
        let mine = per_client.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_connections() {
            crate::metrics::record_connection_refused("total_limit");
            return None;
        }
        if mine >= limits.max_connections_per_client() {
            crate::metrics::record_connection_refused("client_limit");
            return None;
        }
        per_client.insert(ip, mine + 1);
        self.total.store(total + 1, Ordering::Relaxed);
        if total + 1 >= FLOOD_CONNECTIONS && limits.set_flood(true) {
            tracing::info!(
                open = total + 1,
                idle_close_ms = FLOOD_IDLE.as_millis() as u64,
                "connection flood: idle connections are closed sooner until it is over"
            );
        }
        crate::metrics::set_connections_open(total + 1);
        Some(Slot { registry: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_client = self.registry.per_client.lock();
        if let Some(n) = per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.ip);
            }
        }
        let total = self.registry.total.fetch_sub(1, Ordering::AcqRel) - 1;
        crate::metrics::set_connections_open(total);
        if total == 0 {
            self.registry.emptied.notify_waiters();
        }
        if total <= FLOOD_OVER && self.registry.limits.set_flood(false) {
            tracing::info!(open = total, "connection flood over: memory handed back");
            release_memory();
        }
    }
}

/// What the watchdog of one connection knows: milliseconds since `epoch`, on the kernel's coarse
/// monotonic clock (`coarsetime`: the time of the last timer tick, a few milliseconds behind):
/// every read and write of the connection stamps its time, and the precise clock cost several
/// times as much per stamp (a visible share of a `304`).
pub(super) struct Activity {
    epoch: coarsetime::Instant,
    /// The same moment on the runtime's clock, for the watchdog's timer.
    timer_epoch: Instant,
    /// Last byte read or written.
    last_io: AtomicU64,
    /// First byte of the request head being read, or `u64::MAX` when none is.
    head_started: AtomicU64,
    /// Requests handed to the service and not answered yet.
    in_flight: AtomicUsize,
    /// Why the connection is being closed: its request head was refused before hyper saw it, or
    /// it overstayed a timeout.
    close_reason: OnceLock<&'static str>,
    /// Set by the watchdog when the connection overstayed a timeout: the socket then ends.
    expired: AtomicBool,
    /// Set by the watchdog when the server drains: the connection closes after its answer.
    drain: AtomicBool,
    /// The connection's task while its socket waits, which the watchdog wakes when it sets
    /// `expired` or `drain`.
    waker: AtomicWaker,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            epoch: coarsetime::Instant::now_without_cache_update(),
            timer_epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
            close_reason: OnceLock::new(),
            expired: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    fn now(&self) -> u64 {
        // Not `now()`: it also stores the reading in a static that every core would write.
        coarsetime::Instant::now_without_cache_update().duration_since(self.epoch).as_millis()
    }

    pub(super) fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == u64::MAX
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    pub(super) fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    pub(super) fn refused(&self, reason: &'static str) {
        let _ = self.close_reason.set(reason);
    }

    pub(super) fn close_reason(&self) -> Option<&'static str> {
        self.close_reason.get().copied()
    }

    /// Whether the watchdog ended the connection.
    pub(super) fn expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    /// Called by the socket when it is about to wait: the watchdog wakes `cx`'s task when it
    /// ends the connection. Returns whether it already has (then the socket must not wait).
    pub(super) fn wake_on_expiry(&self, cx: &std::task::Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.expired()
    }

    /// Whether the server drains and the connection has not been told yet (true once).
    pub(super) fn take_drain(&self) -> bool {
        self.drain.load(Ordering::Relaxed) && self.drain.swap(false, Ordering::AcqRel)
    }

    /// Watches the connection's timeouts and the server's shutdown (until the connection's task
    /// aborts it). Once a timeout is overstayed, records why and wakes the socket, which then
    /// ends (end of stream to hyper); once the server drains, wakes the connection's task, which
    /// asks hyper to close after the answer it owes (see `take_drain`).
    pub(super) async fn watch(self: Arc<Self>, limits: Arc<ConnectionLimits>, registry: Arc<Registry>) {
        let why = tokio::select! {
            why = self.overstayed(&limits) => why,
            () = registry.draining() => {
                self.drain.store(true, Ordering::Release);
                self.waker.wake();
                self.overstayed(&limits).await
            }
        };
        let _ = self.close_reason.set(why);
        self.expired.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// A request was handed to the service: its head is complete.
    pub(super) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(u64::MAX, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves, with the reason, once the connection overstays one of its timeouts while no
    /// request is being answered. Follows the limits when a reload changes them.
    async fn overstayed(&self, limits: &ConnectionLimits) -> &'static str {
        loop {
            let now = self.now();
            let idle = limits.idle_ms();
            // Acquire: pairs with `InFlight`'s release, so the answer's stamp is seen with it.
            let deadline = if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request is being answered: look again after the idle period.
                now + idle
            } else {
                let head = self.head_started.load(Ordering::Relaxed);
                let idle_at = self.last_io.load(Ordering::Relaxed) + idle;
                let (at, why) = if head == u64::MAX {
                    (idle_at, "idle")
                } else {
                    (head + limits.header_ms(), "header_timeout")
                };
                if now >= at {
                    tracing::debug!(reason = why, "connection closed by its timeout");
                    return why;
                }
                at
            };
            tokio::select! {
                () = tokio::time::sleep_until(self.timer_epoch + Duration::from_millis(deadline)) => {}
                () = limits.changed.notified() => {}
            }
        }
    }
}

/// Marks a request answered when dropped, also when the client went away mid-request.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Stamped first: the watchdog must not see the request over with an old stamp.
        self.0.wrote();
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_of_one_ipv6_prefix_share_one_clients_connections() {
        let settings = ConnectionSettings { max_connections_per_client: 3, ..ConnectionSettings::default() };
        let limits = ConnectionLimits::new(&settings);
        let registry = Arc::new(Registry::new(limits.clone()));
        let addr = |net: u128, host: u128| IpAddr::from(std::net::Ipv6Addr::from((net << 64) | host));
        let net = 0x2001_0db8_0000_0001;
        let slots: Vec<Slot> = (1..=10_000).filter_map(|i| registry.admit(addr(net, i * 7_919))).collect();
        assert_eq!(slots.len(), 3, "10,000 addresses of one /64 hold one client's 3 connections");
        let other = registry.admit(addr(net + 1, 1)).expect("the next /64 is another client");
        drop(slots);
        assert!(registry.admit(addr(net, 42)).is_some(), "closed connections free the /64's slots");
        limits.set_ipv6_prefix(128);
        let own: Vec<Slot> = (1..=10).filter_map(|i| registry.admit(addr(net + 2, i))).collect();
        assert_eq!(own.len(), 10, "keyed per address at /128");
        drop(other);
    }
}
