//! The warp server: `GET /search`, `GET /health`, `GET /ready`, `GET /openapi.yaml`.
//!
//! `*_filter()`s extract and validate, handlers take their dependencies explicitly, and
//! [`error::ApiError`] is the one place that shapes error responses. [`encoding`] makes `/search`
//! answers what HTTP caches expect: ETag, `If-None-Match` → `304`, gzip, `Cache-Control`, `Vary`.

pub mod encoding;
pub mod error;
pub mod params;
pub mod rate_limit;
pub mod server;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use warp::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use warp::http::uri::PathAndQuery;
use warp::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::domain::TimeRange;
use crate::metrics::{self, MetricsSource};
use crate::search::{Answer, Content, Searcher};
use encoding::Coding;
use error::ApiError;

/// The published contract, served as-is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// What the handlers need; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub searcher: Arc<Searcher>,
    pub limiter: rate_limit::SharedRateLimiter,
    pub metrics: MetricsSource,
    pub readiness: Arc<crate::readiness::Readiness>,
    /// The `Cache-Control` of `/search` answers (from [`cache_control`]).
    pub cache_control: HeaderValue,
}

/// `Cache-Control` for `/search` answers reusable for `max_age` (`http.cache_max_age`).
pub fn cache_control(max_age: std::time::Duration) -> HeaderValue {
    HeaderValue::try_from(format!("max-age={}", max_age.as_secs())).expect("digits are a valid header value")
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and returns. Connections
/// are admitted and timed out by [`server::serve`] under `connections`.
pub async fn run(
    listener: TcpListener,
    state: ApiState,
    connections: Arc<server::ConnectionLimits>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(state);
    server::serve(listener, shared_routes(state.clone()), Some(state), connections, shutdown).await;
}

/// `GET`, or `HEAD` answered as `GET` (hyper sends the headers and leaves the body out).
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

pub fn routes(state: ApiState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    shared_routes(Arc::new(state))
}

/// The routes on `state`, shared once: a request clones one `Arc`, not the state's fields.
fn shared_routes(state: Arc<ApiState>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let search = warp::path!("search")
        .and(get_or_head())
        .and(warp::ext::get::<SearchRequest>())
        .and(with(state.clone()))
        .then(search_handler);
    let metrics =
        warp::path!("metrics").and(get_or_head()).and(with(state.clone())).map(|s: Arc<ApiState>| {
            let mut res = Response::new(s.metrics.render().into());
            res.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
            res
        });
    let health = warp::path!("health")
        .and(get_or_head())
        .map(|| json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()));
    let ready =
        warp::path!("ready").and(get_or_head()).and(with(state)).then(|s: Arc<ApiState>| async move {
            match s.readiness.check().await {
                Ok(()) => json_response(StatusCode::OK, crate::readiness::describe("ready").into()),
                Err(status) => {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, crate::readiness::describe(status).into())
                }
            }
        });
    let openapi = warp::path!("openapi.yaml").and(get_or_head()).map(|| {
        let mut res = Response::new(OPENAPI_YAML.into());
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/yaml"));
        res
    });
    search
        .or(metrics)
        .unify()
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .or(openapi)
        .unify()
        .recover(recover)
        .unify()
}

fn with<T: Clone + Send>(t: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || t.clone())
}

/// What `/search` needs of a request, taken from it once by the server ([`server::serve`] puts it
/// in the request's extensions): who asks (for the rate limits), the target (its query is parsed
/// by the handler so repeated parameters are detected), and the two headers that choose the
/// representation. Shares the request's bytes: no copy of the header map or the target.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub remote: Option<std::net::SocketAddr>,
    /// The first `X-Forwarded-For` line (used when `trust_forwarded_for` is set).
    pub forwarded_for: Option<HeaderValue>,
    pub target: Option<PathAndQuery>,
    /// Every `If-None-Match` line, joined into one list.
    pub if_none_match: Option<HeaderValue>,
    /// Every `Accept-Encoding` line, joined into one list.
    pub accept_encoding: Option<HeaderValue>,
}

impl SearchRequest {
    /// The facts of `req`, from `remote`.
    pub fn of<B>(req: &warp::http::Request<B>, remote: std::net::SocketAddr) -> Self {
        let headers = req.headers();
        Self {
            remote: Some(remote),
            forwarded_for: headers.get(X_FORWARDED_FOR).cloned(),
            target: req.uri().path_and_query().cloned(),
            if_none_match: joined(headers, &IF_NONE_MATCH),
            accept_encoding: joined(headers, &ACCEPT_ENCODING),
        }
    }

