//! Per-worker pools of I/O buffers.
//!
//! io_uring reads move a buffer into the kernel until they complete, so a connection that waits
//! with a read pending holds its buffer. Connections therefore wait for their next request with
//! a small buffer (and, once quiet, with none at all), and take a large one from the pool only
//! to move bodies.

use std::cell::RefCell;

/// Size of the buffers that move bodies and answers.
pub const BUF_SIZE: usize = 16 * 1024;

/// Size of the buffers that move large bodies once past their first buffer.
pub const BULK_BUF_SIZE: usize = 64 * 1024;

/// Size of the buffer a keep-alive connection waits for its next request with: most request
/// heads fit; a larger one moves to a [`BUF_SIZE`] buffer.
pub const SMALL_BUF_SIZE: usize = 1024;

/// A free list of equally sized buffers, owned by one worker.
#[derive(Debug)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    max_free: usize,
}

impl BufPool {
    /// A pool of `size`-byte buffers that keeps at most `max_free` of them around.
    pub fn new(size: usize, max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            size,
            max_free,
        }
    }

    /// The size of this pool's buffers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// An empty buffer of the pool's size.
    #[inline]
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer. Buffers of another size (grown for a large head) are dropped.
    #[inline]
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.size {
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
        let pool = BufPool::new(BUF_SIZE, 1);
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
        assert_eq!(
            BufPool::new(SMALL_BUF_SIZE, 1).get().capacity(),
            SMALL_BUF_SIZE
        );
    }
}
