//! The warp server: `GET /search`, `GET /health`, `GET /ready`, `GET /openapi.yaml`.
//!
//! `*_filter()`s extract and validate, handlers take their dependencies explicitly, and
//! [`error::ApiError`] is the one place that shapes error responses. `/search` answers are what HTTP
//! caches expect (ETag, `If-None-Match` → `304`, gzip, `Cache-Control`, `Vary`) through
//! [`crate::search::encoding`], whose representations the search cache keeps.

pub mod error;
pub mod params;
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
pub use search::{cache_control, search_handler, ApiState, SearchRequest};

/// The published contract, served as-is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

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
                Ok(()) => json_response(StatusCode::OK, s.readiness.describe("ready").into()),
                Err(status) => {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, s.readiness.describe(status).into())
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
