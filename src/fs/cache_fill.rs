//! `CacheFill`: brings a whole object into the data cache in the background once it is seen to
//! be read at random (a database, an archive, a media file being scrubbed), so that its later
//! reads come from local disk. Several ranged GETs run at once, each holding its share of the
//! read-ahead budget until its blocks are written; the fill stops when its reader goes.

use std::sync::Arc;

use futures::StreamExt;
use tokio::task::JoinHandle;

use super::block_cache::{whole_blocks, ObjectTag, Source, BLOCK};
use super::read::{ReadShared, BUDGET_UNIT};
use crate::store::ByteRange;

/// One GET of a fill.
const FILL_PIECE: u64 = 8 << 20;
/// Pieces of one fill in memory at once (being fetched, or waiting to be written to disk).
const FILL_PARALLEL: usize = 8;

/// A fill in progress; dropping it stops it.
pub struct CacheFill(JoinHandle<()>);

impl Drop for CacheFill {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl CacheFill {
    /// Starts filling version `etag` (tagged `tag`) of `key`, `size` bytes long, skipping the
    /// pieces the cache already holds. `None` when the mount has no data cache.
    pub fn start(
        shared: &Arc<ReadShared>,
        tag: ObjectTag,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Option<CacheFill> {
        let blocks = shared.blocks.clone()?;
        let (shared, key, etag) = (shared.clone(), key.to_string(), etag.to_string());
        let in_memory = Arc::new(tokio::sync::Semaphore::new(FILL_PARALLEL));
        let task = tokio::spawn(async move {
            let pieces: Vec<ByteRange> = (0..size.div_ceil(FILL_PIECE))
                .map(|i| ByteRange::new(i * FILL_PIECE, size.min((i + 1) * FILL_PIECE)))
                .filter(|r| !blocks.present(tag, r.start / BLOCK, (r.end - 1) / BLOCK))
                .collect();
            tracing::debug!(
                key,
                pieces = pieces.len(),
                "read at random: bringing the whole object into the data cache"
            );
            let fetches = futures::stream::iter(pieces).map(|range| {
                let (shared, blocks, key, etag) = (&shared, &blocks, &key, &etag);
                let in_memory = in_memory.clone();
                async move {
                    let piece = in_memory.acquire_owned().await.ok()?;
                    let units = range.len().div_ceil(BUDGET_UNIT) as u32;
                    let permit = shared.budget.clone().acquire_many_owned(units).await.ok()?;
                    let buffer = shared.pool.take(range.len() as usize);
                    let data = shared
                        .store
                        .get_range_into(key, range, Some(etag), buffer)
                        .await
                        .ok()?;
                    if data.len() as u64 != range.len() {
                        return None;
                    }
                    let run = whole_blocks(range.start, &data, size);
                    let pool = shared.pool.clone();
                    blocks.insert_run(tag, run, Source::Fill, move || {
                        pool.give(data);
                        drop((permit, piece));
                    });
                    Some(())
                }
            });
            // A failed GET (the object changed, say) ends the fill: reads go on as before.
            let began = std::time::Instant::now();
            let mut fetches = fetches.buffer_unordered(FILL_PARALLEL);
            while let Some(done) = fetches.next().await {
                if done.is_none() {
                    tracing::debug!(key, "the fill stopped: a piece could not be fetched");
                    return;
                }
            }
            tracing::debug!(
                key,
                secs = began.elapsed().as_secs_f64(),
                "the whole object is in the data cache"
            );
        });
        Some(CacheFill(task))
    }
}
