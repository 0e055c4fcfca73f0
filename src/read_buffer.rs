//! The reader thread's buffer: bytes read from the socket, decoded in place, and handed out as
//! shared views.
//!
//! A forwarded message becomes a [`Bytes`] view of this buffer: no copy, and the application may
//! keep it as long as it likes. The buffer is one allocation of [`ReadBuffer::new`]'s size (or one
//! frame, if larger). When it is used up, it is reused in place if nobody holds a view of it any
//! more; otherwise, for frames larger than half of it, the previous allocation is taken back if
//! its views are all gone (two buffers in turn, while the application keeps up); else a fresh
//! one is allocated (an old one is freed by whoever drops its last view). So
//! steady traffic costs at most one allocation per buffer's worth of bytes, never one per
//! message, and none at all while the application drops what it receives in time, or takes
//! nothing (decoded values, ignored messages).
//!
//! Layout: `[consumed | unread | free]` within one `BytesMut` whose length covers all three, so
//! reads go into initialised memory.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

/// Below this much free space at the end, room is made before reading (a read into a sliver
/// would cost a syscall for a few bytes).
const MIN_READ: usize = 4 * 1024;

pub(crate) struct ReadBuffer {
    /// Every byte initialised; `len()` is the whole span (consumed, unread and free).
    buf: BytesMut,
    start: usize,
    end: usize,
    /// Size of a fresh allocation.
    size: usize,
    /// An empty handle on the previous allocation, taken back once its views are gone.
    previous: BytesMut,
    /// Fresh allocations made because views of the old one were still held.
    pub(crate) replaced: u64,
}

impl ReadBuffer {
    /// A buffer of `size` bytes (at least 1 KiB) holding `leftover` (bytes read with the upgrade
    /// response).
    pub(crate) fn new(size: usize, leftover: &[u8]) -> Self {
        let size = size.max(1024);
        let mut buf = BytesMut::zeroed(size.max(leftover.len()));
        buf[..leftover.len()].copy_from_slice(leftover);
        ReadBuffer {
            buf,
            start: 0,
            end: leftover.len(),
            size,
            previous: BytesMut::new(),
            replaced: 0,
        }
    }

    /// The bytes read but not yet consumed.
    #[inline]
    pub(crate) fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Consumes `n` unread bytes.
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Where `part` (a slice of [`unread`](Self::unread)) lies, relative to the unread bytes;
    /// `None` if it points elsewhere (a message reassembled from fragments).
    #[inline]
    pub(crate) fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let base = self.buf.as_ptr() as usize + self.start;
        let offset = (part.as_ptr() as usize).checked_sub(base)?;
        let end = offset.checked_add(part.len())?;
        (end <= self.end - self.start).then_some(offset..end)
    }

    /// Consumes `used` unread bytes and returns `range` of them (from [`range_of`](Self::range_of))
    /// as a view that shares this buffer's allocation.
    #[inline]
    pub(crate) fn take(&mut self, used: usize, range: Range<usize>) -> Bytes {
        if range.is_empty() {
            self.consume(used);
            return Bytes::new();
        }
        let head = self.start;
        let used = used.min(self.end - head);
        let mut view = self.buf.split_to(head + used);
        self.start = 0;
        self.end -= head + used;
        view.advance(head + range.start);
        view.truncate(range.len());
        view.freeze()
    }

    /// Free space to read into, made first if there is too little or if the next frame
    /// (`need` bytes in all, 0 while its size is unknown) would not fit. Consumed bytes are
    /// reclaimed before every read when no view holds them (the unread rest, at most one
    /// partial frame, moves to the front), so reads get the whole buffer.
    #[inline]
    pub(crate) fn free(&mut self, need: usize) -> &mut [u8] {
        let free = self.buf.len() - self.end;
        if self.start > 0 || free < self.min_read() || self.start + need > self.buf.len() {
            self.make_room(need);
        }
        &mut self.buf[self.end..]
    }

    /// Records `n` bytes read into [`free`](Self::free).
    #[inline]
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Below this much free space at the end, a read would be a waste of a syscall.
    fn min_read(&self) -> usize {
        MIN_READ.min(self.size / 4)
    }

    /// Moves the unread bytes to the start of the allocation if no view holds it. Otherwise
    /// keeps reading into the free tail while it has room for a read and for the next frame,
    /// and past that moves the unread bytes to another allocation large enough for `need` and
    /// for a full-size read.
    fn make_room(&mut self, need: usize) {
        let unread = self.end - self.start;
        let (span, free) = (self.buf.len() - self.start, self.buf.len() - self.end);
        let want = need.max(self.size).max(unread + self.min_read());
        // Drop the free tail and the consumed head, so that only unread bytes remain.
        self.buf.truncate(self.end);
        self.buf.advance(self.start);
        self.start = 0;
        self.end = unread;
        if reclaim(&mut self.buf, want - unread) {
            return;
        }
        if free >= self.min_read() && need <= span {
            // SAFETY: this restores the length the buffer had a moment ago (less the consumed
            // head): those bytes are initialised, and `try_reclaim` failing changed nothing.
            unsafe { self.buf.set_len(span) };
            return;
        }
        // Views of this allocation are held. For a frame larger than half the configured size
        // (a switch per frame or two), switch to the previous allocation if its views are gone
        // and keep an empty handle on this one for next time; otherwise, or if the previous is
        // still held, switch to a fresh one. (Rotating for small frames as well measured 7%
        // slower at 64 B pinned, and saves only one allocation per buffer's worth.)
        let rotate = need > self.size / 2;
        let mut next = if rotate {
            std::mem::take(&mut self.previous)
        } else {
            BytesMut::new()
        };
        next.clear();
        if !reclaim(&mut next, want) {
            next = BytesMut::zeroed(want);
            self.replaced += 1;
        }
        next[..unread].copy_from_slice(&self.buf);
        self.buf.clear();
        let current = std::mem::replace(&mut self.buf, next);
        if rotate {
            self.previous = current;
        }
    }
}

