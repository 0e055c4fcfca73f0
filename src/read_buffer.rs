//! The reader thread's buffer: bytes read from the socket, decoded in place, and handed out as
//! shared views.
//!
//! A forwarded message becomes a [`Bytes`] view of this buffer: no copy, and the application may
//! keep it as long as it likes. The buffer is one allocation of [`ReadBuffer::new`]'s size (or
//! one frame and a read's worth more, if larger). When it is used up, it is reused in place if
//! nobody holds a view of it any more. Otherwise the reader switches to another allocation and
//! keeps an empty handle on this one in a small pool of *spares*: an allocation whose views
//! have all been dropped is taken back from the pool (its bytes are already initialised and its
//! pages mapped), and a fresh one is made only when every spare is still held. So while the
//! application drops what it receives within a pool's worth of buffers, steady traffic
//! allocates nothing at all; past that, one allocation per buffer's worth of bytes, never one
//! per message.
//!
//! The pool is bounded: at most [`SPARE_BUFFERS`] handles holding at most [`SPARE_FACTOR`]
//! times the configured size in all (4 MiB for the default 64 KiB), the oldest dropped first.
//! Held by the application, an allocation would exist anyway; what the pool adds is the memory
//! of the spares nobody holds, at most that budget per connection.
//!
//! Layout: `[consumed | unread | free]` within one `BytesMut` whose length covers all three, so
//! reads go into initialised memory.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

/// Below this much free space at the end, room is made before reading (a read into a sliver
/// would cost a syscall for a few bytes).
const MIN_READ: usize = 4 * 1024;

/// Most allocations kept in the pool of spares.
pub(crate) const SPARE_BUFFERS: usize = 64;

/// The pool of spares holds at most this many times the configured buffer size, in all.
pub(crate) const SPARE_FACTOR: usize = 64;

pub(crate) struct ReadBuffer {
    /// Every byte initialised; `len()` is the whole span (consumed, unread and free).
    buf: BytesMut,
    start: usize,
    end: usize,
    /// Size of a fresh allocation.
    size: usize,
    /// Size of `buf`'s allocation.
    allocated: usize,
    /// Empty handles on earlier allocations (with their sizes), oldest first, taken back once
    /// their views are gone.
    spares: Vec<(BytesMut, usize)>,
    /// Sum of the spares' sizes.
    spare_bytes: usize,
    /// Fresh allocations made because views of the old one and of every spare were still held.
    pub(crate) replaced: u64,
}

