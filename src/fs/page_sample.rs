//! The HEADs a listing page gets the moment it arrives, while the kernel is still taking in
//! the page before it: a sample that tells whether the page's objects carry attribute
//! metadata (s3fs-style headers, which a listing does not show), and the page's empty objects,
//! which only their metadata tells apart from fifos and device nodes. The answers go to the
//! HEAD memo, where completing the page (`Fs::complete_with_heads`) finds them.
//!
//! Asked when the kernel reached the page instead, these HEADs held up every page of a
//! listing by a round trip: 7 of the 20 s of a million-entry `ls -l`.

use std::sync::Arc;

use futures::StreamExt;

use super::dir::{FetchedPage, PageFetch, PageSample};
use super::meta::{has_attr_headers, HeadMemo};
use crate::store::{ListPage, ObjectInfo, ObjectStore, StoreError};

/// Non-empty objects (or folder markers) of a page whose HEAD answers decide whether the page
/// carries metadata.
pub(super) const LISTING_SAMPLE: usize = 8;
/// HEADs in flight for one page (its sample, or completing it).
const HEADS_AT_ONCE: usize = 32;

/// A fetch that lists, then starts sampling the page into `memo`.
pub(super) fn list_and_sample(store: Arc<dyn ObjectStore>, memo: HeadMemo) -> PageFetch {
    Arc::new(move |request| {
        let (store, memo) = (store.clone(), memo.clone());
        Box::pin(async move {
            let page = store.list(request.clone()).await?;
            let sample = match wanted(&memo, &request.prefix, &page) {
                None => tokio::spawn(async { true }),
                Some(keys) => tokio::spawn(async move { head_into(&store, &memo, keys).await }),
            };
            Ok(FetchedPage {
                page,
                sample: Some(PageSample(sample)),
            })
        })
    })
}

/// The keys to HEAD for the sample of `page` (listed under `folder`), or `None` when the
/// memo already knows that the page carries metadata. The sample is the page's first
/// non-empty objects, then its folders' markers, up to `LISTING_SAMPLE`; an object the memo
/// knows in this very version counts without a HEAD, so listing an unchanged page again
/// sends none. Every empty object the memo does not know is asked for too.
fn wanted(memo: &HeadMemo, folder: &str, page: &ListPage) -> Option<Vec<String>> {
    let mut counted = 0;
    let mut keys = Vec::new();
    for object in page.objects.iter().filter(|o| o.key != folder) {
        let empty = object.size == 0;
        if !empty && counted == LISTING_SAMPLE {
            continue;
        }
        match memo.of(object) {
            // Every file of the page will be asked for anyway.
            Some(known) if !empty && has_attr_headers(&known) => return None,
            Some(_) => counted += usize::from(!empty),
            None => {
                counted += usize::from(!empty);
                keys.push(object.key.clone());
            }
        }
    }
    let markers = LISTING_SAMPLE.saturating_sub(counted);
    keys.extend(page.prefixes.iter().take(markers).cloned());
    Some(keys)
}

/// HEADs `keys` into `memo`; returns whether an answer carried attribute metadata.
async fn head_into(store: &Arc<dyn ObjectStore>, memo: &HeadMemo, keys: Vec<String>) -> bool {
    let wanted = keys.into_iter().map(|k| (k.ends_with('/'), k)).collect();
    let answers = head_all(store, memo, wanted).await;
    // An empty object's metadata (a fifo's, say) says nothing of the rest.
    answers
        .iter()
        .any(|(marker, info)| (info.size > 0 || *marker) && has_attr_headers(info))
}

/// HEADs the keys of `wanted` (each with a tag of the caller's), `HEADS_AT_ONCE` at a time,
/// and puts the answers in `memo`; returns the objects found, with their tags. A failed HEAD
/// leaves its entry as the listing showed it.
pub(super) async fn head_all<T: Send + 'static>(
    store: &Arc<dyn ObjectStore>,
    memo: &HeadMemo,
    wanted: Vec<(T, String)>,
) -> Vec<(T, ObjectInfo)> {
    let answers: Vec<_> = futures::stream::iter(wanted)
        .map(|(tag, key)| {
            let store = store.clone();
            async move {
                let answer = store.head(&key).await;
                (tag, key, answer)
            }
        })
        .buffer_unordered(HEADS_AT_ONCE)
        .collect()
        .await;
    let mut found = Vec::new();
    for (tag, key, answer) in answers {
        match answer {
            Ok(info) => {
                memo.put(&info);
                found.push((tag, info));
            }
            Err(StoreError::NotFound) => {}
            Err(e) => {
                tracing::debug!(key, error = %e, "HEAD for a listing failed; showing what the listing says")
            }
        }
    }
    found
}
