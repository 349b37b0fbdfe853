//! What one fetch of a provider is made of, apart from the actor that runs it
//! ([`crate::actors::Fetcher`]): why it failed ([`FetchError`]) and the circuit breaker that
//! decides whether it is sent at all ([`breaker`]).

pub mod breaker;
pub mod error;

pub use breaker::{Admission, Breaker, SharedBreaker};
pub use error::{FetchError, RequestError};
