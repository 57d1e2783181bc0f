//! The raw-pointer side of monoio's buffer traits, kept in one place.
#![allow(unsafe_code)]

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};

/// Copies `n` bytes of `src` (n <= src.len()) to `dst`, which the caller got from a
/// buffer with at least `n` bytes of room.
pub(crate) fn copy_to(src: &[u8], dst: *mut u8, n: usize) {
    assert!(n <= src.len());
    // SAFETY: `dst` has room for `n` bytes (the caller's buffer), `src` holds `n` bytes,
    // and a borrowed slice cannot overlap a buffer the caller owns.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) }
}

/// Marks the first `n` bytes written to `buf`'s room as initialized.
pub(crate) fn set_init<T: IoBufMut>(buf: &mut T, n: usize) {
    // SAFETY: `copy_to` has just written `n` bytes at `write_ptr`.
    unsafe { buf.set_init(n) }
}

pub(crate) fn set_init_vec<T: IoVecBufMut>(buf: &mut T, n: usize) {
    // SAFETY: as above, into the first iovec.
    unsafe { buf.set_init(n) }
}

/// The initialized bytes of `buf`.
pub(crate) fn bytes<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: an IoBuf's first `bytes_init` bytes at `read_ptr` are initialized and live
    // as long as the buffer.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// The `i`th buffer of an iovec list.
pub(crate) fn iovec<T: IoVecBuf>(buf: &T, i: usize) -> &[u8] {
    assert!(i < buf.read_iovec_len());
    // SAFETY: `i` is below `read_iovec_len`; each iovec points at initialized bytes that
    // live as long as `buf`.
    unsafe {
        let v = &*buf.read_iovec_ptr().add(i);
        std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
    }
}

/// The room of the first buffer of an iovec list, if any.
pub(crate) fn first_room<T: IoVecBufMut>(buf: &mut T) -> Option<(*mut u8, usize)> {
    if buf.write_iovec_len() == 0 {
        return None;
    }
    // SAFETY: there is at least one iovec.
    let v = unsafe { &*buf.write_iovec_ptr() };
    Some((v.iov_base.cast::<u8>(), v.iov_len))
}

/// Copies as much of `src` as fits into `buf`'s room and marks it initialized; how much.
pub(crate) fn fill<T: IoBufMut>(buf: &mut T, src: &[u8]) -> usize {
    fill_at(buf, 0, src)
}

/// As [`fill`], after the `at` bytes already filled (`at` <= the room): `buf` is then
/// initialized up to `at` plus what this copies; how much it copies.
pub(crate) fn fill_at<T: IoBufMut>(buf: &mut T, at: usize, src: &[u8]) -> usize {
    let room = buf.bytes_total();
    assert!(at <= room);
    let n = src.len().min(room - at);
    // SAFETY: `at` <= the buffer's room, so the pointer stays within it (or one past it).
    copy_to(src, unsafe { buf.write_ptr().add(at) }, n);
    set_init(buf, at + n);
    n
}
