//! A provider simulator: a real HTTP server serving real provider XML, for tests, benchmarks, demos
//! and `docker-compose.yml`.
//!
//! It serves either fixture files in rotation (each request gets the next file; the last one is
//! repeated, like the real provider's consecutive snapshots) or a generated feed (seeded and
//! reproducible; request `n` gets round `n`, so plans appear, change and disappear between fetches).
//! Fault modes mix freely and can be changed while it runs: error statuses at a given rate, added
//! latency, a stall in the middle of the body, a truncated body, malformed XML, a wrong or missing
//! content type, gzip, a body sent in small pieces. [`hostile_body`] builds the feeds of a
//! hostile provider (an amplification feed, a huge doctype, values at the edge of the rules).

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use parking_lot::{Mutex, RwLock};
use rand::Rng;
use tokio::net::TcpListener;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::feed::{generate, GenSpec};

/// Where the bodies come from.
#[derive(Debug, Clone)]
pub enum FeedSource {
    /// Served in order; the last one repeats.
    Rotation(Vec<Bytes>),
    /// Request `n` gets round `n` of the generated feed.
    Generated(GenSpec),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentType {
    #[default]
    ApplicationXml,
    TextXml,
    /// No content-type header at all.
    Missing,
    /// A lie: `text/html`.
    Wrong,
}

/// Fault modes; the default is a healthy provider.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Share (0..=1) of requests answered with one of `error_statuses` instead of the feed.
    pub error_rate: f64,
    /// Statuses for failed requests (500 and 503 when empty).
    pub error_statuses: Vec<u16>,
    /// Delay before the response starts.
    pub latency: Duration,
    /// Pause in the middle of the body.
    pub stall: Option<Duration>,
    /// Send only the first half of the body, then end the response cleanly.
    pub truncate: bool,
    /// Break a tag in the middle of the body.
    pub malformed: bool,
    pub content_type: ContentType,
    /// Compress the body (`content-encoding: gzip`).
    pub gzip: bool,
    /// Send the body in pieces of this many bytes (chunked), each its own write.
    pub piece_bytes: Option<usize>,
}

/// Feeds a hostile provider sends; see [`hostile_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// One base plan whose `base_plan_id` is `id_bytes` of `x`, holding `plans` empty plans, next
    /// to a good base plan with one valid plan (`Good`, base plan 2, plan 1) and one whose zone has
    /// a negative price (base plan 2, plan 2).
    Amplification { id_bytes: usize, plans: usize },
    /// A `<!DOCTYPE planList [ <!-- … --> ]>` of about `bytes` before the same good base plan.
    Doctype { bytes: usize },
}

/// A good base plan: one valid plan and one with a negative zone price.
const GOOD_BASE_PLAN: &str = r#"<base_plan base_plan_id="2" sell_mode="online" title="Good"><plan plan_id="1" plan_start_date="2021-06-01T20:00:00" plan_end_date="2021-06-01T22:00:00" sell_from="2021-01-01T00:00:00" sell_to="2021-06-01T19:00:00" sold_out="false"><zone zone_id="1" capacity="10" price="20.00" name="A" numbered="false"/></plan><plan plan_id="2" plan_start_date="2021-06-02T20:00:00" plan_end_date="2021-06-02T22:00:00" sell_from="2021-01-01T00:00:00" sell_to="2021-06-01T19:00:00" sold_out="false"><zone zone_id="1" capacity="10" price="-5" name="A" numbered="false"/></plan></base_plan>"#;

