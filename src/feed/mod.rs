//! The provider feed: cutting a streamed body into chunks of whole base plans, and parsing a
//! chunk into domain [`Plan`](crate::domain::Plan)s.
//!
//! The fetcher feeds body bytes to a [`Chunker`], which hands out chunks holding whole base plans
//! only; each chunk is parsed on its own, so parsing can run on a pool and a truncated body still
//! yields the base plans completed before the cut. The pipeline parses a chunk in parts bounded in
//! plans and estimated bytes ([`ChunkParse`]), so one base plan of 350,000 plans is never
//! 350,000 plans in memory; [`parse_chunk`] parses a chunk in one go. [`generate`] writes
//! reproducible synthetic feeds for tests, benchmarks and the provider simulator.

mod chunk;
mod error;
mod fields;
mod generate;
mod parse;
mod text;

pub use chunk::Chunker;
pub use error::FeedError;
pub use fields::{SkipKind, MAX_ID};
pub use generate::{
    feed_shaped_stored_plan, generate, generate_into, generate_titled_into, random_stored_plan,
    stored_plan_origin, GenSpec, GenStats,
};
pub use parse::{parse_chunk, parse_document, plan_bytes, ChunkParse, ParsedChunk, PartBounds, Skipped};
pub use text::{Shown, MAX_TEXT_BYTES, SHOWN_BYTES};
