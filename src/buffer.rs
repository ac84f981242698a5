//! A connection's fixed-capacity byte buffer: the server's connections',
//! the blocking [`crate::protocol::blocking::Connection`]'s and the load
//! tester's.
//!
//! ```text
//! 0          start              end              capacity
//! |  consumed  |   unread bytes   |  free space   |
//! ```
//!
//! The capacity is fixed when the connection is accepted and never grows.
//! The storage itself is lent by a [`pool::BufferPool`] only while bytes are
//! in flight, and given back when the buffer drains, so an idle connection
//! holds none: a detached buffer is empty and has no storage, but keeps its
//! capacity, so backpressure decisions read the same either way. Space is
//! reused cyclically like a ring buffer, but unread bytes are
//! kept contiguous: frames are decoded in place as borrowed slices, and a
//! frame wrapped around the end of a true ring would have to be copied out.
//! Instead, unread bytes slide to the front when the consumed prefix is at
//! least as long as they are, so each byte is moved at most once on average
//! (amortised O(1)), and when nothing is unread the buffer simply rewinds.

#[cfg(feature = "server")]
pub mod pool;

pub struct ConnBuffer {
    /// `capacity` bytes while attached; empty (no allocation) while detached.
    storage: Box<[u8]>,
    capacity: usize,
    start: usize,
    end: usize,
}

impl ConnBuffer {
    /// A buffer with its own storage, attached for good.
    pub fn with_capacity(capacity: usize) -> ConnBuffer {
        ConnBuffer {
            storage: vec![0; capacity].into_boxed_slice(),
            capacity,
            start: 0,
            end: 0,
        }
    }

    /// An empty buffer without storage: attach some before writing into it.
    pub fn detached(capacity: usize) -> ConnBuffer {
        ConnBuffer {
            storage: Box::default(),
            capacity,
            start: 0,
            end: 0,
        }
    }

    /// Whether the buffer has its storage (a detached one is empty).
    pub fn is_attached(&self) -> bool {
        self.storage.len() == self.capacity
    }

    /// Gives a detached buffer its storage, of exactly its capacity.
    pub fn attach(&mut self, storage: Box<[u8]>) {
        assert!(!self.is_attached(), "attach to an attached buffer");
        assert_eq!(storage.len(), self.capacity, "storage of the wrong size");
        self.storage = storage;
    }

    /// Takes the storage of an empty buffer back, leaving it detached.
    pub fn detach(&mut self) -> Box<[u8]> {
        assert!(self.is_attached(), "detach a detached buffer");
        assert!(self.is_empty(), "detach with {} unread bytes", self.len());
        std::mem::take(&mut self.storage)
    }

    /// Drops the unread bytes (the connection is closing).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Unread bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes that can still be appended after compaction.
    pub fn free_space(&self) -> usize {
        self.capacity() - self.len()
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    /// The unread bytes, contiguous.
    pub fn unread(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }

    /// Marks `n` unread bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "consume {n} of {} unread bytes",
            self.len()
        );
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Consumes the first `n` unread bytes and returns them (valid until
    /// the buffer is next written).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let at = self.start;
        self.consume(n);
        // `consume` may rewind the indexes; the bytes stay where they were.
        &self.storage[at..at + n]
    }

