//! Serving connections: the accept loop, connection limits, and the timeouts that close
//! connections which hold a socket without asking anything.
//!
//! warp's own `serve` has no header-read or idle timeout and no connection limit, so one client
//! holding thousands of idle sockets could exhaust the process's file descriptors and starve every
//! other client. Here each connection is served by hyper's HTTP/1 connection directly and watched:
//! - admission: at most `max_connections` open in total and `max_connections_per_client` per
//!   client IP; a connection over either limit gets an immediate `503` in the contract's error
//!   shape and is closed, so a flood costs an accept and a write, not a file descriptor held;
//! - `idle_timeout`: no byte either way and no request being answered for that long closes the
//!   connection (between keep-alive requests, or a client that connects and says nothing);
//! - `header_read_timeout`: a request's headers must be complete within that long of their first
//!   byte, however slowly they trickle in (slowloris).
//!
//! A client that goes away mid-request is its own business: connection errors are logged at debug
//! level and counted, never as errors of the service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use warp::Filter;

use super::error::ApiError;
use crate::config::ConnectionSettings;

/// The client's address, put in each request's extensions (warp's own `addr::remote()` only
/// works under warp's server).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Longest request target answered by the routes; a longer one gets a `414` in the contract's
/// shape. (Targets beyond hyper's own limit of 64 KiB get hyper's bodiless `414`.)
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header block (names, values and their separators) answered by the routes; a larger one
/// gets a `431` in the contract's shape, up to [`READ_BUF_BYTES`] where hyper answers alone.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's read buffer limit per connection: a request head beyond it gets hyper's own bodiless
/// `431`. Four times [`MAX_HEADER_BYTES`], so any oversized head that fits gets the contract's shape.
const READ_BUF_BYTES: usize = 64 * 1024;

/// Refusals written in the background at most at once; beyond, a refused socket is closed
/// after a best-effort write without waiting for the client to read it.
const MAX_LINGERING_REFUSALS: usize = 256;

