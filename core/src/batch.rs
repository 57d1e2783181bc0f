//! A worker's buffer of records on their way to a writer thread (access log lines, spans):
//! appended to without a system call, handed over whole once it passes a size, or at the
//! worker's next tick.

use std::cell::{Cell, RefCell};

/// Records and how many there are.
#[derive(Debug, Default)]
pub struct Batch {
    buf: RefCell<Vec<u8>>,
    count: Cell<u64>,
}

impl Batch {
    /// Appends one record with `write`; true once the batch holds `flush_at` bytes or more.
    /// The buffer is sized for a whole batch at the first record.
    #[inline]
    pub fn push(&self, flush_at: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() == 0 {
            buf.reserve(flush_at + 4096);
        }
        write(&mut buf);
        self.count.set(self.count.get() + 1);
        buf.len() >= flush_at
    }

    /// The records so far and how many, leaving the batch empty; `None` when there are none.
    pub fn take(&self) -> Option<(Vec<u8>, u64)> {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return None;
        }
        Some((std::mem::take(&mut *buf), self.count.replace(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_says_when_it_is_full_and_is_taken_whole() {
        let b = Batch::default();
        assert!(b.take().is_none());
        assert!(!b.push(4, |o| o.extend_from_slice(b"ab")));
        assert!(b.push(4, |o| o.extend_from_slice(b"cd")));
        assert_eq!(b.take(), Some((b"abcd".to_vec(), 2)));
        assert!(b.take().is_none());
    }
}