/// The body of a [`Hostile`] feed.
pub fn hostile_body(kind: Hostile) -> Bytes {
    let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    match kind {
        Hostile::Amplification { id_bytes, plans } => {
            out.push_str(r#"<planList version="1.0"><output><base_plan base_plan_id=""#);
            out.extend(std::iter::repeat_n('x', id_bytes));
            out.push_str(r#"" sell_mode="online" title="Bad">"#);
            for n in 1..=plans {
                out.push_str(&format!(r#"<plan plan_id="{n}"/>"#));
            }
            out.push_str("</base_plan>");
        }
        Hostile::Doctype { bytes } => {
            out.push_str("<!DOCTYPE planList [ ");
            let comment = "<!-- ]> <planList> padding padding padding padding padding -->\n";
            out.extend(std::iter::repeat_n(comment, bytes / comment.len() + 1));
            out.push_str(r#"]><planList version="1.0"><output>"#);
        }
    }
    out.push_str(GOOD_BASE_PLAN);
    out.push_str("</output></planList>");
    out.into()
}

/// What the simulator serves; shared with the caller, who may change it while it runs.
#[derive(Debug)]
pub struct Simulator {
    source: RwLock<FeedSource>,
    faults: RwLock<Faults>,
    /// The last generated round, so a large body is built once per round.
    generated: Mutex<Option<(u64, Bytes)>>,
    /// Requests received so far.
    pub requests: AtomicU64,
    /// Requests answered with the feed (not with an injected error).
    pub served: AtomicU64,
    /// The next this many requests get a 503, whatever the faults: a deterministic outage.
    fail_next: AtomicU64,
}

impl Simulator {
    pub fn new(source: FeedSource, faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            source: RwLock::new(source),
            faults: RwLock::new(faults),
            generated: Mutex::new(None),
            requests: AtomicU64::new(0),
            served: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
        })
    }

    pub fn with_bodies(bodies: Vec<Bytes>) -> Arc<Self> {
        Self::new(FeedSource::Rotation(bodies), Faults::default())
    }

    /// Reads the files now, in order.
    pub fn from_files(paths: &[std::path::PathBuf]) -> std::io::Result<Arc<Self>> {
        let bodies = paths.iter().map(|p| std::fs::read(p).map(Bytes::from)).collect::<Result<_, _>>()?;
        Ok(Self::with_bodies(bodies))
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.write() = faults;
    }

    /// Answers the next `n` requests with `503 Service Unavailable`, then serves as configured.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    pub fn set_source(&self, source: FeedSource) {
        *self.source.write() = source;
        *self.generated.lock() = None;
    }

    fn body(&self, n: u64) -> Option<Bytes> {
        match &*self.source.read() {
            FeedSource::Rotation(bodies) => {
                bodies.get((n as usize).min(bodies.len().saturating_sub(1))).cloned()
            }
            FeedSource::Generated(spec) => {
                let mut cached = self.generated.lock();
                match &*cached {
                    Some((round, body)) if *round == n => Some(body.clone()),
                    _ => {
                        let body = Bytes::from(generate(spec, n.min(u64::from(u32::MAX)) as u32));
                        *cached = Some((n, body.clone()));
                        Some(body)
                    }
                }
            }
        }
    }

    async fn respond(self: Arc<Self>) -> Response {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let faults = self.faults.read().clone();
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        if self.fail_next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "provider outage");
        }
        if faults.error_rate > 0.0 && rand::rng().random_bool(faults.error_rate.clamp(0.0, 1.0)) {
            let statuses =
                if faults.error_statuses.is_empty() { vec![500, 503] } else { faults.error_statuses.clone() };
            let status = statuses[rand::rng().random_range(0..statuses.len())];
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return plain(status, "provider error");
        }
        let n = self.served.fetch_add(1, Ordering::Relaxed);
        let Some(body) = self.body(n) else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no feed configured");
        };
        let body = damaged(body, &faults);
        let mut res = match (faults.stall, faults.piece_bytes) {
            // One piece with its length: hyper hands the whole buffer to the socket.
            (None, None) => Response::new(body.into()),
            (stall, piece) => stream_body(body, stall.unwrap_or_default(), piece.unwrap_or(64 * 1024).max(1))
                .into_response(),
        };
        let headers = res.headers_mut();
        match faults.content_type {
            ContentType::ApplicationXml => {
                headers.insert("content-type", HeaderValue::from_static("application/xml"));
            }
            ContentType::TextXml => {
                headers.insert("content-type", HeaderValue::from_static("text/xml; charset=utf-8"));
            }
            ContentType::Wrong => {
                headers.insert("content-type", HeaderValue::from_static("text/html"));
            }
            ContentType::Missing => {}
        }
        if faults.gzip {
            headers.insert("content-encoding", HeaderValue::from_static("gzip"));
        }
        res
    }
}

/// A short text answer with `status`.
fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut res = Response::new(text.into());
    *res.status_mut() = status;
    res
}

/// `body` as the faults leave it: made malformed, truncated, gzipped.
fn damaged(mut body: Bytes, faults: &Faults) -> Bytes {
    if faults.malformed && body.len() > 16 {
        let mut broken = body.to_vec();
        // Turn the first '<' after the middle into garbage that is not XML.
        let mid = broken.len() / 2;
        if let Some(i) = broken[mid..].iter().position(|&b| b == b'<') {
            broken[mid + i] = b'%';
            broken.insert(mid + i + 1, b'<');
            broken.insert(mid + i + 2, b'>');
        }
        body = broken.into();
    }
    if faults.truncate {
        body = body.slice(..body.len() / 2);
    }
    if faults.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(&body);
        body = enc.finish().unwrap_or_default().into();
    }
    body
}

/// Streams `body` in pieces of `piece` bytes (chunked), pausing `stall` half-way.
fn stream_body(body: Bytes, stall: Duration, piece: usize) -> impl Reply {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let half = body.len() / 2;
        let mut at = 0;
        let mut stalled = false;
        while at < body.len() {
            let end = (at + piece).min(body.len());
            let end = if !stalled && at < half && end > half { half } else { end };
            if tx.send(Ok(body.slice(at..end))).await.is_err() {
                return;
            }
            at = end;
            if !stalled && at >= half && !stall.is_zero() {
                stalled = true;
                tokio::time::sleep(stall).await;
            }
        }
    });
    warp::reply::stream(rx)
}