/// Serves `filter` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (idle connections are closed at once).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    settings: ConnectionSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let registry = Arc::new(Registry::default());
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = registry.admit(client.ip(), &settings) else {
            refuse(stream, client, &lingering);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc =
            Service { filter: warp::service(filter.clone()), client, activity: Arc::new(Activity::new()) };
        let watcher = graceful.watcher();
        let settings = settings.clone();
        tokio::spawn(async move {
            let activity = svc.activity.clone();
            let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Our own watchdog measures header reads from their first byte; hyper's would also
            // count the wait before it.
            builder.header_read_timeout(None).max_buf_size(READ_BUF_BYTES);
            let conn = watcher.watch(builder.serve_connection(io, svc));
            let closed = tokio::select! {
                served = conn => match served {
                    Ok(()) => "done",
                    Err(e) => connection_error(&e, client),
                },
                why = activity.expired(&settings) => why,
            };
            crate::metrics::record_connection_closed(closed);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Open connections, in total and per client IP.
#[derive(Default)]
struct Registry {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    /// [`FLOOD_CONNECTIONS`] were open at once since memory was last handed back.
    flooded: AtomicBool,
}

/// A flood of at least this many open connections is followed by [`release_memory`] once no more
/// than [`FLOOD_OVER`] are left.
const FLOOD_CONNECTIONS: usize = 1024;
const FLOOD_OVER: usize = FLOOD_CONNECTIONS / 8;

/// Hands the allocator's free pages back to the system. glibc keeps the freed buffers of
/// thousands of closed connections in its heaps for good (a 10,000-connection flood left RSS at
/// 9x its idle level; mimalloc did no better and doubled the idle level), so once a flood is over
/// the free pages are released, off the async threads.
fn release_memory() {
    tokio::task::spawn_blocking(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the system; any thread may call it.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}

/// A connection's place in the [`Registry`], given back when dropped.
struct Slot {
    registry: Arc<Registry>,
    ip: IpAddr,
}

impl Registry {
    fn admit(self: &Arc<Self>, ip: IpAddr, s: &ConnectionSettings) -> Option<Slot> {
        let mut per_client = self.per_client.lock();
        let total = self.total.load(Ordering::Relaxed);
        let mine = per_client.get(&ip).copied().unwrap_or(0);
        if total >= s.max_connections {
            crate::metrics::record_connection_refused("total_limit");
            return None;
        }
        if mine >= s.max_connections_per_client {
            crate::metrics::record_connection_refused("client_limit");
            return None;
        }
        per_client.insert(ip, mine + 1);
        self.total.store(total + 1, Ordering::Relaxed);
        if total + 1 >= FLOOD_CONNECTIONS {
            self.flooded.store(true, Ordering::Relaxed);
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
        let total = self.registry.total.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::set_connections_open(total);
        if total <= FLOOD_OVER && self.registry.flooded.swap(false, Ordering::Relaxed) {
            release_memory();
        }
    }
}

/// Answers a connection over the limits with a `503` and closes it. The response is written
/// at once (a fresh socket's send buffer takes it); when a lingering slot is free, the request is
/// then read and discarded for a moment so the close does not reset the connection before the
/// client read the answer.
fn refuse(stream: TcpStream, client: SocketAddr, lingering: &Arc<Semaphore>) {
    tracing::debug!(%client, "connection refused: too many open connections");
    let response = refusal_response();
    let written = stream.try_write(response.as_bytes()).unwrap_or(0);
    let Ok(permit) = lingering.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let linger = async {
            stream.write_all(&response.as_bytes()[written..]).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
        drop(permit);
    });
}

fn refusal_response() -> String {
    let body = ApiError::too_many_connections().body();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The label of a connection that ended with an error. Clients going away, resetting, or
/// sending garbage are not faults of the service: debug level.
fn connection_error(e: &hyper::Error, client: SocketAddr) -> &'static str {
    let label = if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        "client_gone"
    } else if e.is_parse() || e.is_parse_status() || e.is_user() {
        "bad_request"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "io_error"
    };
    tracing::debug!(%client, error = %e, reason = label, "connection ended with an error");
    label
}

/// Accept errors (the process at its file limit, or a connection reset before it was accepted)
/// must not end the loop; a short pause keeps a full descriptor table from spinning it.
async fn accept_error(e: io::Error) {
    let transient = matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    );
    if transient {
        return;
    }
    tracing::warn!(error = %e, "accept failed: pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// What the watchdog of one connection knows: milliseconds since `epoch`.
struct Activity {
    epoch: Instant,
    /// Last byte read or written.
    last_io: AtomicU64,
    /// First byte of the request head being read, or `u64::MAX` when none is.
    head_started: AtomicU64,
    /// Requests handed to the service and not answered yet.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            head_started: AtomicU64::new(u64::MAX),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == u64::MAX
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// Resolves, with the reason, once the connection overstays one of its timeouts while no
    /// request is being answered.
    async fn expired(&self, s: &ConnectionSettings) -> &'static str {
        let idle = s.idle_timeout.as_millis() as u64;
        let header = s.header_read_timeout.as_millis() as u64;
        loop {
            let now = self.now();
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // A request is being answered: look again after the idle period.
                now + idle
            } else {
                let head = self.head_started.load(Ordering::Relaxed);
                let idle_at = self.last_io.load(Ordering::Relaxed) + idle;
                let (at, why) =
                    if head == u64::MAX { (idle_at, "idle") } else { (head + header, "header_timeout") };
                if now >= at {
                    tracing::debug!(reason = why, "connection closed by its timeout");
                    return why;
                }
                at
            };
            tokio::time::sleep_until(self.epoch + Duration::from_millis(deadline)).await;
        }
    }
}

/// Marks a request answered when dropped, also when the client went away mid-request.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// The warp filter as a hyper service, with the client's address and the watchdog's bookkeeping.
struct Service<S> {
    filter: S,
    client: SocketAddr,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Service<S>
where
    S: tower_service::Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = warp::reply::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ClientAddr(self.client));
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        self.activity.head_started.store(u64::MAX, Ordering::Relaxed);
        let guard = InFlight(self.activity.clone());
        if let Some(e) = oversized(&req) {
            drop(guard);
            return Box::pin(std::future::ready(Ok(e.into_response())));
        }
        let mut filter = self.filter.clone();
        let response = tower_service::Service::call(&mut filter, req);
        Box::pin(async move {
            let response = response.await;
            drop(guard);
            response
        })
    }
}

/// The `414`/`431` a request over [`MAX_URI_BYTES`] or [`MAX_HEADER_BYTES`] gets.
fn oversized<B>(req: &hyper::Request<B>) -> Option<ApiError> {
    let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(ApiError::uri_too_long(MAX_URI_BYTES));
    }
    let headers: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    (headers > MAX_HEADER_BYTES).then(|| ApiError::headers_too_large(MAX_HEADER_BYTES))
}

/// The socket, telling the watchdog about every byte that passes.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
