//! The load tests' baseline: a minimal warp server answering every `GET /search` with the same
//! ready-made bytes (a file), so `planfeed`'s figures can be read as a fraction of what warp alone
//! does on this machine.
//!
//! `cargo run --release --example baseline_server -- ADDR BODY_FILE`

use bytes::Bytes;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::Filter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: baseline_server ADDR BODY_FILE";
    let addr: std::net::SocketAddr = args.next().ok_or(usage)?.parse()?;
    let body = Bytes::from(std::fs::read(args.next().ok_or(usage)?)?);
    let route = warp::path!("search").and(warp::get()).map(move || {
        let mut res = Response::new(body.clone().into());
        res.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
        res
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("baseline listening on {}", listener.local_addr()?);
    warp::serve(route).incoming(listener).run().await;
    Ok(())
}
