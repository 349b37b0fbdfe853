//! Fills an embedded store with generated plans for the load tests (`scripts/loadtest.sh`), straight
//! through `Store::write_plans` in batches of 10k: no feed, no pipeline, so 1 M plans take seconds.
//!
//! `cargo run --release --example gen_store -- PATH PLANS [YEARS] [SHAPE]`: PLANS online plans spread
//! evenly at random over YEARS years (default 5) from 2021-01-01 UTC, deterministic for a given PLANS.
//! SHAPE `random` (default) gives every plan its own title, minute and prices; `feed` shapes them as
//! the provider's feed does (shows running 8 days at one hour with round prices), see
//! `planfeed::feed::feed_shaped_stored_plan`.
//! PATH `clickhouse://127.0.0.1:8123/DB` fills (and migrates) a ClickHouse database instead.

use std::path::PathBuf;
use std::time::Instant;

use planfeed::feed::{feed_shaped_stored_plan, random_stored_plan};
use planfeed::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use planfeed::store::sqlite::SqliteStore;
use planfeed::store::SharedStore;
use rand::rngs::StdRng;
use rand::SeedableRng;

const BATCH: usize = 10_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_store PATH PLANS [YEARS] [random|feed]";
    let target = args.next().ok_or(usage)?;
    let plans: u64 = args.next().ok_or(usage)?.parse()?;
    let years: i64 = args.next().map_or(Ok(5), |y| y.parse())?;
    let feed_shaped = match args.next().as_deref() {
        None | Some("random") => false,
        Some("feed") => true,
        Some(_) => return Err(usage.into()),
    };
    let store: SharedStore = match target.strip_prefix("clickhouse://") {
        Some(rest) => {
            let (host, database) = rest.split_once('/').ok_or(usage)?;
            let settings = ClickHouseSettings {
                url: format!("http://{host}"),
                database: database.to_owned(),
                ..ClickHouseSettings::default()
            };
            let store = ClickHouseStore::connect(settings).await?;
            store.migrate().await?;
            std::sync::Arc::new(store)
        }
        None => {
            let path = PathBuf::from(&target);
            let _ = std::fs::remove_file(&path);
            std::sync::Arc::new(SqliteStore::open(&path)?)
        }
    };
    let mut rng = StdRng::seed_from_u64(plans);
    let span_minutes = years * 365 * 24 * 60;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..plans {
        batch.push(if feed_shaped {
            feed_shaped_stored_plan(i, span_minutes)
        } else {
            random_stored_plan(&mut rng, i, span_minutes)
        });
        if batch.len() == BATCH || i + 1 == plans {
            store.write_plans(&batch).await?;
            batch.clear();
        }
    }
    let bounds = store.day_bounds().await?;
    println!("{plans} plans over {bounds:?} written to {target} in {:.1?}", started.elapsed());
    Ok(())
}
