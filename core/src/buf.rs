//! Per-worker pools of I/O buffers.
//!
//! io_uring reads move a buffer into the kernel until they complete, so a connection that waits
//! with a read pending holds its buffer. Connections therefore wait for their next request with
//! a small buffer (and, once quiet, with none at all), and take a large one from the pool only
//! to move bodies.
//!
//! A burst fills the pools up to their bounds; [`BufPool::trim`], called every few seconds,
//! frees the buffers that stayed unused for a whole period (the fewest free since the last
//! trim), so that memory taken for a burst is given back once it has passed.

use std::cell::{Cell, RefCell};

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
    /// The fewest buffers free at once since the last trim: that many were not needed.
    low_water: Cell<usize>,
}

impl BufPool {
    /// A pool of `size`-byte buffers that keeps at most `max_free` of them around.
    pub fn new(size: usize, max_free: usize) -> Self {
        BufPool {
            free: RefCell::new(Vec::new()),
            size,
            max_free,
            low_water: Cell::new(0),
        }
    }

    /// The size of this pool's buffers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// An empty buffer of the pool's size.
    #[inline]
    pub fn get(&self) -> Vec<u8> {
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        if free.len() < self.low_water.get() {
            self.low_water.set(free.len());
        }
        buf.unwrap_or_else(|| Vec::with_capacity(self.size))
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

    /// Frees the buffers no request needed since the last trim; the bytes freed.
    pub fn trim(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low_water.get().min(free.len());
        let keep = free.len() - unused;
        free.truncate(keep);
        if free.is_empty() {
            *free = Vec::new();
        }
        self.low_water.set(free.len());
        unused * self.size
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

    #[test]
    fn buffers_a_burst_took_are_given_back_once_it_passed() {
        let pool = BufPool::new(BUF_SIZE, 100);
        // A burst: 50 buffers at once, then all back.
        let burst: Vec<_> = (0..50).map(|_| pool.get()).collect();
        burst.into_iter().for_each(|b| pool.put(b));
        assert_eq!(pool.free_count(), 50);
        // The period of the burst: it needed them all (none stayed free), so none go.
        assert_eq!(pool.trim(), 0);
        // Quiet traffic: never more than 2 out at once.
        for _ in 0..10 {
            let (a, b) = (pool.get(), pool.get());
            pool.put(a);
            pool.put(b);
        }
        // 48 stayed free the whole period: they go, 2 stay for the traffic there is.
        assert_eq!(pool.trim(), 48 * BUF_SIZE);
        assert_eq!(pool.free_count(), 2);
        // Nothing at all for a period: the rest go too.
        assert_eq!(pool.trim(), 2 * BUF_SIZE);
        assert_eq!(pool.free_count(), 0);
    }
}