    /// The raw query string (empty without one).
    pub fn query(&self) -> &str {
        self.target.as_ref().and_then(PathAndQuery::query).unwrap_or("")
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// All lines of a list header as one value (RFC 9110 §5.3: equivalent to the separate lines);
/// the usual single line is shared, not copied.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let Some(second) = lines.next() else { return Some(first.clone()) };
    let mut list = first.as_bytes().to_vec();
    for line in std::iter::once(second).chain(lines) {
        list.extend_from_slice(b", ");
        list.extend_from_slice(line.as_bytes());
    }
    HeaderValue::from_bytes(&list).ok()
}

/// The `/search` handler: rate limits, parameters, cached answer, its representation for the
/// request's `Accept-Encoding` and `If-None-Match`, metrics. Public for the benches.
pub async fn search_handler(req: SearchRequest, state: Arc<ApiState>) -> Response {
    let started = std::time::Instant::now();
    let response = answer_search(&req, &state).await;
    metrics::record_search(response.status(), started.elapsed().as_secs_f64());
    response
}

async fn answer_search(req: &SearchRequest, state: &ApiState) -> Response {
    let forwarded_for = req.forwarded_for.as_ref().and_then(|v| v.to_str().ok());
    if let Err(e) = state.limiter.check(req.remote, forwarded_for) {
        return e.into_response();
    }
    let range: TimeRange = match params::parse_range(req.query()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.searcher.answer(range).await {
        Ok(answer) => represent(answer, req, state).await,
        Err(e) => {
            tracing::error!(error = %e, "search failed and no cached answer exists");
            ApiError::internal().into_response()
        }
    }
}

/// `answer` as the request asks: `304` when `If-None-Match` names the tag of the representation it
/// would get, else `200` with the body, gzip-compressed when accepted, large enough and cached (an
/// uncached answer would cost a compression per request: it goes out plain; so does a streamed
/// one, see [`streamed`]). Both carry the same `ETag`, `Cache-Control` and `Vary`, as RFC 9110
/// §15.4.5 requires of a `304`.
async fn represent(answer: Answer, req: &SearchRequest, state: &ApiState) -> Response {
    let coding = if answer.compressible() && answer.len() >= encoding::GZIP_MIN_BYTES {
        Coding::negotiate(req.accept_encoding.as_ref())
    } else {
        Coding::Identity
    };
    let etag = answer.etag(coding);
    let not_modified = encoding::none_match(req.if_none_match.as_ref(), &etag);
    let mut res = if not_modified {
        let mut res = Response::new(warp::hyper::body::Bytes::new().into());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else if coding == Coding::Gzip {
        let packed = state.searcher.compressed(&answer, encoding::gzip).await;
        let mut res = Response::new(packed.expect("a compressible answer is cached").into());
        res.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        res
    } else {
        match answer.content() {
            Content::Whole(body) => Response::new(body.clone().into()),
            Content::Pieces(pieces) => streamed(pieces.clone(), answer.len()),
        }
    };
    let h = res.headers_mut();
    if !not_modified {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, state.cache_control.clone());
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    res
}

/// A large answer written to the socket piece by piece from the cached days' bytes, with its
/// `Content-Length` (known before the first byte). It goes out plain: compressing hundreds of
/// megabytes per request would cost seconds of CPU, and caching the compressed form is what the
/// body cache refuses for its size (ADR 0014).
fn streamed(pieces: Arc<[Bytes]>, len: usize) -> Response {
    let chunks = (0..pieces.len()).map(move |i| Ok::<_, Infallible>(pieces[i].clone()));
    let mut res = warp::reply::stream(futures::stream::iter(chunks)).into_response();
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    res
}

fn json_response(status: StatusCode, body: warp::hyper::body::Bytes) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    res
}

async fn recover(rej: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(e) = rej.find::<ApiError>() {
        e.clone()
    } else if rej.is_not_found() {
        ApiError::not_found()
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::method_not_allowed()
    } else {
        tracing::warn!(rejection = ?rej, "unhandled rejection");
        ApiError::internal()
    };
    Ok(err.into_response())
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        ApiError::into_response(self)
    }
}
