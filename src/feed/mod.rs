//! The provider feed: cutting a streamed body into chunks of whole base plans, and parsing a
//! chunk into domain [`Plan`](crate::domain::Plan)s.
