//! The raw-pointer side of monoio's buffer traits, kept in one place.
//!
//! monoio hands buffers around as `IoBuf`/`IoBufMut` (and their iovec forms), unsafe traits
//! whose implementors promise that `read_ptr` points at `bytes_init` initialized bytes and
//! `write_ptr` at `bytes_total` bytes of room, for as long as the buffer lives. Here those
//! promises become borrowed slices, so everything outside this file reads and writes buffers
//! through bounds-checked slices; the one operation whose soundness depends on the caller,
//! marking room as initialized, stays an `unsafe fn`.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};

/// The room of a buffer (its `bytes_total` bytes, initialized or not), borrowed from it and
/// written front to back. It knows how much it holds, so marking the buffer initialized that
/// far ([`commit`]) is safe: only what was written here is ever marked.
pub(crate) struct Room<'a> {
    dst: &'a mut [MaybeUninit<u8>],
    filled: usize,
}

/// How far a [`Room`] was filled, and of which buffer (its base address), for [`commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "nothing is marked initialized until it is committed"]
pub(crate) struct Filled {
    base: *const u8,
    len: usize,
}

impl Room<'_> {
    /// Copies as much of `src` as fits after what the room holds; how much.
    pub(crate) fn put(&mut self, src: &[u8]) -> usize {
        let free = &mut self.dst[self.filled..];
        let n = src.len().min(free.len());
        // SAFETY: both ranges hold `n` bytes; a shared and a mutable borrow never overlap, and
        // `u8` and `MaybeUninit<u8>` have the same layout.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), free.as_mut_ptr().cast::<u8>(), n) }
        self.filled += n;
        n
    }

    /// Bytes that still fit.
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.dst.len() - self.filled
    }

    /// What the room holds, to [`commit`] once the borrow of the buffer has ended.
    pub(crate) fn filled(&self) -> Filled {
        Filled {
            base: self.dst.as_ptr().cast::<u8>(),
            len: self.filled,
        }
    }
}

impl Filled {
    /// Bytes written.
    pub(crate) fn len(self) -> usize {
        self.len
    }
}

/// The room of `buf`.
pub(crate) fn room<T: IoBufMut>(buf: &mut T) -> Room<'_> {
    let len = buf.bytes_total();
    let ptr = buf.write_ptr();
    let dst: &mut [MaybeUninit<u8>] = if len == 0 {
        &mut []
    } else {
        // SAFETY: `IoBufMut` promises `write_ptr` is valid for writes of `bytes_total` bytes
        // while the buffer lives; the slice borrows `buf` mutably, so nothing else touches that
        // memory (or drops the buffer) while it is in use. `MaybeUninit` claims nothing about
        // the contents.
        unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<u8>>(), len) }
    };
    Room { dst, filled: 0 }
}

/// The room of the first buffer of an iovec list; `None` without iovecs.
pub(crate) fn first_room<T: IoVecBufMut>(buf: &mut T) -> Option<Room<'_>> {
    let (base, len) = first_iovec(buf)?;
    let dst: &mut [MaybeUninit<u8>] = if len == 0 {
        &mut []
    } else {
        // SAFETY: `IoVecBufMut` promises that the iovec's base is valid for writes of `iov_len`
        // bytes while the buffer lives; the slice borrows `buf` mutably.
        unsafe { std::slice::from_raw_parts_mut(base.cast::<MaybeUninit<u8>>(), len) }
    };
    Some(Room { dst, filled: 0 })
}

fn first_iovec<T: IoVecBufMut>(buf: &mut T) -> Option<(*mut u8, usize)> {
    if buf.write_iovec_len() == 0 {
        return None;
    }
    // SAFETY: there is at least one iovec, and the pointer is valid while `buf` lives.
    let v = unsafe { &*buf.write_iovec_ptr() };
    Some((v.iov_base.cast::<u8>(), v.iov_len))
}

/// Marks what a room of `buf` holds as initialized data of the buffer.
///
/// # Panics
/// When `filled` comes from another buffer's room: marking bytes that were never written
/// would hand out uninitialized memory.
pub(crate) fn commit<T: IoBufMut>(buf: &mut T, filled: Filled) {
    assert!(
        std::ptr::eq(buf.write_ptr().cast_const(), filled.base) || filled.len == 0,
        "a room committed to another buffer"
    );
    // SAFETY: the room starts at this buffer's `write_ptr` (checked above) and `Room::put`
    // wrote its first `len` bytes, all within `bytes_total`.
    unsafe { mark_init(buf, filled.len) }
}

/// As [`commit`], for a room of an iovec list's first buffer.
pub(crate) fn commit_vec<T: IoVecBufMut>(buf: &mut T, filled: Filled) {
    let base = first_iovec(buf).map(|(b, _)| b.cast_const());
    assert!(
        base == Some(filled.base) || filled.len == 0,
        "a room committed to another buffer"
    );
    // SAFETY: as in `commit`, for the first iovec.
    unsafe { buf.set_init(filled.len) }
}

