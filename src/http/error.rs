//! The one place that maps errors to status codes and the contract's error body
//! `{"data": null, "error": {"code": "...", "message": "..."}}`.

use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code, message: message.into(), retry_after_secs: None }
    }

    /// Store failures never leak their details to clients (they are logged instead).
    pub fn internal() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: "the search could not be completed, please retry later".into(),
            retry_after_secs: None,
        }
    }

    pub fn not_found() -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: "no such resource".into(),
            retry_after_secs: None,
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: "only GET and HEAD are supported".into(),
            retry_after_secs: None,
        }
    }

    /// A connection over the open-connection limits (written by the accept loop itself).
    pub fn too_many_connections() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "too_many_connections",
            message: "too many open connections from this client or in total, retry in 1 s".into(),
            retry_after_secs: Some(1),
        }
    }

    pub fn uri_too_long(limit: usize) -> Self {
        Self {
            status: StatusCode::URI_TOO_LONG,
            code: "uri_too_long",
            message: format!("the request target is longer than {limit} bytes"),
            retry_after_secs: None,
        }
    }

    pub fn headers_too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "headers_too_large",
            message: format!("the request headers are larger than {limit} bytes"),
            retry_after_secs: None,
        }
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many requests, retry in {retry_after_secs} s"),
            retry_after_secs: Some(retry_after_secs),
        }
    }

    pub fn body(&self) -> String {
        serde_json::json!({"data": null, "error": {"code": self.code, "message": self.message}}).to_string()
    }

    pub fn into_response(self) -> Response {
        let mut res = Response::new(self.body().into());
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after_secs {
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110 requires a 405 to list the supported methods.
            headers.insert("allow", HeaderValue::from_static("GET, HEAD"));
        }
        res
    }
}

impl warp::reject::Reject for ApiError {}
