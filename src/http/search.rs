//! `/search` itself: its route, what it reads of a request, its handler (rate limits, parameters,
//! the cached answer), the answer's representation (ETag, `If-None-Match` → `304`, gzip, a large
//! answer streamed from the cached days), and the state the handlers share.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use warp::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY,
};
use warp::http::uri::PathAndQuery;
use warp::http::{HeaderName, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::{params, rate_limit};
use crate::domain::TimeRange;
use crate::metrics::{self, MetricsSource};
use crate::search::encoding::{self, Coding};
use crate::search::{Answer, Content, Searcher};

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

impl ApiState {
    /// A copy for one connection, sharing no reference count that its requests touch with other
    /// connections: a handle cloned per request from one shared by every core moves its cache
    /// line between cores on each request.
    pub fn for_connection(&self) -> Arc<Self> {
        let mut state = self.clone();
        state.cache_control =
            HeaderValue::from_bytes(self.cache_control.as_bytes()).expect("copied from a valid header value");
        Arc::new(state)
    }
}

/// `Cache-Control` for `/search` answers reusable for `max_age` (`http.cache_max_age`).
pub fn cache_control(max_age: std::time::Duration) -> HeaderValue {
    HeaderValue::try_from(format!("max-age={}", max_age.as_secs())).expect("digits are a valid header value")
}

/// What `/search` needs of a request, taken from it once by the server ([`super::server::serve`]
/// hands it to [`search_handler`], and puts it in the extensions of the requests the warp routes
/// answer, whose probes read the client's address from it): who asks (for the rate limits), the target (its query is parsed
/// by the handler so repeated parameters are detected), and the two headers that choose the
/// representation. Shares the request's bytes: no copy of the header map or the target.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub remote: Option<std::net::SocketAddr>,
    /// Every `X-Forwarded-For` line, joined into one list (read from a trusted proxy only: a
    /// proxy may append its own line, and the walk starts from the right).
    pub forwarded_for: Option<HeaderValue>,
    pub target: Option<PathAndQuery>,
    /// Every `If-None-Match` line, joined into one list.
    pub if_none_match: Option<HeaderValue>,
    /// Every `Accept-Encoding` line, joined into one list.
    pub accept_encoding: Option<HeaderValue>,
}

impl SearchRequest {
    /// The facts of `req`, from `remote`, in one pass over its header lines (a lookup per header
    /// hashes its name and probes the map: three of them cost more than the pass).
    pub fn of<B>(req: &warp::http::Request<B>, remote: std::net::SocketAddr) -> Self {
        let mut facts =
            Self { remote: Some(remote), target: req.uri().path_and_query().cloned(), ..Self::default() };
        for (name, value) in req.headers() {
            if name == IF_NONE_MATCH {
                join(&mut facts.if_none_match, value);
            } else if name == ACCEPT_ENCODING {
                join(&mut facts.accept_encoding, value);
            } else if name == X_FORWARDED_FOR {
                join(&mut facts.forwarded_for, value);
            }
        }
        facts
    }