/// Marks the first `n` bytes of `buf`'s room initialized.
///
/// # Safety
/// Those `n` bytes (from `write_ptr`) must have been written, and `n` must not exceed
/// `bytes_total`: the buffer then hands them out as initialized data.
unsafe fn mark_init<T: IoBufMut>(buf: &mut T, n: usize) {
    debug_assert!(n <= buf.bytes_total());
    // SAFETY: the caller's promise is the one `IoBufMut::set_init` asks for.
    unsafe { buf.set_init(n) }
}

/// The initialized bytes of `buf`.
pub(crate) fn bytes<T: IoBuf>(buf: &T) -> &[u8] {
    let len = buf.bytes_init();
    if len == 0 {
        return &[];
    }
    // SAFETY: an IoBuf's first `bytes_init` bytes at `read_ptr` are initialized and live
    // as long as the buffer, which the slice borrows.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), len) }
}

/// The `i`th buffer of an iovec list.
pub(crate) fn iovec<T: IoVecBuf>(buf: &T, i: usize) -> &[u8] {
    assert!(i < buf.read_iovec_len());
    // SAFETY: `i` is below `read_iovec_len`; each iovec points at `iov_len` initialized bytes
    // that live as long as `buf`, which the slice borrows.
    unsafe {
        let v = &*buf.read_iovec_ptr().add(i);
        if v.iov_len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
    }
}

/// Copies as much of `src` as fits into `buf`'s room and marks it initialized; how much.
pub(crate) fn fill<T: IoBufMut>(buf: &mut T, src: &[u8]) -> usize {
    let mut room = room(buf);
    room.put(src);
    let filled = room.filled();
    commit(buf, filled);
    filled.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_capacity_and_fill_marks_what_it_copied() {
        let mut buf: Vec<u8> = Vec::with_capacity(8);
        assert_eq!(room(&mut buf).remaining(), 8);
        assert_eq!(fill(&mut buf, b"hello"), 5);
        assert_eq!(buf, b"hello");
        assert_eq!(bytes(&buf), b"hello");
    }

    #[test]
    fn a_room_takes_what_fits_and_keeps_count() {
        let mut buf: Vec<u8> = Vec::with_capacity(6);
        let mut r = room(&mut buf);
        assert_eq!(r.put(b"abcd"), 4);
        assert_eq!(r.put(b"efgh"), 2);
        assert_eq!(r.put(b"i"), 0);
        assert_eq!(r.remaining(), 0);
        let filled = r.filled();
        assert_eq!(filled.len(), 6);
        commit(&mut buf, filled);
        assert_eq!(buf, b"abcdef");
    }

    #[test]
    #[should_panic(expected = "another buffer")]
    fn a_room_cannot_be_committed_to_another_buffer() {
        let mut a: Vec<u8> = Vec::with_capacity(4);
        let mut b: Vec<u8> = Vec::with_capacity(4);
        let mut r = room(&mut a);
        r.put(b"ab");
        let filled = r.filled();
        commit(&mut b, filled);
    }

    #[test]
    fn an_empty_buffer_has_no_room_and_no_bytes() {
        let mut buf: Vec<u8> = Vec::new();
        assert_eq!(room(&mut buf).remaining(), 0);
        assert_eq!(fill(&mut buf, b"abc"), 0);
        assert!(bytes(&buf).is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn a_slice_of_a_buffer_is_filled_within_its_bounds() {
        // A monoio slice: room and contents are relative to its start, the bytes before it
        // untouched.
        let mut whole = vec![b'.'; 4];
        whole.reserve_exact(4);
        let cap = whole.capacity();
        let mut part = IoBufMut::slice_mut(whole, 4..cap);
        assert_eq!(room(&mut part).remaining(), cap - 4);
        let n = fill(&mut part, b"abcd");
        assert_eq!(n, 4.min(cap - 4));
        let whole = part.into_inner();
        assert_eq!(&whole[..4], b"....");
        assert_eq!(&whole[4..], &b"abcd"[..n]);
    }

    #[test]
    fn iovecs_read_and_fill_their_first_buffer() {
        let list = monoio::buf::VecBuf::from(vec![b"ab".to_vec(), b"".to_vec(), b"cde".to_vec()]);
        assert_eq!(iovec(&list, 0), b"ab");
        assert_eq!(iovec(&list, 1), b"");
        assert_eq!(iovec(&list, 2), b"cde");

        // A VecBuf's room is its vectors' lengths; marking three bytes of the first sets its
        // length to three and leaves the second alone.
        let mut room_list = monoio::buf::VecBuf::from(vec![vec![0u8; 4], vec![9u8; 4]]);
        let mut first = first_room(&mut room_list).expect("an iovec");
        assert_eq!(first.remaining(), 4);
        assert_eq!(first.put(b"xyz"), 3);
        let filled = first.filled();
        commit_vec(&mut room_list, filled);
        let bufs: Vec<Vec<u8>> = room_list.into();
        assert_eq!(bufs[0], b"xyz");
        assert_eq!(bufs[1], [9u8; 4]);
    }

    #[test]
    fn a_list_without_iovecs_has_no_room() {
        let mut empty = monoio::buf::VecBuf::from(Vec::<Vec<u8>>::new());
        assert!(first_room(&mut empty).is_none());
    }
}
