//! The HTTP server: `GET /search`, `GET /health`, `GET /ready`, `GET /metrics`, `GET /openapi.yaml`
//! (each also answers `HEAD`). Every role serves the probes and the metrics; `/search` only where
//! the API runs ([`Endpoints`]). `/ready` and `/metrics` are admitted by their own limiter
//! ([`probes`]), `/search` by its own ([`rate_limit`]).
//!
//! `/search` has one route, in the server ([`search::route`]): hyper's request goes to
//! [`search_handler`] without warp's filter chain (the hot path, ADR 14). The other endpoints are
//! warp filters ([`server::serve`] runs them as a hyper service). Handlers take their dependencies
//! explicitly ([`ApiState`]), and [`error::ApiError`] is the one place that shapes error responses.
//! `/search` answers are what HTTP caches expect (ETag, `If-None-Match` → `304`, gzip,
//! `Cache-Control`, `Vary`) through [`crate::search::encoding`], whose representations the search
//! cache keeps.

pub mod error;
pub mod params;
pub mod probes;
pub mod rate_limit;
pub mod search;
pub mod server;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use error::ApiError;
use probes::ProbeLimiter;
pub use search::{cache_control, search_handler, ApiState, SearchRequest};

/// The published contract, served as-is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// What a process serves besides `/health`, `/ready`, `/metrics` and `/openapi.yaml`.
#[derive(Clone)]
pub struct Endpoints {
    /// `/search` (roles `api` and `both`); without it, `/search` is a `404` like any unknown path.
    pub search: bool,
    /// The budget of `/ready` and `/metrics`.
    pub probes: Arc<ProbeLimiter>,
}

impl Endpoints {
    /// Every endpoint, the probes under the default budget.
    pub fn all() -> Self {
        Self { search: true, probes: ProbeLimiter::new(&crate::config::ProbeLimitSettings::default()) }
    }
}

/// Serves every endpoint until `shutdown` resolves (see [`run_with`]).
pub async fn run(
    listener: TcpListener,
    state: ApiState,
    connections: Arc<server::ConnectionLimits>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    run_with(listener, state, Endpoints::all(), connections, shutdown).await
}

/// Serves `endpoints` until `shutdown` resolves, then finishes in-flight requests and returns.
/// Connections are admitted and timed out by [`server::serve`] under `connections`.
pub async fn run_with(
    listener: TcpListener,
    state: ApiState,
    endpoints: Endpoints,
    connections: Arc<server::ConnectionLimits>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let state = Arc::new(state);
    let search = endpoints.search.then(|| state.clone());
    server::serve(listener, other_routes(state, endpoints.probes), search, connections, shutdown).await;
}

/// `GET`, or `HEAD` answered as `GET` (hyper sends the headers and leaves the body out).
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// The routes of every endpoint but `/search` (routed by the server itself, [`search::route`]), on
/// `state` shared once: a request clones one `Arc`, not the state's fields. An unknown path is a
/// `404` in the contract's shape, another method than `GET`/`HEAD` a `405`.
fn other_routes(
    state: Arc<ApiState>,
    probes: Arc<ProbeLimiter>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let probe = admitted(probes);
    let metrics = warp::path!("metrics").and(get_or_head()).and(probe.clone()).and(with(state.clone())).map(
        |s: Arc<ApiState>| {
            let mut res = Response::new(s.metrics.render().into());
            res.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; version=0.0.4"));
            res
        },
    );
    let health = warp::path!("health")
        .and(get_or_head())
        .map(|| json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()));
    let ready = warp::path!("ready").and(get_or_head()).and(probe).and(with(state)).then(ready_handler);
    let openapi = warp::path!("openapi.yaml").and(get_or_head()).map(|| {
        let mut res = Response::new(OPENAPI_YAML.into());
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/yaml"));
        res
    });
    metrics.or(health).unify().or(ready).unify().or(openapi).unify().recover(recover).unify()
}

async fn ready_handler(s: Arc<ApiState>) -> Response {
    match s.readiness.check().await {
        Ok(()) => json_response(StatusCode::OK, s.readiness.describe("ready").into()),
        Err(status) => json_response(StatusCode::SERVICE_UNAVAILABLE, s.readiness.describe(status).into()),
    }
}

/// Admits a probe under `limiter`, or rejects it with a `429`.
fn admitted(limiter: Arc<ProbeLimiter>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::ext::get::<SearchRequest>()
        .and_then(move |facts: SearchRequest| {
            let verdict = limiter.check(facts.remote).map_err(warp::reject::custom);
            std::future::ready(verdict)
        })
        .untuple_one()
}

fn with<T: Clone + Send>(t: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || t.clone())
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