    /// The raw query string (empty without one).
    pub fn query(&self) -> &str {
        self.target.as_ref().and_then(PathAndQuery::query).unwrap_or("")
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Adds a line of a list header to `list`: all lines as one value (RFC 9110 §5.3: equivalent to
/// the separate lines); the usual single line is shared, not copied.
fn join(list: &mut Option<HeaderValue>, line: &HeaderValue) {
    *list = match list.take() {
        None => Some(line.clone()),
        Some(first) => {
            let mut joined = first.as_bytes().to_vec();
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(line.as_bytes());
            HeaderValue::from_bytes(&joined).ok()
        }
    };
}

/// Where a request goes where `/search` is served ([`route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD` of `/search`: [`search_handler`].
    Search,
    /// Another method on `/search`: the contract's `405` with `Allow`.
    MethodNotAllowed,
    /// Any other path: the warp routes of the other endpoints.
    Elsewhere,
}

/// `/search`'s one route, taken by the server before the warp routes see the request: the handler
/// is called without warp's filter chain, the boxed request body and the route bookkeeping, which
/// cost a measurable share of a warm answer (ADR 14). The path is `/search`, or `/search/` (one
/// trailing slash, as warp's path matching took it when it held the route), with any query.
pub fn route<B>(req: &warp::http::Request<B>) -> Route {
    let path = req.uri().path();
    if path != "/search" && path != "/search/" {
        return Route::Elsewhere;
    }
    let method = req.method();
    if method == warp::http::Method::GET || method == warp::http::Method::HEAD {
        Route::Search
    } else {
        Route::MethodNotAllowed
    }
}

/// The `/search` handler: rate limits, parameters, cached answer, its representation for the
/// request's `Accept-Encoding` and `If-None-Match`, metrics. Public for the benches.
pub async fn search_handler(req: SearchRequest, state: Arc<ApiState>) -> Response {
    let started = std::time::Instant::now();
    let response = answer_search(&req, &state, started).await;
    metrics::record_search(response.status(), started.elapsed());
    response
}

async fn answer_search(req: &SearchRequest, state: &ApiState, asked: std::time::Instant) -> Response {
    let forwarded_for = req.forwarded_for.as_ref().and_then(|v| v.to_str().ok());
    let client = match state.limiter.admit(req.remote, forwarded_for) {
        Ok(client) => client,
        Err(e) => return e.into_response(),
    };
    let range: TimeRange = match params::parse_range_remembered(req.query()) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match state.searcher.answer(range, asked).await {
        Ok(answer) => {
            let built = answer.built_bytes();
            let (response, compressed) = represent(answer, req, state).await;
            state.limiter.charge(client, built, compressed);
            response
        }
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
/// §15.4.5 requires of a `304`. Also says how many bytes it compressed (the client is charged).
async fn represent(answer: Answer, req: &SearchRequest, state: &ApiState) -> (Response, usize) {
    let coding = if answer.compressible() && answer.len() >= encoding::GZIP_MIN_BYTES {
        Coding::negotiate(req.accept_encoding.as_ref())
    } else {
        Coding::Identity
    };
    let etag = answer.etag(coding);
    let not_modified = encoding::none_match(req.if_none_match.as_ref(), &etag);
    let mut compressed = 0;
    let mut res = if not_modified {
        let mut res = Response::new(warp::hyper::body::Bytes::new().into());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else if coding == Coding::Gzip {
        let packed = state.searcher.compressed(&answer, encoding::gzip).await;
        let (packed, made) = packed.expect("a compressible answer is cached");
        compressed = made;
        let mut res = Response::new(packed.into());
        res.headers_mut().insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        res
    } else {
        match answer.content() {
            Content::Whole(body) => Response::new(body.into()),
            Content::Pieces(pieces) => streamed(pieces, answer.len()),
        }
    };
    let h = res.headers_mut();
    if !not_modified {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h.insert(ETAG, etag);
    h.insert(CACHE_CONTROL, state.cache_control.clone());
    h.insert(VARY, HeaderValue::from_static("accept-encoding"));
    (res, compressed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_is_routed_by_its_path_and_method() {
        let route_of = |method: &str, target: &str| {
            route(&warp::http::Request::builder().method(method).uri(target).body(()).unwrap())
        };
        for target in ["/search", "/search?starts_at=2021-01-01T00:00:00Z", "/search/", "/search/?ends_at=x"]
        {
            assert_eq!(route_of("GET", target), Route::Search, "{target}");
            assert_eq!(route_of("HEAD", target), Route::Search, "{target}");
            assert_eq!(route_of("POST", target), Route::MethodNotAllowed, "{target}");
            assert_eq!(route_of("OPTIONS", target), Route::MethodNotAllowed, "{target}");
        }
        for target in ["/", "/searches", "/search/x", "//search", "/search//", "/Search", "/health"] {
            assert_eq!(route_of("GET", target), Route::Elsewhere, "{target}");
            assert_eq!(route_of("POST", target), Route::Elsewhere, "{target}");
        }
    }

    #[test]
    fn the_facts_of_a_request_join_repeated_list_lines() {
        let req = warp::http::Request::builder()
            .uri("/search?starts_at=2023-06-15T00:00:00Z")
            .header("if-none-match", "\"a\"")
            .header("accept-encoding", "br")
            .header("x-forwarded-for", "10.0.0.1")
            .header("if-none-match", "\"b\", \"c\"")
            .header("x-forwarded-for", "10.0.0.2")
            .header("accept-encoding", "gzip")
            .body(())
            .unwrap();
        let facts = SearchRequest::of(&req, "127.0.0.1:5000".parse().unwrap());
        let text = |v: &Option<HeaderValue>| v.as_ref().map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(text(&facts.if_none_match).as_deref(), Some("\"a\", \"b\", \"c\""));
        assert_eq!(text(&facts.accept_encoding).as_deref(), Some("br, gzip"));
        assert_eq!(text(&facts.forwarded_for).as_deref(), Some("10.0.0.1, 10.0.0.2"));
        assert_eq!(facts.query(), "starts_at=2023-06-15T00:00:00Z");
        let bare = warp::http::Request::builder().uri("/search").body(()).unwrap();
        let facts = SearchRequest::of(&bare, "127.0.0.1:5000".parse().unwrap());
        assert!(
            facts.if_none_match.is_none() && facts.accept_encoding.is_none() && facts.forwarded_for.is_none()
        );
        assert_eq!(facts.query(), "");
    }
}
