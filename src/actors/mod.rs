//! The ingestion pipeline, one actor per file.
//!
//! ```text
//! Supervisor ── spawns downstream first, restarts a failed child with capped backoff
//!   Scheduler ──Fetch──> Fetcher ──chunk+permit──> Parser (×N) ──plans+permit──> BatchWriter
//!      ^                    │                                                        │ delivery: the store, else
//!      └──FetchFinished─────┘──────────────────FetchEnd─────────────────────────────>│ the spool; the days written
//!                                                                                    v announced as events
//! ```
//!
//! Backpressure, bounded by bytes: the fetcher takes a permit from a semaphore of
//! `pipeline.queue_chunks` and twice the chunk's bytes (at most all) of `pipeline.queue_bytes`
//! before it hands a chunk on, and reads on only while there is room; a parser hands the chunk's
//! plans on in parts (`batch_size` plans, 4 MiB), each waiting for room until the writer took the
//! earlier ones into its batch. So a slow store slows the download instead of filling memory,
//! whatever the feed's shape. Actors find each other through [`Slot`]s, which the supervisor refills on restart.
//!
//! What crosses actors is in [`messages`]; no actor file imports another, except the supervisor,
//! which spawns them all. What the writer does with a flushed batch is [`crate::delivery`]'s.

pub mod batch_writer;
pub mod fetch_context;
pub mod fetcher;
pub mod messages;
pub mod parser;
pub mod persisted;
pub mod scheduler;
pub mod slot;
pub mod supervisor;

pub use batch_writer::{BatchWriter, BatchWriterArgs};
pub use fetcher::{Fetcher, FetcherArgs};
pub use messages::{
    ChunkJob, ChunkPlans, FetchContext, FetchEnd, FetcherMsg, ParserMsg, SchedulerMsg, WriterMsg,
};
pub use parser::Parser;
pub use scheduler::{Scheduler, SchedulerArgs};
pub use slot::{ParserPool, Slot};
pub use supervisor::{PipelineArgs, Supervisor, SupervisorMsg};
