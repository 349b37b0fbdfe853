//! `/search` as HTTP caches and clients expect, against the real binary on an embedded store:
//! ETags equal across two replicas and a restart, `If-None-Match` → `304`, gzip negotiated from
//! `Accept-Encoding` (q-values included) and decompressing to the plain body, `HEAD` with `GET`'s
//! headers, error answers unchanged.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use common::binary::{free_port, Planfeed};
use common::{plan, stored};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use reqwest::header::{
    HeaderMap, ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, VARY,
};
use reqwest::{Method, StatusCode};

/// 40 plans on 2021-07-01 (an answer of several KB), one on 2021-07-02 (an answer under the gzip
/// threshold).
const DAY: &str = "/search?starts_at=2021-07-01T00:00:00Z&ends_at=2021-07-01T23:59:59Z";
const SMALL: &str = "/search?starts_at=2021-07-02T00:00:00Z&ends_at=2021-07-02T23:59:59Z";

async fn fill_store(db: &Path) {
    let store: SharedStore = Arc::new(SqliteStore::open(db).unwrap());
    let mut plans: Vec<_> = (0..40)
        .map(|i| {
            let start = format!("2021-07-01T{:02}:{:02}:00", 8 + i / 4, (i % 4) * 15);
            let end = format!("2021-07-01T{:02}:{:02}:00", 9 + i / 4, (i % 4) * 15);
            stored(plan("fever", 1, i, &format!("Concert number {i} in the park"), &start, &end), 1)
        })
        .collect();
    plans.push(stored(plan("fever", 2, 100, "Lonely", "2021-07-02T10:00:00", "2021-07-02T11:00:00"), 1));
    store.write_plans(&plans).await.unwrap();
}

/// An `api` replica on the store `db`, from its own config folder `dir`, with `max-age` 7 s.
async fn replica(dir: &Path, db: &Path, port: u16) -> Planfeed {
    replica_with(dir, db, port, "").await
}

/// [`replica`] with `extra` appended to its configuration.
async fn replica_with(dir: &Path, db: &Path, port: u16, extra: &str) -> Planfeed {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("local.toml"),
        format!(
            "role = \"api\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\n\
             [spool]\npath = \"{}\"\n[http]\ncache_max_age = \"7s\"\n{extra}",
            db.display(),
            dir.join("spool").display()
        ),
    )
    .unwrap();
    let mut pf = Planfeed::serve(dir, port);
    pf.wait_ready().await;
    pf
}

/// One replica on a filled store in a fresh folder.
async fn start() -> (Planfeed, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("planfeed.db");
    fill_store(&db).await;
    let pf = replica(&dir.path().join("a"), &db, free_port()).await;
    (pf, dir)
}

