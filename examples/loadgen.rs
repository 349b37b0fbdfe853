//! A small fixed-rate HTTP/1.1 load generator for `scripts/loadtest.sh`, wrk2-style: requests are
//! scheduled at a constant rate and each latency is measured from the request's *scheduled* time,
//! so a stalled server is charged for the requests it delayed (no coordinated omission).
//!
//! `loadgen ADDR RATE SECONDS CONNECTIONS PATH_OR_@FILE` (a `@FILE` holds one path per line, used
//! in turn). Prints `RESULT requests/s p50_ms p99_ms p99.9_ms errors`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Outcome {
    latencies_us: Vec<u64>,
    errors: u64,
}

/// One keep-alive connection sending requests `k, k + n, k + 2n, …` at their scheduled times.
async fn connection(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    k: usize,
    n: usize,
    interval: Duration,
    start: Instant,
    end: Instant,
) -> Outcome {
    let mut out = Outcome { latencies_us: Vec::new(), errors: 0 };
    let mut stream: Option<BufReader<TcpStream>> = None;
    let mut i = k;
    loop {
        let scheduled = start + interval * i as u32;
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(BufReader::new(s));
                }
                Err(_) => {
                    out.errors += 1;
                    i += n;
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let path = &paths[i % paths.len()];
        match request(s, path).await {
            Ok(200) => out.latencies_us.push(scheduled.elapsed().as_micros() as u64),
            Ok(_) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                stream = None;
            }
        }
        i += n;
    }
    out
}

async fn request(s: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.get_mut().write_all(req.as_bytes()).await?;
    let mut line = String::new();
    s.read_line(&mut line).await?;
    let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    s.read_exact(&mut body).await?;
    Ok(status)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, rate, secs, conns, target] = args.as_slice() else {
        return Err("usage: loadgen ADDR RATE SECONDS CONNECTIONS PATH_OR_@FILE".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let rate: f64 = rate.parse()?;
    let duration = Duration::from_secs_f64(secs.parse()?);
    let conns: usize = conns.parse()?;
    let paths: Vec<String> = match target.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file)?.lines().filter(|l| !l.is_empty()).map(String::from).collect()
        }
        None => vec![target.clone()],
    };
    let paths = Arc::new(paths);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|k| tokio::spawn(connection(addr, paths.clone(), k, conns, interval, start, end)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let o = t.await?;
        all.extend(o.latencies_us);
        errors += o.errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "RESULT {:.0} {:.3} {:.3} {:.3} {}",
        all.len() as f64 / elapsed,
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        errors
    );
    Ok(())
}
