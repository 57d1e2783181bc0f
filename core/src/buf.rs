//! Per-worker pool of I/O buffers.
//!
//! io_uring reads move a buffer into the kernel until they complete, so a connection that waits
//! with a read pending holds its buffer. Connections therefore wait for readiness with no buffer
//! and take one from this pool only to read; idle keep-alive connections hold none.

use std::cell::RefCell;

/// Size of pooled buffers.
pub const BUF_SIZE: usize = 16 * 1024;

/// A free list of equally sized buffers, owned by one worker.
#[derive(Debug)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    max_free: usize,
}

impl BufPool {
    /// A pool that keeps at most `max_free` buffers around.
    pub fn new(max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            max_free,
        }
    }

    /// An empty buffer with `BUF_SIZE` capacity.
    #[inline]
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Returns a buffer. Buffers that grew (large heads) are dropped, not kept.
    #[inline]
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BUF_SIZE {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    /// Buffers currently free.
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let pool = BufPool::new(1);
        let mut a = pool.get();
        a.extend_from_slice(b"x");
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.get();
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0));
        pool.put(b);
        pool.put(Vec::with_capacity(BUF_SIZE));
        assert_eq!(pool.free_count(), 1);
        pool.put(Vec::with_capacity(10));
        assert_eq!(pool.free_count(), 1);
    }
}
