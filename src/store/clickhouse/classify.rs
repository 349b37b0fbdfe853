//! What a ClickHouse failure means for the caller: worth another attempt soon (network trouble,
//! overload), a refusal of the store's own that an operator must fix (credentials, grants, space, a
//! missing table, read-only, a quota, a proxy answering instead), or a rejection of the request.
//! Each statement is bounded by `query_timeout` on each replica ([`timed`]); retrying is the
//! delivery layer's alone ([`crate::delivery`]), so no statement is repeated here.

use std::time::Duration;

use crate::store::{Refusal, StoreError, StoreResult};

pub(super) async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(classify),
        Err(_) => Err(StoreError::Unavailable(format!("clickhouse did not answer within {limit:?}"))),
    }
}

/// Server error codes worth retrying soon: overload, timeouts, network trouble between replicas
/// and "too many parts" back-pressure.
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE
    159, // TIMEOUT_EXCEEDED
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS (insert_quorum)
    286, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// Server error codes that are the store's refusal, whatever is sent.
fn refusal_of(code: u32) -> Option<Refusal> {
    Some(match code {
        192 | 193 | 194 | 516 => Refusal::Credentials, // UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
        195 | 291 | 497 => Refusal::Permission, // IP_ADDRESS_NOT_ALLOWED, DATABASE_ACCESS_DENIED, ACCESS_DENIED
        243 => Refusal::Space,                  // NOT_ENOUGH_SPACE
        60 | 81 => Refusal::MissingTable,       // UNKNOWN_TABLE, UNKNOWN_DATABASE
        164 | 242 => Refusal::ReadOnly,         // READONLY, TABLE_IS_READ_ONLY
        201 => Refusal::Quota,                  // QUOTA_EXPIRED
        _ => return None,
    })
}

/// Maps a client error to transient, refused or rejected.
fn classify(error: clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    let message = error.to_string();
    match &error {
        E::Network(_) | E::TimedOut | E::Other(_) => StoreError::Unavailable(message),
        E::BadResponse(body) => match server_code(body) {
            Some(code) if TRANSIENT_CODES.contains(&code) => StoreError::Unavailable(message),
            Some(code) => match refusal_of(code) {
                Some(cause) => StoreError::refused(cause, message),
                // A full disk shows as a failed file write on some versions.
                None if body.contains("No space left on device") => {
                    StoreError::refused(Refusal::Space, message)
                }
                None => StoreError::Permanent(message),
            },
            // No ClickHouse exception: a proxy's or the server's bare status.
            None => match body.get(..3) {
                Some("401" | "407") => StoreError::refused(Refusal::Credentials, message),
                Some("403" | "404" | "405") => StoreError::refused(Refusal::Proxy, message),
                Some(status) if status.starts_with('4') && status != "429" => StoreError::Permanent(message),
                _ => StoreError::Unavailable(message),
            },
        },
        _ => StoreError::Permanent(message),
    }
}

/// The `N` of a ClickHouse exception text (`Code: 60, e.displayText() = ...` on 18.16,
/// `Code: 60. DB::Exception: ...` on current servers).
fn server_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code:")? + "Code:".len()..];
    let digits: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_codes_decide_transient_refused_or_rejected() {
        let bad = |s: &str| classify(clickhouse::error::Error::BadResponse(s.into()));
        let old = "Code: 60, e.displayText() = DB::Exception: Table x.plans doesn't exist., e.what() = DB::Exception";
        assert_eq!(bad(old).refusal(), Some(Refusal::MissingTable));
        let password = "Code: 194, e.displayText() = DB::Exception: Password required for user default";
        assert_eq!(bad(password).refusal(), Some(Refusal::Credentials));
        let new = "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)";
        assert!(matches!(bad(new), StoreError::Unavailable(_)));
        assert_eq!(
            bad("Code: 164. DB::Exception: Cannot execute query in readonly mode").refusal(),
            Some(Refusal::ReadOnly)
        );
        let full = "Code: 74, e.displayText() = DB::Exception: Cannot write to file /x, errno: 28, strerror: No space left on device";
        assert_eq!(bad(full).refusal(), Some(Refusal::Space));
        assert!(matches!(bad("503 Service Unavailable"), StoreError::Unavailable(_)));
        assert_eq!(bad("401 Unauthorized").refusal(), Some(Refusal::Credentials));
        assert_eq!(bad("404 Not Found").refusal(), Some(Refusal::Proxy));
        let typed = "Code: 53, e.displayText() = DB::Exception: Type mismatch in VALUES section";
        assert!(matches!(bad(typed), StoreError::Permanent(_)));
        assert!(matches!(bad("400 Bad Request"), StoreError::Permanent(_)));
        for refused in [old, password, "404 Not Found"] {
            assert!(bad(refused).is_transient(), "a refusal is waited out: {refused}");
        }
    }
}
