//! A vector kept in fixed-size chunks, for the table's big arrays.
//!
//! A `Vec` grows by copying everything into an allocation twice the size,
//! and shrinks the same way: at a million lock records that is 48 MB copied
//! and a 48 MB mapping returned to the kernel in one call, tens of
//! milliseconds during which no client is answered. Here growing allocates
//! one more chunk of [`CHUNK_LEN`] elements, and shrinking frees one chunk
//! per call, so no step costs more than one chunk, at the price of one more
//! indirection per access.
//!
//! ```text
//! chunks: [ptr0, ptr1, ptr2]      (a Vec of pointers: 8 bytes per chunk)
//!           |     |     |
//!           v     v     v
//!         [0..256) [256..512) [512..768)   elements; len <= 3 * 256
//! ```

use std::ops::{Index, IndexMut};

/// Elements per chunk: 12 KiB of lock records, 4 KiB to 64 KiB of names.
pub const CHUNK_LEN: usize = 256;

pub struct ChunkedVec<T: Copy> {
    chunks: Vec<Box<[T]>>,
    len: usize,
    /// What fresh slots hold.
    fill: T,
}

impl<T: Copy> ChunkedVec<T> {
    pub fn new(fill: T) -> ChunkedVec<T> {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
            fill,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Elements the allocated chunks hold.
    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK_LEN
    }

    pub fn push(&mut self, value: T) {
        if self.len == self.capacity() {
            self.chunks
                .push(vec![self.fill; CHUNK_LEN].into_boxed_slice());
        }
        let at = self.len;
        self.len += 1;
        self[at] = value;
    }

    /// Empties it, keeping its chunks (see [`ChunkedVec::free_chunk`]).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn pop(&mut self) -> Option<T> {
        let last = self.len.checked_sub(1)?;
        let value = self[last];
        self[last] = self.fill;
        self.len = last;
        Some(value)
    }

    /// Frees the last chunk if the elements and `keep` more fit without it.
    /// Returns whether it did: one chunk per call, so a caller spreads a big
    /// shrink over many bounded steps.
    pub fn free_chunk(&mut self, keep: usize) -> bool {
        let needed = self.len.max(keep).div_ceil(CHUNK_LEN);
        if self.chunks.len() <= needed {
            return false;
        }
        self.chunks.pop();
        if self.chunks.capacity() > 2 * self.chunks.len().max(4) {
            // The pointer array: 8 bytes per chunk, so this copy is small.
            self.chunks.shrink_to(self.chunks.len().max(4));
        }
        true
    }
}

impl<T: Copy> Index<usize> for ChunkedVec<T> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        debug_assert!(i < self.len, "index {i} past length {}", self.len);
        &self.chunks[i / CHUNK_LEN][i % CHUNK_LEN]
    }
}

impl<T: Copy> IndexMut<usize> for ChunkedVec<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        debug_assert!(i < self.len, "index {i} past length {}", self.len);
        &mut self.chunks[i / CHUNK_LEN][i % CHUNK_LEN]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_shrinks_a_chunk_at_a_time() {
        let mut v = ChunkedVec::new(0u64);
        for i in 0..10 * CHUNK_LEN as u64 + 5 {
            v.push(i);
        }
        assert_eq!(v.capacity(), 11 * CHUNK_LEN);
        assert_eq!(v[3 * CHUNK_LEN + 7], 3 * CHUNK_LEN as u64 + 7);
        assert!(!v.free_chunk(0), "every chunk is in use");
        while v.len() > CHUNK_LEN + 1 {
            v.pop();
        }
        let mut freed = 0;
        while v.free_chunk(0) {
            freed += 1;
        }
        assert_eq!(freed, 9, "one chunk per call, down to what len needs");
        assert_eq!(v.capacity(), 2 * CHUNK_LEN);
        assert!(!v.free_chunk(3 * CHUNK_LEN), "keep leaves room");
        v.push(99);
        assert_eq!(v[CHUNK_LEN + 1], 99);
        while v.pop().is_some() {}
        assert!(v.free_chunk(0) && v.free_chunk(0) && !v.free_chunk(0));
        assert_eq!(v.capacity(), 0);
    }
}