    /// Free space at the tail to append into, compacting first when that is
    /// cheap (see module docs) or needed for any space at all.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        assert!(self.is_attached(), "read into a detached buffer");
        if self.start > 0 && (self.start >= self.len() || self.end == self.capacity()) {
            self.compact();
        }
        &mut self.storage[self.end..]
    }

    /// Records that `n` bytes were written into the slice from `spare_mut`.
    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.capacity(), "commit past capacity");
        self.end += n;
    }

    #[cfg(any(test, feature = "internals"))]
    /// Appends `bytes` if they fit; returns whether they did.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        assert!(self.is_attached(), "push into a detached buffer");
        if bytes.len() > self.free_space() {
            return false;
        }
        if self.capacity() - self.end < bytes.len() {
            self.compact();
        }
        self.storage[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        true
    }

    /// Gives `f` the free tail (compacting if needed to make `reserve` bytes
    /// contiguous) and commits the count it returns. Used to encode a reply
    /// directly into the buffer.
    pub fn write_with(&mut self, reserve: usize, f: impl FnOnce(&mut [u8]) -> usize) {
        assert!(self.is_attached(), "write into a detached buffer");
        assert!(
            reserve <= self.free_space(),
            "reserve {reserve} > free {}",
            self.free_space()
        );
        if self.capacity() - self.end < reserve {
            self.compact();
        }
        let n = f(&mut self.storage[self.end..]);
        self.commit(n);
    }

    fn compact(&mut self) {
        self.storage.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn invariants(&self) {
        assert!(self.start <= self.end);
        assert!(self.end <= self.capacity());
        assert!(
            self.is_attached() || (self.storage.is_empty() && self.end == 0),
            "a detached buffer holds nothing"
        );
        assert!(
            !(self.start == self.end && self.start != 0),
            "empty buffer not rewound"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_consume_and_reuse_space() {
        let mut b = ConnBuffer::with_capacity(8);
        assert!(b.push(b"abcdef"));
        assert!(!b.push(b"xyz"), "must not grow past capacity");
        b.consume(4);
        b.invariants();
        assert_eq!(b.unread(), b"ef");
        assert!(b.push(b"ghijkl"), "consumed space is reused");
        assert_eq!(b.unread(), b"efghijkl");
        assert!(b.is_full());
        b.consume(8);
        assert!(b.is_empty());
        b.invariants();
    }

    #[test]
    fn spare_mut_compacts_only_when_worthwhile() {
        let mut b = ConnBuffer::with_capacity(16);
        b.push(b"0123456789");
        b.consume(2);
        // 8 unread, 2 consumed: no compaction, tail space stays 6.
        assert_eq!(b.spare_mut().len(), 6);
        b.consume(6);
        // 2 unread, 8 consumed: compaction moves them to the front.
        assert_eq!(b.spare_mut().len(), 14);
        assert_eq!(b.unread(), b"89");
        b.invariants();
    }

    #[test]
    fn write_with_makes_room_contiguous() {
        let mut b = ConnBuffer::with_capacity(10);
        b.push(b"abcdefgh");
        b.consume(5);
        b.write_with(6, |out| {
            out[..6].copy_from_slice(b"123456");
            6
        });
        assert_eq!(b.unread(), b"fgh123456");
        b.invariants();
    }

    #[test]
    fn detached_buffer_keeps_its_capacity_and_takes_storage_back() {
        let mut b = ConnBuffer::detached(8);
        b.invariants();
        assert!(!b.is_attached());
        assert_eq!((b.capacity(), b.free_space(), b.len()), (8, 8, 0));
        b.attach(vec![0; 8].into_boxed_slice());
        assert!(b.push(b"abc"));
        b.consume(3);
        let storage = b.detach();
        assert_eq!(storage.len(), 8);
        assert_eq!(b.free_space(), 8);
        b.invariants();
    }

    #[test]
    #[should_panic(expected = "detached")]
    fn writing_into_a_detached_buffer_is_a_programmer_error() {
        ConnBuffer::detached(8).push(b"a");
    }

    #[test]
    #[should_panic(expected = "unread")]
    fn detaching_unread_bytes_is_a_programmer_error() {
        let mut b = ConnBuffer::with_capacity(8);
        b.push(b"a");
        b.detach();
    }

    #[test]
    #[should_panic]
    fn write_with_over_free_space_is_a_programmer_error() {
        let mut b = ConnBuffer::with_capacity(4);
        b.push(b"abc");
        b.write_with(2, |_| 0);
    }
}
