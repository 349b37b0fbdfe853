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
//!   connection (between keep-alive requests, or a client that connects and says nothing, or
//!   stopped reading its answers); during a flood (1,024 connections open at once, until no more
//!   than 128 are left) 2 s of idleness is enough, so what a flood leaves behind goes at once;
//! - `header_read_timeout`: a request's headers must be complete within that long of their first
//!   byte, however slowly they trickle in (slowloris).
//!
//! - request heads: each is checked before hyper sees it ([`head`]), so a head hyper would refuse
//!   with its own bodiless answer (over its buffer, too many headers, not HTTP at all) gets a
//!   `431`/`414`/`400` in the contract's shape.
//!
//! Each connection's watchdog is a task of its own, woken only by its deadlines and by the
//! server's shutdown, never by the connection's requests: it ends an overstaying connection by
//! waking its socket, which then reads as the end of the stream (and fails writes), and on
//! shutdown asks hyper to close each connection after the answer it owes; the server returns
//! once the last connection closed.
//!
//! The limits and timeouts are [`ConnectionLimits`], which a configuration reload changes under
//! the running loop. A client that goes away mid-request is its own business: connection errors
//! are logged at debug level and counted, never as errors of the service.

mod connections;
mod head;
mod socket;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use warp::Filter;

use super::error::ApiError;
use super::search::Route;
pub use connections::ConnectionLimits;
use connections::{Activity, Registry};
use head::MAX_HEAD_BYTES;
use socket::Socket;

/// Longest request target answered by the routes; a longer one gets a `414` in the contract's
/// shape (from the service, or from the head check beyond 64 KiB).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest header block (names, values and their separators) answered by the routes; a larger one
/// gets a `431` in the contract's shape (from the service, or from the head check beyond 64 KiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper's read buffer limit per connection, above the head check's limit so that hyper never
/// refuses a head first (it only ever gets whole heads of at most [`MAX_HEAD_BYTES`]).
const READ_BUF_BYTES: usize = 2 * MAX_HEAD_BYTES;

/// Refusals written in the background at most at once; beyond, a refused socket is closed
/// after a best-effort write without waiting for the client to read it.
const MAX_LINGERING_REFUSALS: usize = 256;

/// Serves `filter` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (idle connections are closed at once).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    search: Option<Arc<super::search::ApiState>>,
    limits: Arc<ConnectionLimits>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    F: Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let registry = Arc::new(Registry::new(limits.clone()));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING_REFUSALS));
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
        let Some(slot) = registry.admit(client.ip()) else {
            refuse(stream, client, &lingering);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let svc = Service {
            filter: warp::service(filter.clone()),
            search: search.as_deref().map(super::search::ApiState::for_connection),
            client,
            activity: activity.clone(),
        };
        // The watchdog is a task of its own, woken only by its deadlines and the shutdown: polled
        // beside the connection (as the timeouts and hyper_util's graceful shutdown were), it was
        // polled on every wake of every request.
        let watchdog = tokio::spawn(activity.clone().watch(limits.clone(), registry.clone()));
        tokio::spawn(async move {
            let closed = serve_connection(stream, svc, &activity).await;
            watchdog.abort();
            crate::metrics::record_connection_closed(closed);
            drop(slot);
        });
    }
    drop(listener);
    registry.drain();
    registry.emptied().await;
}

