//! `cargo bench --bench parser`: criterion figures (MB/s) for the feed's hot code over a generated
//! feed of 200 base plans × 4 plans × 200 zones (about 16 MB, the pipeline bench's shape):
//! quick-xml's bare event loop (the ceiling) and the same loop reading every attribute, the
//! chunker cutting the body at base plan ends, and `parse_chunk` (validation and domain types) over
//! the chunks the fetcher would hand out.
//! The whole pipeline is measured by `cargo bench --bench pipeline`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use planfeed::feed::{generate, parse_chunk, Chunker, GenSpec};

mod support;

fn feed() -> Vec<u8> {
    let spec = GenSpec {
        base_plans: 200,
        plans_per_base: 4,
        zones_per_plan: 200,
        seed: 1,
        offline_share: 0.1,
        invalid_share: 0.01,
    };
    generate(&spec, 0)
}

fn chunks(body: &[u8]) -> Vec<bytes::Bytes> {
    let mut chunker = Chunker::new(256 * 1024, usize::MAX);
    let mut chunks = chunker.push(body).expect("chunks");
    chunks.extend(chunker.flush());
    chunks.extend(chunker.finish().expect("complete feed"));
    chunks
}

fn bench_parser(c: &mut Criterion) {
    let body = feed();
    let pieces = chunks(&body);
    assert!(pieces.len() > 10, "the feed is cut into many chunks");
    let provider: Arc<str> = Arc::from("bench");
    let mut group = c.benchmark_group("feed");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("quick_xml_events", |b| b.iter(|| support::raw_events(&body)));
    group.bench_function("quick_xml_attributes", |b| b.iter(|| support::events_with_attributes(&body)));
    group.bench_function("chunker", |b| b.iter(|| chunks(std::hint::black_box(&body)).len()));
    group.bench_function("parse_chunk", |b| {
        b.iter(|| pieces.iter().map(|c| parse_chunk(&provider, c).plans.len()).sum::<usize>())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench_parser
}
criterion_main!(benches);
