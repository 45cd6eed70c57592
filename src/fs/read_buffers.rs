//! `BufferPool`: read-ahead part buffers kept for reuse, so that steady streaming neither
//! allocates nor page-faults fresh memory for every part (on a small machine that costs more
//! CPU than the copying itself), while the pooled bytes stay within a fixed cap.

use std::sync::Mutex;

use bytes::{Buf, Bytes, BytesMut};

/// Alignment of a new buffer's first byte: a page, so that the data cache can write the
/// blocks of a part fetched at a block boundary straight from it with `O_DIRECT`.
pub const BUFFER_ALIGN: usize = 4096;

/// An empty buffer with room for `len` bytes, starting at a `BUFFER_ALIGN` address. It keeps
/// that start through `clear`, `freeze` and `Bytes::try_into_mut` (which keep the offset
/// into the allocation), and through `reserve` of no more than its capacity.
///
/// A buffer of a huge page or more starts on a huge-page boundary and asks the kernel to back
/// it with huge pages: every part's bytes are pinned page by page twice, by the reply's
/// `writev` to /dev/fuse and by the data cache's `O_DIRECT` write, and with 4 KiB pages that
/// pinning cost more CPU than any copy of a streamed read.
fn aligned_buffer(len: usize) -> BytesMut {
    let align = if len >= HUGE_PAGE {
        HUGE_PAGE
    } else {
        BUFFER_ALIGN
    };
    let mut buffer = BytesMut::with_capacity(len + align);
    let skip = buffer.as_ptr().align_offset(align);
    // SAFETY: `skip` is within the capacity, and the skipped bytes are never read: `advance`
    // moves past them at once. Not filling them keeps up to a huge page per buffer untouched,
    // so out of the process's resident memory.
    unsafe { buffer.set_len(skip) };
    buffer.advance(skip);
    if align == HUGE_PAGE {
        let whole = len / HUGE_PAGE * HUGE_PAGE;
        // SAFETY: the range lies inside the buffer's allocation; the advice changes no
        // contents. A kernel without transparent huge pages refuses it, which is harmless.
        unsafe { libc::madvise(buffer.as_mut_ptr().cast(), whole, libc::MADV_HUGEPAGE) };
    }
    buffer
}

/// The size (and alignment) of a transparent huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

pub struct BufferPool {
    free: Mutex<Vec<BytesMut>>,
    max_pooled_bytes: usize,
}

impl BufferPool {
    pub fn new(max_pooled_bytes: u64) -> Self {
        BufferPool {
            free: Mutex::new(Vec::new()),
            max_pooled_bytes: max_pooled_bytes as usize,
        }
    }

    /// An empty buffer with room for at least `len` bytes.
    pub fn take(&self, len: usize) -> BytesMut {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest that fits: a small read does not take a whole part's buffer.
        let fits = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match fits {
            Some(i) => free.swap_remove(i),
            None => aligned_buffer(len),
        }
    }

    /// Returns a part's bytes to the pool if nothing else still refers to them and the pool
    /// has room; otherwise they are simply freed.
    pub fn give(&self, bytes: Bytes) {
        let Ok(mut buffer) = bytes.try_into_mut() else {
            return;
        };
        // Only aligned buffers are kept (see `BUFFER_ALIGN`): not a reply joined from pieces.
        if buffer.as_ptr().align_offset(BUFFER_ALIGN) != 0 {
            return;
        }
        buffer.clear();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let pooled: usize = free.iter().map(|b| b.capacity()).sum();
        if pooled + buffer.capacity() <= self.max_pooled_bytes {
            free.push(buffer);
        }
    }

    /// Frees every pooled buffer (when no reader is left to reuse them).
    pub fn clear(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn pooled_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(|b| b.capacity()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_the_cap() {
        let pool = BufferPool::new(3 << 20);
        let mut a = pool.take(1 << 20);
        a.extend_from_slice(&[1u8; 1 << 20]);
        let ptr = a.as_ptr();
        pool.give(a.freeze());
        let b = pool.take(1 << 20);
        assert_eq!(b.as_ptr(), ptr, "the same memory came back");
        assert!(b.is_empty());
        assert_eq!(ptr.align_offset(BUFFER_ALIGN), 0, "aligned when new");
        // A part sliced into blocks and given back keeps its aligned start.
        let mut c = b;
        c.reserve(1 << 20);
        c.extend_from_slice(&[2u8; 1 << 20]);
        assert_eq!(c.as_ptr(), ptr, "reserve within capacity does not move it");
        let frozen = c.freeze();
        let block = frozen.slice(4096..8192);
        drop(block);
        pool.give(frozen);
        assert_eq!(
            pool.take(1 << 20).as_ptr(),
            ptr,
            "aligned after a round trip"
        );
        // Still shared: not pooled.
        let shared = Bytes::from(vec![0u8; 1 << 20]);
        let _other = shared.clone();
        pool.give(shared);
        assert_eq!(pool.pooled_bytes(), 0);
        // Over the cap: not pooled.
        pool.give(Bytes::from(vec![0u8; 4 << 20]));
        assert_eq!(pool.pooled_bytes(), 0);
    }

    #[test]
    fn a_part_sized_buffer_starts_on_a_huge_page_and_survives_a_round_trip() {
        let pool = BufferPool::new(16 << 20);
        let mut part = pool.take(8 << 20);
        assert!(part.capacity() >= 8 << 20);
        let ptr = part.as_ptr();
        assert_eq!(ptr.align_offset(HUGE_PAGE), 0);
        part.extend_from_slice(&vec![7u8; 8 << 20]);
        assert!(part.iter().all(|&b| b == 7));
        pool.give(part.freeze());
        let again = pool.take(8 << 20);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }
}