/// Serves one connection until it ends; returns why (the label of
/// `planfeed_http_connections_closed_total`). Once the server drains, hyper is asked to close
/// after the answer it owes.
async fn serve_connection<S>(stream: TcpStream, svc: Service<S>, activity: &Arc<Activity>) -> &'static str
where
    Service<S>: hyper::service::Service<
        hyper::Request<Incoming>,
        Response = warp::reply::Response,
        Error = Infallible,
        Future: Send + 'static,
    >,
{
    let client = svc.client;
    let io = TokioIo::new(Socket::new(stream, activity.clone()));
    let mut conn = std::pin::pin!(http1().serve_connection(io, svc));
    let served = std::future::poll_fn(|cx| {
        if activity.take_drain() {
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await;
    match (activity.close_reason(), served) {
        (Some(why), _) => why,
        (None, Ok(())) => "done",
        (None, Err(e)) => connection_error(&e, client),
    }
}

/// hyper's HTTP/1 connection settings. Our own watchdog measures header reads from their first
/// byte; hyper's would also count the wait before it. Half-close: hyper looks for the end of the
/// stream only between requests (see `socket`). hyper's own header limit is left at its default
/// (100, = `MAX_HEADERS`, which the head check enforces first): setting it, even to the same
/// value, makes hyper fill two 100-slot arrays per request (2.6 % of a warm search's CPU in a
/// profile).
fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None).half_close(true).max_buf_size(READ_BUF_BYTES);
    builder
}

/// Answers a connection over the limits with a `503` and closes it. The response is written
/// at once, straight to the socket (a fresh socket's send buffer takes it; tokio's `try_write`
/// would wait for the reactor to have seen the socket writable, which a loaded reactor has not
/// yet); when a lingering slot is free, the request is then read and discarded for a moment so
/// the close does not reset the connection before the client read the answer.
fn refuse(stream: TcpStream, client: SocketAddr, lingering: &Arc<Semaphore>) {
    use std::io::Write;
    tracing::debug!(%client, "connection refused: too many open connections");
    let response = refusal_response();
    let Ok(mut raw) = stream.into_std() else { return };
    let written = raw.write(response.as_bytes()).unwrap_or(0);
    let Ok(permit) = lingering.clone().try_acquire_owned() else { return };
    let Ok(stream) = TcpStream::from_std(raw) else { return };
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
    let gone = std::error::Error::source(e).and_then(|s| s.downcast_ref::<io::Error>()).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        )
    });
    let label = if gone || e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
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

/// The routes as a hyper service (`/search` itself, the warp filter for the rest), with the client's
/// address and the watchdog's bookkeeping.
struct Service<S> {
    filter: S,
    /// Where the API runs: the state of `/search`, whose one route is here, not among the warp
    /// routes ([`super::search::route`], ADR 14).
    search: Option<Arc<super::search::ApiState>>,
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
        let guard = self.activity.request_started();
        if let Some(e) = oversized(&req) {
            drop(guard);
            return Box::pin(std::future::ready(Ok(e.into_response())));
        }
        // The client's address (warp's own `addr::remote()` only works under warp's server) and
        // what `/search` reads of the request, taken once without copying the header map.
        let facts = super::search::SearchRequest::of(&req, self.client);
        if let Some(state) = self.search.as_ref() {
            match super::search::route(&req) {
                Route::Search => {
                    let state = state.clone();
                    return Box::pin(async move {
                        let response = super::search::search_handler(facts, state).await;
                        drop(guard);
                        Ok(response)
                    });
                }
                Route::MethodNotAllowed => {
                    drop(guard);
                    return Box::pin(std::future::ready(Ok(ApiError::method_not_allowed().into_response())));
                }
                Route::Elsewhere => {}
            }
        }
        req.extensions_mut().insert(facts);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    const PATIENCE: Duration = Duration::from_secs(30);

    async fn read_until_ends_with(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        while !got.ends_with(end) {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.unwrap().unwrap();
            assert!(
                n > 0,
                "closed before {:?}: {}",
                String::from_utf8_lossy(end),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_idle_connections_at_once_and_lets_the_answer_in_flight_finish() {
        let (entered, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (entered_tx, release_rx) = (entered.clone(), release.clone());
        // `/slow` answers once released; anything else at once; the body is the path.
        let filter = warp::path::full().then(move |path: warp::path::FullPath| {
            let (entered, release) = (entered_tx.clone(), release_rx.clone());
            async move {
                if path.as_str() == "/slow" {
                    entered.notify_one();
                    release.notified().await;
                }
                warp::reply::Response::new(path.as_str().to_owned().into())
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits::new(&crate::config::ConnectionSettings::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, filter, None, limits, async {
            let _ = stopped.await;
        }));

        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /fast HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        read_until_ends_with(&mut idle, b"/fast").await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        tokio::time::timeout(PATIENCE, entered.notified()).await.unwrap();

        stop.send(()).unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, idle.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty(), "the idle connection is closed without a word: {rest:?}");
        assert!(!server.is_finished(), "the server waits for the answer in flight");

        release.notify_one();
        let answer = read_until_ends_with(&mut busy, b"/slow").await;
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&answer));
        let mut after = Vec::new();
        tokio::time::timeout(PATIENCE, busy.read_to_end(&mut after)).await.unwrap().unwrap();
        assert!(after.is_empty(), "closed after its answer: {after:?}");
        tokio::time::timeout(PATIENCE, server).await.unwrap().unwrap();
    }
}