/// Serves `sim` on every GET path until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    sim: Arc<Simulator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let route = warp::get().then(move || sim.clone().respond());
    warp::serve(route).incoming(listener).graceful(shutdown).run().await;
}

/// Binds `127.0.0.1:0` and serves in the background; returns the feed URL.
pub async fn spawn_local(sim: Arc<Simulator>) -> std::io::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(run(listener, sim, std::future::pending()));
    Ok(format!("http://{addr}/api/events"))
}

/// `planfeed simulate-provider`.
pub mod cli {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::{ContentType, Faults, FeedSource, Simulator};
    use crate::feed::GenSpec;

    #[derive(Debug, Clone, clap::Args)]
    pub struct SimulateArgs {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        pub listen: SocketAddr,
        /// Feed files served in rotation (the last one repeats). Without files, a feed is generated.
        pub files: Vec<PathBuf>,
        /// Generated feed: base plans.
        #[arg(long, default_value_t = 100)]
        pub base_plans: usize,
        /// Generated feed: plans per base plan.
        #[arg(long, default_value_t = 4)]
        pub plans: usize,
        /// Generated feed: zones per plan.
        #[arg(long, default_value_t = 10)]
        pub zones: usize,
        /// Generated feed: seed (same seed, same feeds).
        #[arg(long, default_value_t = 1)]
        pub seed: u64,
        /// Generated feed: share of offline base plans.
        #[arg(long, default_value_t = 0.1)]
        pub offline_share: f64,
        /// Generated feed: share of invalid plans.
        #[arg(long, default_value_t = 0.01)]
        pub invalid_share: f64,
        /// Share of requests answered with an error status.
        #[arg(long, default_value_t = 0.0)]
        pub error_rate: f64,
        /// Error statuses to pick from, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "500,503")]
        pub error_status: Vec<u16>,
        /// Delay before each response, e.g. 2s.
        #[arg(long, value_parser = humantime::parse_duration)]
        pub latency: Option<Duration>,
        /// Pause in the middle of each body, e.g. 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        pub stall: Option<Duration>,
        /// Send only the first half of each body.
        #[arg(long)]
        pub truncate: bool,
        /// Break the XML in the middle of each body.
        #[arg(long)]
        pub malformed: bool,
        /// Content type: xml, text-xml, none or wrong.
        #[arg(long, default_value = "xml")]
        pub content_type: String,
        /// Gzip the bodies.
        #[arg(long)]
        pub gzip: bool,
        /// Send each body in pieces of this many bytes.
        #[arg(long)]
        pub piece_bytes: Option<usize>,
        /// Serve a hostile feed instead: `amplification` (a 1 MB base_plan_id over 1,000 plans)
        /// or `doctype` (a 60 MB doctype), each beside a good base plan.
        #[arg(long)]
        pub hostile: Option<String>,
    }

    pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
        let source = if let Some(kind) = &args.hostile {
            let kind = match kind.as_str() {
                "amplification" => super::Hostile::Amplification { id_bytes: 1 << 20, plans: 1000 },
                "doctype" => super::Hostile::Doctype { bytes: 60 << 20 },
                other => anyhow::bail!("--hostile must be amplification or doctype, got {other:?}"),
            };
            FeedSource::Rotation(vec![super::hostile_body(kind)])
        } else if args.files.is_empty() {
            FeedSource::Generated(GenSpec {
                base_plans: args.base_plans,
                plans_per_base: args.plans,
                zones_per_plan: args.zones,
                seed: args.seed,
                offline_share: args.offline_share,
                invalid_share: args.invalid_share,
            })
        } else {
            let bodies = args
                .files
                .iter()
                .map(|p| {
                    std::fs::read(p)
                        .map(bytes::Bytes::from)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                })
                .collect::<anyhow::Result<_>>()?;
            FeedSource::Rotation(bodies)
        };
        let content_type = match args.content_type.as_str() {
            "xml" => ContentType::ApplicationXml,
            "text-xml" => ContentType::TextXml,
            "none" => ContentType::Missing,
            "wrong" => ContentType::Wrong,
            other => anyhow::bail!("--content-type must be xml, text-xml, none or wrong, got {other:?}"),
        };
        let faults = Faults {
            error_rate: args.error_rate,
            error_statuses: args.error_status,
            latency: args.latency.unwrap_or_default(),
            stall: args.stall,
            truncate: args.truncate,
            malformed: args.malformed,
            content_type,
            gzip: args.gzip,
            piece_bytes: args.piece_bytes,
        };
        let sim = Simulator::new(source, faults);
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "provider simulator listening (any GET path serves the feed)");
        super::run(listener, sim, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        Ok(())
    }
}
