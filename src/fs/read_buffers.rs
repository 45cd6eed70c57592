//! `BufferPool`: read-ahead part buffers kept for reuse, so that steady streaming neither
//! allocates nor page-faults fresh memory for every part (on a small machine that costs more
//! CPU than the copying itself), while the pooled bytes stay within a fixed cap.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

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
        match free.iter().position(|b| b.capacity() >= len) {
            Some(i) => free.swap_remove(i),
            None => BytesMut::with_capacity(len),
        }
    }

    /// Returns a part's bytes to the pool if nothing else still refers to them and the pool
    /// has room; otherwise they are simply freed.
    pub fn give(&self, bytes: Bytes) {
        let Ok(mut buffer) = bytes.try_into_mut() else {
            return;
        };
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
        // Still shared: not pooled.
        let shared = Bytes::from(vec![0u8; 1 << 20]);
        let _other = shared.clone();
        pool.give(shared);
        assert_eq!(pool.pooled_bytes(), 0);
        // Over the cap: not pooled.
        pool.give(Bytes::from(vec![0u8; 4 << 20]));
        assert_eq!(pool.pooled_bytes(), 0);
    }
}