/// A client that neither asks for nor decodes compression on its own.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().build().unwrap()
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: reqwest::header::HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn request(method: Method, url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> Got {
    let mut req = client().request(method, url);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.bytes().await.unwrap().to_vec();
    Got { status, headers, body }
}

async fn get(url: &str, headers: &[(reqwest::header::HeaderName, &str)]) -> Got {
    request(Method::GET, url, headers).await
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
    out
}

fn event_count(body: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["data"]["events"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_answers_carry_equal_tags_across_replicas_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("planfeed.db");
    fill_store(&db).await;
    let port_a = free_port();
    let mut a = replica(&dir.path().join("a"), &db, port_a).await;
    let b = replica(&dir.path().join("b"), &db, free_port()).await;
    let from_a = get(&format!("{}{DAY}", a.base), &[]).await;
    let from_b = get(&format!("{}{DAY}", b.base), &[]).await;
    assert_eq!(from_a.status, 200);
    assert_eq!(event_count(&from_a.body), 40);
    assert_eq!(from_a.body, from_b.body);
    let tag = from_a.header(ETAG).unwrap().to_owned();
    assert!(tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"), "strong: {tag}");
    assert_eq!(from_b.header(ETAG), Some(tag.as_str()), "replica b");
    // The gzip representations agree too.
    let gz_a = get(&format!("{}{DAY}", a.base), &[(ACCEPT_ENCODING, "gzip")]).await;
    let gz_b = get(&format!("{}{DAY}", b.base), &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(gz_a.header(ETAG), gz_b.header(ETAG));
    assert_ne!(gz_a.header(ETAG), Some(tag.as_str()), "one tag per representation");

    // A tag from replica b revalidates on replica a, and on a after a restart.
    let asked = [(IF_NONE_MATCH, tag.as_str())];
    assert_eq!(get(&format!("{}{DAY}", a.base), &asked).await.status, 304);
    a.signal(libc::SIGTERM);
    a.wait_exit(common::PATIENCE).await;
    let a = replica(&dir.path().join("a"), &db, port_a).await;
    let again = get(&format!("{}{DAY}", a.base), &[]).await;
    assert_eq!(again.header(ETAG), Some(tag.as_str()), "after a restart");
    assert_eq!(get(&format!("{}{DAY}", a.base), &asked).await.status, 304);
    // A different answer has a different tag.
    let other = get(&format!("{}{SMALL}", b.base), &[]).await;
    assert_ne!(other.header(ETAG), Some(tag.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_answers_304_with_the_headers_of_the_200() {
    let (pf, _dir) = start().await;
    let url = format!("{}{DAY}", pf.base);
    let full = get(&url, &[]).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.header(CACHE_CONTROL), Some("max-age=7"), "from http.cache_max_age");
    assert_eq!(full.header(VARY), Some("accept-encoding"));
    assert_eq!(full.header(CONTENT_TYPE), Some("application/json"));
    let tag = full.header(ETAG).unwrap().to_owned();
    let weak = format!("W/{tag}");
    let listed = format!("\"other\", {tag}");
    for condition in [tag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let res = get(&url, &[(IF_NONE_MATCH, condition)]).await;
        assert_eq!(res.status, 304, "If-None-Match: {condition}");
        assert!(res.body.is_empty());
        assert_eq!(res.header(ETAG), Some(tag.as_str()));
        assert_eq!(res.header(CACHE_CONTROL), Some("max-age=7"));
        assert_eq!(res.header(VARY), Some("accept-encoding"));
        assert_eq!(res.header(CONTENT_ENCODING), None);
    }
    for condition in ["\"other\"", "\"\"", "nonsense"] {
        let res = get(&url, &[(IF_NONE_MATCH, condition)]).await;
        assert_eq!(res.status, 200, "If-None-Match: {condition}");
        assert_eq!(res.body, full.body);
    }
    // The plain tag does not validate the gzip representation, and the other way round.
    let res = get(&url, &[(IF_NONE_MATCH, tag.as_str()), (ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!((res.status, res.header(CONTENT_ENCODING)), (StatusCode::OK, Some("gzip")));
    let gz_tag = res.header(ETAG).unwrap().to_owned();
    let res = get(&url, &[(IF_NONE_MATCH, gz_tag.as_str()), (ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!((res.status, res.header(ETAG)), (StatusCode::NOT_MODIFIED, Some(gz_tag.as_str())));
    assert!(res.body.is_empty());
    assert_eq!(get(&url, &[(IF_NONE_MATCH, gz_tag.as_str())]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_is_negotiated_and_decompresses_to_the_plain_body() {
    let (pf, _dir) = start().await;
    let url = format!("{}{DAY}", pf.base);
    let plain = get(&url, &[]).await;
    assert_eq!(plain.header(CONTENT_ENCODING), None);
    let plain_tag = plain.header(ETAG).unwrap().trim_end_matches('"').to_owned();
    for accept in ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.2", "*", "identity;q=0.5, *;q=0.1"] {
        let gz = get(&url, &[(ACCEPT_ENCODING, accept)]).await;
        assert_eq!(gz.status, 200, "{accept}");
        assert_eq!(gz.header(CONTENT_ENCODING), Some("gzip"), "{accept}");
        assert_eq!(gz.header(VARY), Some("accept-encoding"));
        assert_eq!(gz.header(ETAG), Some(format!("{plain_tag}-gzip\"").as_str()));
        assert!(gz.body.len() < plain.body.len() / 3, "{} of {}", gz.body.len(), plain.body.len());
        assert_eq!(gunzip(&gz.body), plain.body, "{accept}");
        let length: usize = gz.header(CONTENT_LENGTH).unwrap().parse().unwrap();
        assert_eq!(length, gz.body.len());
    }
    // q=0 excludes gzip, whatever else is listed; unknown codings alone mean plain.
    for accept in ["gzip;q=0", "gzip;q=0.000, identity", "*;q=0", "*, gzip;q=0", "br, deflate"] {
        let res = get(&url, &[(ACCEPT_ENCODING, accept)]).await;
        assert_eq!(res.header(CONTENT_ENCODING), None, "{accept}");
        assert_eq!(res.body, plain.body, "{accept}");
        assert_eq!(res.header(ETAG), plain.header(ETAG), "{accept}");
        assert_eq!(res.header(VARY), Some("accept-encoding"));
    }
    // A small answer goes out plain even to a client that takes gzip.
    let small = get(&format!("{}{SMALL}", pf.base), &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!((small.status, small.header(CONTENT_ENCODING)), (StatusCode::OK, None));
    assert_eq!(event_count(&small.body), 1);
    assert!(small.body.len() < planfeed::search::encoding::GZIP_MIN_BYTES);
    assert_eq!(small.header(VARY), Some("accept-encoding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_carries_the_headers_of_get_and_errors_are_unchanged() {
    let (pf, _dir) = start().await;
    let url = format!("{}{DAY}", pf.base);
    let names = [CONTENT_TYPE, CONTENT_LENGTH, CONTENT_ENCODING, ETAG, CACHE_CONTROL, VARY];
    for accept in ["identity", "gzip"] {
        let got = get(&url, &[(ACCEPT_ENCODING, accept)]).await;
        let head = request(Method::HEAD, &url, &[(ACCEPT_ENCODING, accept)]).await;
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        for name in &names {
            assert_eq!(head.header(name.clone()), got.header(name.clone()), "{name} with {accept}");
        }
        assert!(got.header(ETAG).is_some());
        let tag = got.header(ETAG).unwrap();
        let head = request(Method::HEAD, &url, &[(ACCEPT_ENCODING, accept), (IF_NONE_MATCH, tag)]).await;
        assert_eq!((head.status, head.header(ETAG)), (StatusCode::NOT_MODIFIED, Some(tag)));
    }
    // Errors keep their shape and carry no validator and no coding.
    let bad = get(&format!("{}/search?starts_at=tomorrow", pf.base), &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(bad.status, 400);
    let v: serde_json::Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(v["error"]["code"], "invalid_parameter");
    assert_eq!((bad.header(ETAG), bad.header(CONTENT_ENCODING)), (None, None));
}

/// Four days of 80 plans each (about 20 KB a day), and a small day: answers above the body cache
/// limit of a 1 MiB cache (16 KiB), made of whole days, cut days and a small day.
async fn fill_big_store(db: &Path) {
    let store: SharedStore = Arc::new(SqliteStore::open(db).unwrap());
    let mut plans = Vec::new();
    for day in 1..=4u64 {
        for i in 0..80u64 {
            let (h, m) = (1 + i / 4, (i % 4) * 15);
            let start = format!("2021-08-{day:02}T{h:02}:{m:02}:00");
            let end = format!("2021-08-{day:02}T{:02}:{m:02}:00", h + 1);
            let title = format!("Evening number {i} of day {day}, with a \"quoted\" title");
            plans.push(stored(plan("fever", day, day * 1000 + i, &title, &start, &end), 1));
        }
    }
    plans.push(stored(plan("fever", 9, 9, "Lonely", "2021-08-05T10:00:00", "2021-08-05T11:00:00"), 1));
    store.write_plans(&plans).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_equals_the_buffered_one_and_carries_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("planfeed.db");
    fill_big_store(&db).await;
    // `small` streams every answer above 16 KiB from its days; `big` (default budget) copies and
    // caches them.
    let small_cache = "[search]\ncache_bytes = 1048576\n";
    let small = replica_with(&dir.path().join("small"), &db, free_port(), small_cache).await;
    let big = replica(&dir.path().join("big"), &db, free_port()).await;
    let open = "/search";
    let cut = "/search?starts_at=2021-08-01T12:00:00Z&ends_at=2021-08-04T12:00:00Z";
    for (path, events) in [(open, 321), (cut, 237)] {
        let buffered = get(&format!("{}{path}", big.base), &[]).await;
        let streamed = get(&format!("{}{path}", small.base), &[]).await;
        assert_eq!(streamed.status, 200, "{path}");
        assert!(streamed.body.len() > 16 * 1024, "{path}: {} bytes", streamed.body.len());
        assert_eq!(event_count(&streamed.body), events, "{path}");
        assert_eq!(streamed.body, buffered.body, "{path}");
        let tag = buffered.header(ETAG).unwrap();
        assert_eq!(streamed.header(ETAG), Some(tag), "{path}");
        let length = streamed.body.len().to_string();
        assert_eq!(streamed.header(CONTENT_LENGTH), Some(length.as_str()), "{path}");
        for name in [CONTENT_TYPE, CACHE_CONTROL, VARY] {
            assert_eq!(streamed.header(name.clone()), buffered.header(name.clone()), "{path}: {name}");
        }
        // HEAD: the same headers, no body.
        let head = request(Method::HEAD, &format!("{}{path}", small.base), &[]).await;
        assert_eq!((head.status, head.header(CONTENT_LENGTH)), (StatusCode::OK, Some(length.as_str())));
        assert_eq!(head.header(ETAG), Some(tag));
        assert!(head.body.is_empty());
        // A streamed answer goes out plain even when gzip is accepted, with the plain tag.
        let gz = get(&format!("{}{path}", small.base), &[(ACCEPT_ENCODING, "gzip")]).await;
        assert_eq!((gz.header(CONTENT_ENCODING), gz.header(ETAG)), (None, Some(tag)), "{path}");
        assert_eq!(gz.body, buffered.body);
        // And revalidates like any other.
        let res = get(&format!("{}{path}", small.base), &[(IF_NONE_MATCH, tag)]).await;
        assert_eq!((res.status, res.header(ETAG)), (StatusCode::NOT_MODIFIED, Some(tag)), "{path}");
        assert!(res.body.is_empty());
    }
}

/// `/search` has one route from the server to the handler: `GET`/`HEAD` of `/search` (and of
/// `/search/`, which warp's path matching always took as the same path) answer the same bytes
/// and are counted once each; other methods get the contract's `405` with `Allow`, and other paths
/// a `404`, neither counted as searches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_answered_by_one_route_whatever_the_target_or_method() {
    let (pf, _dir) = start().await;
    let query = &DAY["/search".len()..];
    let counted = || async {
        let text = common::scrape::metrics_text(&pf.base).await;
        let ok =
            common::scrape::sample(&text, r#"planfeed_http_requests_total{path="/search",status="200"}"#);
        ok.unwrap_or(0.0)
    };
    let before = counted().await;
    let plain = get(&format!("{}/search{query}", pf.base), &[]).await;
    let slash = get(&format!("{}/search/{query}", pf.base), &[]).await;
    assert_eq!((plain.status, slash.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(event_count(&plain.body), 40);
    assert_eq!(slash.body, plain.body);
    assert_eq!(slash.header(ETAG), plain.header(ETAG));
    let head = request(Method::HEAD, &format!("{}/search/{query}", pf.base), &[]).await;
    assert_eq!((head.status, head.header(ETAG)), (StatusCode::OK, plain.header(ETAG)));
    assert_eq!(counted().await, before + 3.0, "each search counted once");

    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        for path in ["/search", "/search/"] {
            let res = request(method.clone(), &format!("{}{path}{query}", pf.base), &[]).await;
            assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(res.header(reqwest::header::ALLOW), Some("GET, HEAD"), "{method} {path}");
            let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
            assert_eq!(v["error"]["code"], "method_not_allowed", "{method} {path}");
        }
    }
    for path in ["/searches", "/search/x", "//search", "/Search", "/search//"] {
        let res = get(&format!("{}{path}{query}", pf.base), &[]).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{path}");
    }
    assert_eq!(counted().await, before + 3.0, "refused requests are not searches");
}
