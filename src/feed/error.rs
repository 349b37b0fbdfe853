/// Why a feed body (or a chunk of it) could not be read in full.
///
/// Invalid plans are not errors: they are reported as [`Skipped`](super::Skipped).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FeedError {
    #[error("empty body")]
    Empty,
    #[error("not xml: {0}")]
    NotXml(String),
    #[error("wrong document shape: {0}")]
    WrongShape(String),
    #[error("body truncated after {bytes} bytes: root element not closed")]
    Truncated { bytes: u64 },
    #[error("base plan larger than the limit of {limit} bytes")]
    ElementTooLarge { limit: usize },
    #[error("malformed xml: {0}")]
    Malformed(String),
}
