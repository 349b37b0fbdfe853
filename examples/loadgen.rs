//! A small fixed-rate HTTP/1.1 load generator for `scripts/loadtest.sh`, wrk2-style: requests are
//! scheduled at a constant rate and each latency is measured from the request's *scheduled* time,
//! so a stalled server is charged for the requests it delayed (no coordinated omission).
//!
//! One OS thread per keep-alive connection, blocking sockets, and `std::thread::sleep` with the
//! timer slack set to 1 µs: the send times are kept to a few tens of µs. (An async runtime's timer
//! wheel has a 1 ms tick, which would charge up to 1 ms of the generator's own lateness to every
//! request.)
//!
//! `loadgen ADDR RATE SECONDS CONNECTIONS PATH_OR_@FILE` (a `@FILE` holds one path per line, used
//! in turn). Prints `RESULT requests/s p50_ms p99_ms p99.9_ms errors`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Outcome {
    latencies_us: Vec<u64>,
    errors: u64,
}

/// One keep-alive connection sending requests `k, k + n, k + 2n, …` at their scheduled times.
fn connection(
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
    let mut line = String::new();
    let mut body = Vec::new();
    let mut i = k;
    loop {
        let scheduled = start + interval.mul_f64(i as f64);
        if scheduled >= end {
            break;
        }
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        if stream.is_none() {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    stream = Some(BufReader::with_capacity(64 * 1024, s));
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
        match request(s, path, &mut line, &mut body) {
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

fn request(
    s: &mut BufReader<TcpStream>,
    path: &str,
    line: &mut String,
    body: &mut Vec<u8>,
) -> std::io::Result<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.get_mut().write_all(req.as_bytes())?;
    line.clear();
    s.read_line(line)?;
    let status: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        if s.read_line(line)? == 0 {
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
    body.resize(length, 0);
    s.read_exact(body)?;
    Ok(status)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[idx.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this process's timer slack (default 50 µs).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong);
    }
    let paths = Arc::new(paths);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + duration;
    let threads: Vec<_> = (0..conns)
        .map(|k| {
            let paths = paths.clone();
            std::thread::spawn(move || connection(addr, paths, k, conns, interval, start, end))
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let o = t.join().map_err(|_| "connection thread panicked")?;
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