impl ReadBuffer {
    /// A buffer of `size` bytes (at least 1 KiB) holding `leftover` (bytes read with the upgrade
    /// response).
    pub(crate) fn new(size: usize, leftover: &[u8]) -> Self {
        let size = size.max(1024);
        let allocated = size.max(leftover.len());
        let mut buf = BytesMut::zeroed(allocated);
        buf[..leftover.len()].copy_from_slice(leftover);
        ReadBuffer {
            buf,
            start: 0,
            end: leftover.len(),
            size,
            allocated,
            spares: Vec::new(),
            spare_bytes: 0,
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
        // Room for the next frame and a read's worth after it: a buffer that ended exactly at
        // the frame's end would start the following frame in a fresh buffer before its size is
        // known, and then copy all of its bytes read so far into a larger one.
        let want = need
            .max(unread)
            .saturating_add(self.min_read())
            .max(self.size);
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
        // Views of this allocation are held: switch to a spare whose views are all gone, or
        // to a fresh allocation, and keep a handle on this one as a spare.
        let (mut next, allocated) = match self.spares.iter_mut().position(|(b, _)| reclaim(b, want))
        {
            Some(i) => {
                let (buf, size) = self.spares.remove(i);
                self.spare_bytes -= size;
                (buf, size)
            }
            None => {
                self.replaced += 1;
                (BytesMut::zeroed(want), want)
            }
        };
        next[..unread].copy_from_slice(&self.buf);
        self.buf.clear();
        let current = std::mem::replace(&mut self.buf, next);
        let size = std::mem::replace(&mut self.allocated, allocated);
        self.keep_spare(current, size);
    }

    /// Adds an allocation to the pool of spares, dropping the oldest ones past its bounds (a
    /// dropped handle frees its allocation once the application drops its last view).
    fn keep_spare(&mut self, spare: BytesMut, size: usize) {
        let budget = SPARE_FACTOR.saturating_mul(self.size);
        if size > budget {
            return;
        }
        while self.spares.len() == SPARE_BUFFERS || self.spare_bytes + size > budget {
            let (_, dropped) = self.spares.remove(0);
            self.spare_bytes -= dropped;
        }
        self.spares.push((spare, size));
        self.spare_bytes += size;
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
        rb.free(600); // a large frame
        assert_eq!(rb.replaced, 1);
        assert_eq!(&view[..], b"bc");
        assert_eq!(&rb.unread()[..2], b"ef");
        rb.consume(rb.unread().len());
        // The first allocation's view is dropped: when the second is used up while a view of
        // it is held, the first is taken back instead of allocating.
        drop(view);
        let rest = rb.buf.len() - rb.end;
        let held = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame
        assert_eq!(rb.replaced, 1);
        // Nobody holds the current allocation: used up, it is reused in place.
        drop(held);
        let rest = rb.buf.len() - rb.end;
        drop(read_and_keep_one(&mut rb, rest));
        rb.free(600); // a large frame
        assert_eq!(rb.replaced, 1);
        // Both held: a fresh one.
        let rest = rb.buf.len() - rb.end;
        let a = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame
        let rest = rb.buf.len() - rb.end;
        let b = read_and_keep_one(&mut rb, rest);
        rb.free(600); // a large frame
        assert_eq!(rb.replaced, 2);
        assert_eq!((a[0], b[0]), (7, 7));
    }

    /// Fills the rest of the buffer, keeps a view of it and makes room for the next read: the
    /// reader switches allocations while the view is held.
    fn switch_holding(rb: &mut ReadBuffer) -> Bytes {
        let rest = rb.buf.len() - rb.end;
        let view = read_and_keep_one(rb, rest);
        rb.free(0);
        view
    }

    #[test]
    fn held_buffers_come_back_from_the_pool_once_dropped() {
        let mut rb = ReadBuffer::new(1024, b"");
        // The application holds a view of each of ten buffers: ten fresh allocations.
        let held: Vec<Bytes> = (0..10).map(|_| switch_holding(&mut rb)).collect();
        assert_eq!(rb.replaced, 10);
        drop(held);
        // Every view dropped: from now on each switch takes an allocation back from the pool,
        // however many views the application keeps for a while.
        for _ in 0..100 {
            let a = switch_holding(&mut rb);
            let b = switch_holding(&mut rb);
            assert_eq!((a[0], b[0]), (7, 7));
        }
        assert_eq!(rb.replaced, 10);
    }

    #[test]
    fn the_pool_keeps_within_its_bounds() {
        let mut rb = ReadBuffer::new(1024, b"");
        // Buffers of 1 KiB: the count binds before the byte budget (64 KiB).
        let held: Vec<Bytes> = (0..100).map(|_| switch_holding(&mut rb)).collect();
        assert_eq!(rb.replaced, 100);
        assert_eq!(rb.spares.len(), SPARE_BUFFERS);
        assert!(rb.spare_bytes <= SPARE_FACTOR * 1024);
        drop(held);
        // Buffers of 3.25 KiB (a frame of 3 KiB and a read's worth): the budget binds.
        let held: Vec<Bytes> = (0..100)
            .map(|_| {
                rb.free(3 * 1024);
                switch_holding(&mut rb)
            })
            .collect();
        assert!(rb.spares.len() < SPARE_BUFFERS);
        assert!(rb.spare_bytes <= SPARE_FACTOR * 1024);
        assert!(
            rb.spare_bytes + 4 * 1024 > SPARE_FACTOR * 1024,
            "the budget is used"
        );
        drop(held);
        // A frame too large for the budget gets its own allocation, not kept as a spare.
        let frame = SPARE_FACTOR * 1024 + 1;
        assert!(rb.free(frame).len() >= frame);
        let big = switch_holding(&mut rb);
        assert!(rb.spare_bytes <= SPARE_FACTOR * 1024);
        assert!(
            rb.spares
                .iter()
                .all(|(_, size)| *size <= SPARE_FACTOR * 1024)
        );
        drop(big);
    }

    #[test]
    fn a_large_frame_gets_room_and_foreign_slices_have_no_range() {
        let mut rb = ReadBuffer::new(1024, b"");
        assert!(rb.free(5000).len() >= 5000);
        let elsewhere = [1u8, 2, 3];
        assert_eq!(rb.range_of(&elsewhere), None);
    }
}