/// Makes room for `additional` bytes after `buf`'s contents within its own allocation, and
/// extends `buf` over all of it; false (and `buf` unchanged) if that would need an allocation
/// (a view of it is still held, or it is too small).
fn reclaim(buf: &mut BytesMut, additional: usize) -> bool {
    if !buf.try_reclaim(additional) {
        return false;
    }
    let span = buf.capacity();
    // SAFETY: `try_reclaim` never allocates: on success the buffer still lies in the allocation
    // it came from, and every allocation `ReadBuffer` uses was made zeroed (`BytesMut::zeroed`,
    // in `make_room` and `new`); `bytes` only ever copies initialised bytes within it. So all
    // `capacity()` bytes are initialised.
    unsafe { buf.set_len(span) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(rb: &mut ReadBuffer, bytes: &[u8]) {
        let free = rb.free(0);
        free[..bytes.len()].copy_from_slice(bytes);
        rb.filled(bytes.len());
    }

    /// Reads `len` bytes, consumes them and keeps a view of the first byte.
    fn read_and_keep_one(rb: &mut ReadBuffer, len: usize) -> Bytes {
        fill(rb, &vec![7u8; len]);
        let range = rb.range_of(&rb.unread()[..1]).unwrap();
        rb.take(len, range)
    }

    #[test]
    fn views_outlive_the_buffer_and_free_buffers_are_reused() {
        let mut rb = ReadBuffer::new(1024, b"ab");
        fill(&mut rb, b"cdef");
        assert_eq!(rb.unread(), b"abcdef");
        let part = rb.range_of(&rb.unread()[1..3]).unwrap();
        let view = rb.take(4, part);
        assert_eq!(&view[..], b"bc");
        assert_eq!(rb.unread(), b"ef");
        // Use the buffer up: the view holds the allocation, so a fresh one is made.
        let rest = rb.buf.len() - rb.end;
        fill(&mut rb, &vec![7u8; rest]);
        rb.free(600); // a large frame: buffers rotate
        assert_eq!(rb.replaced, 1);
        assert_eq!(&view[..], b"bc");
        assert_eq!(&rb.unread()[..2], b"ef");
        rb.consume(rb.unread().len());
        // The first allocation's view is dropped: when the second is used up while a view of
        // it is held, the first is taken back instead of allocating.
        drop(view);
        let rest = rb.buf.len() - rb.end;
        let held = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame: buffers rotate
        assert_eq!(rb.replaced, 1);
        // Nobody holds the current allocation: used up, it is reused in place.
        drop(held);
        let rest = rb.buf.len() - rb.end;
        drop(read_and_keep_one(&mut rb, rest));
        rb.free(600); // a large frame: buffers rotate
        assert_eq!(rb.replaced, 1);
        // Both held: a fresh one.
        let rest = rb.buf.len() - rb.end;
        let a = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame: buffers rotate
        let rest = rb.buf.len() - rb.end;
        let b = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame: buffers rotate
        assert_eq!(rb.replaced, 2);
        assert_eq!((a[0], b[0]), (7, 7));
    }

    #[test]
    fn a_large_frame_gets_room_and_foreign_slices_have_no_range() {
        let mut rb = ReadBuffer::new(1024, b"");
        assert!(rb.free(5000).len() >= 5000);
        let elsewhere = [1u8, 2, 3];
        assert_eq!(rb.range_of(&elsewhere), None);
    }
}
