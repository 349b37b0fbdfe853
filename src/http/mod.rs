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

use tokio::net::TcpListener;
use warp::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::domain::TimeRange;
use crate::metrics::{self, MetricsSource};
use crate::search::{Answer, Searcher};
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
    server::serve(listener, routes(state), connections, shutdown).await;
}

/// `GET`, or `HEAD` answered as `GET` (hyper sends the headers and leaves the body out).
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

pub fn routes(state: ApiState) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let search = warp::path!("search")
        .and(get_or_head())
        .and(search_filter())
        .and(warp::header::headers_cloned())
        .and(with(state.clone()))
        .then(search_handler_with);
    let metrics = warp::path!("metrics").and(get_or_head()).and(with(state.clone())).map(|s: ApiState| {
        let mut res = Response::new(s.metrics.render().into());
        res.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
        res
    });
    let health = warp::path!("health")
        .and(get_or_head())
        .map(|| json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()));
    let ready = warp::path!("ready").and(get_or_head()).and(with(state)).then(|s: ApiState| async move {
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

/// What `/search` needs from the request: who asks (for the rate limits) and the raw query string
/// (parsed by the handler so repeated parameters can be detected).
pub struct SearchRequest {
    pub remote: Option<std::net::SocketAddr>,
    pub forwarded_for: Option<String>,
    pub query: String,
}

pub fn search_filter() -> impl Filter<Extract = (SearchRequest,), Error = Rejection> + Clone {
    warp::ext::optional::<server::ClientAddr>()
        .map(|client: Option<server::ClientAddr>| client.map(|c| c.0))
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(|remote, forwarded_for, query| SearchRequest { remote, forwarded_for, query })
}

/// The `/search` handler for a request without conditional or content-coding headers (a plain
/// answer). Public for the benches.
pub async fn search_handler(req: SearchRequest, state: ApiState) -> Response {
    search_handler_with(req, HeaderMap::new(), state).await
}

/// The `/search` handler: rate limits, parameters, cached answer, its representation for `headers`
/// (`Accept-Encoding`, `If-None-Match`), metrics. Public for the benches.
pub async fn search_handler_with(req: SearchRequest, headers: HeaderMap, state: ApiState) -> Response {
    let started = std::time::Instant::now();
    let response = answer_search(&req, &headers, &state).await;
    metrics::record_search(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

async fn answer_search(req: &SearchRequest, headers: &HeaderMap, state: &ApiState) -> Response {
    if let Err(e) = state.limiter.check(req.remote, req.forwarded_for.as_deref()) {
        return e.into_response();
    }
    let range: TimeRange = match params::parse_range(&req.query) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.searcher.answer(range).await {
        Ok(answer) => represent(answer, headers, state).await,
        Err(e) => {
            tracing::error!(error = %e, "search failed and no cached answer exists");
            ApiError::internal().into_response()
        }
    }
}

/// `answer` as the request asks: `304` when `If-None-Match` names the tag of the representation it
/// would get, else `200` with the body, gzip-compressed when accepted, large enough and cached (an
/// uncached answer would cost a compression per request: it goes out plain). Both carry the same
/// `ETag`, `Cache-Control` and `Vary`, as RFC 9110 §15.4.5 requires of a `304`.
async fn represent(answer: Answer, headers: &HeaderMap, state: &ApiState) -> Response {
    let coding = if answer.body.len() >= encoding::GZIP_MIN_BYTES && answer.compressible() {
        Coding::negotiate(headers.get_all(ACCEPT_ENCODING))
    } else {
        Coding::Identity
    };
    let etag = encoding::etag(answer.hash, coding);
    let not_modified = encoding::none_match(headers.get_all(IF_NONE_MATCH), &etag);
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, bytes::Bytes::new())
    } else if coding == Coding::Gzip {
        let packed = state.searcher.compressed(&answer, encoding::gzip).await;
        (StatusCode::OK, packed.expect("a compressible answer is cached"))
    } else {
        (StatusCode::OK, answer.body)
    };
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    let h = res.headers_mut();
    if !not_modified {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = coding.header() {
            h.insert(CONTENT_ENCODING, value);
        }
    }
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, state.cache_control.clone());
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
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
