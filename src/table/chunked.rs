//! A vector kept in chunks, for the table's big arrays.
//!
//! A `Vec` grows by copying everything into an allocation twice the size,
//! and shrinks the same way: at a million lock records that is 48 MB copied
//! and a 48 MB mapping returned to the kernel in one call, tens of
//! milliseconds during which no client is answered. Here growing allocates
//! one more chunk, and shrinking frees one chunk per call, so no step costs
//! more than one chunk, at the price of one more indirection per access.
//!
//! Chunk sizes follow a [`Shape`]: the first two hold `first` elements,
//! then each doubles up to `cap`, and every later one holds `cap`. A
//! [`ChunkedVec`] takes `first` and `cap` as constants, so that finding an
//! element, on every access, is a few instructions on immediates rather
//! than on a shape read from memory.
//!
//! ```text
//! first 256, cap 1024:
//!   chunk   0      1       2         3          4          5
//!   holds [0,256) [256,512) [512,1024) [1024,2048) [2048,3072) [3072,4096)
//!   size   256    256      512       1024       1024       1024
//! ```
//!
//! A small table thus costs one small chunk, and a big one is mostly in
//! chunks big enough (hundreds of KiB) that the C allocator maps them on
//! their own and returns their pages to the kernel when they are freed;
//! small chunks come from its heap, which keeps freed pages.

use std::ops::{Index, IndexMut};

/// Chunk sizes: `first` elements (twice), doubling up to `cap`. Both are
/// powers of two, `first <= cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    first_shift: u32,
    cap_shift: u32,
}

impl Shape {
    pub const fn new(first: usize, cap: usize) -> Shape {
        assert!(first.is_power_of_two() && cap.is_power_of_two() && first <= cap);
        Shape {
            first_shift: first.trailing_zeros(),
            cap_shift: cap.trailing_zeros(),
        }
    }

    /// Elements in the first chunk.
    pub const fn capacity_of_first(self) -> usize {
        1 << self.first_shift
    }

    /// The first chunk that holds `cap` elements; chunks before it hold
    /// `cap` elements in all.
    const fn doubling_chunks(self) -> usize {
        (self.cap_shift - self.first_shift + 1) as usize
    }

    /// The chunk holding element `i`, and `i`'s offset in it.
    #[inline]
    pub fn locate(self, i: usize) -> (usize, usize) {
        let cap = 1 << self.cap_shift;
        if i >= cap {
            return (self.doubling_chunks() - 1 + i / cap, i % cap);
        }
        let units = i >> self.first_shift;
        if units == 0 {
            return (0, i);
        }
        let chunk = units.ilog2() as usize + 1;
        (chunk, i - (1 << (self.first_shift as usize + chunk - 1)))
    }

    /// Elements in chunk `chunk`.
    pub fn chunk_len(self, chunk: usize) -> usize {
        let shift = self.first_shift as usize + chunk.saturating_sub(1);
        1 << shift.min(self.cap_shift as usize)
    }

    /// Elements in chunks `0..chunks`.
    pub fn capacity(self, chunks: usize) -> usize {
        match chunks {
            0 => 0,
            _ => {
                let (cap, doubling) = (1 << self.cap_shift, self.doubling_chunks());
                if chunks <= doubling {
                    1 << (self.first_shift as usize + chunks - 1)
                } else {
                    cap + (chunks - doubling) * cap
                }
            }
        }
    }

    /// Chunks needed to hold `n` elements.
    pub fn chunks_for(self, n: usize) -> usize {
        if n == 0 { 0 } else { self.locate(n - 1).0 + 1 }
    }
}

/// Chunks are `Vec`s reserved at their full size and filled by pushing, so
/// memory pages are touched only as elements arrive: a chunk of 1.5 MiB
/// costs resident memory for what it holds, not for its size.
/// Its chunks follow `Shape::new(FIRST, CAP)`.
pub struct ChunkedVec<T: Copy, const FIRST: usize, const CAP: usize> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T: Copy, const FIRST: usize, const CAP: usize> ChunkedVec<T, FIRST, CAP> {
    pub const SHAPE: Shape = Shape::new(FIRST, CAP);

    pub fn new() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Elements the allocated chunks hold.
    pub fn capacity(&self) -> usize {
        Self::SHAPE.capacity(self.chunks.len())
    }

    pub fn push(&mut self, value: T) {
        let (chunk, offset) = Self::SHAPE.locate(self.len);
        if chunk == self.chunks.len() {
            let len = Self::SHAPE.chunk_len(chunk);
            self.chunks.push(Vec::with_capacity(len));
        }
        debug_assert_eq!(self.chunks[chunk].len(), offset);
        self.chunks[chunk].push(value);
        self.len += 1;
    }

    /// Empties it, keeping its chunks (see [`ChunkedVec::free_chunk`]).
    pub fn clear(&mut self) {
        self.chunks.iter_mut().for_each(Vec::clear);
        self.len = 0;
    }

    pub fn pop(&mut self) -> Option<T> {
        let last = self.len.checked_sub(1)?;
        let (chunk, _) = Self::SHAPE.locate(last);
        self.len = last;
        self.chunks[chunk].pop()
    }

    /// Frees the last chunk if the elements and `keep` more fit without it.
    /// Returns the bytes it freed (0: none): one chunk per call, so a caller
    /// spreads a big shrink over many bounded steps.
    pub fn free_chunk(&mut self, keep: usize) -> usize {
        let needed = Self::SHAPE.chunks_for(self.len.max(keep));
        if self.chunks.len() <= needed {
            return 0;
        }
        let freed = self
            .chunks
            .pop()
            .map_or(0, |c| c.capacity() * std::mem::size_of::<T>());
        if self.chunks.capacity() > 2 * self.chunks.len().max(4) {
            // The pointer array: 24 bytes per chunk, so this copy is small.
            self.chunks.shrink_to(self.chunks.len().max(4));
        }
        freed
    }
}

impl<T: Copy, const FIRST: usize, const CAP: usize> Index<usize> for ChunkedVec<T, FIRST, CAP> {
    type Output = T;
    #[inline]
    fn index(&self, i: usize) -> &T {
        debug_assert!(i < self.len, "index {i} past length {}", self.len);
        let (chunk, offset) = Self::SHAPE.locate(i);
        &self.chunks[chunk][offset]
    }
}

impl<T: Copy, const FIRST: usize, const CAP: usize> IndexMut<usize> for ChunkedVec<T, FIRST, CAP> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        debug_assert!(i < self.len, "index {i} past length {}", self.len);
        let (chunk, offset) = Self::SHAPE.locate(i);
        &mut self.chunks[chunk][offset]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_place_every_element_once() {
        for shape in [Shape::new(4, 4), Shape::new(4, 32), Shape::new(256, 32768)] {
            let mut expected = (0, 0);
            for i in 0..200_000 {
                assert_eq!(shape.locate(i), expected, "{shape:?} element {i}");
                assert!(i < shape.capacity(expected.0 + 1));
                assert_eq!(shape.chunks_for(i + 1), expected.0 + 1);
                expected.1 += 1;
                if expected.1 == shape.chunk_len(expected.0) {
                    assert_eq!(shape.capacity(expected.0 + 1), i + 1);
                    expected = (expected.0 + 1, 0);
                }
            }
        }
        let shape = Shape::new(256, 1024);
        let lens: Vec<usize> = (0..6).map(|c| shape.chunk_len(c)).collect();
        assert_eq!(lens, [256, 256, 512, 1024, 1024, 1024]);
    }

    #[test]
    fn grows_and_shrinks_a_chunk_at_a_time() {
        let mut v = ChunkedVec::<u64, 16, 64>::new();
        for i in 0..1000 {
            v.push(i);
        }
        assert_eq!(v.capacity(), 1024);
        assert_eq!(v[517], 517);
        assert_eq!(v.free_chunk(0), 0, "every chunk is in use");
        while v.len() > 17 {
            v.pop();
        }
        let mut freed = 0;
        while v.free_chunk(0) > 0 {
            freed += 1;
        }
        assert_eq!(v.capacity(), 32, "down to what 17 elements need");
        assert_eq!(freed, 16, "one chunk per call");
        assert_eq!(v.free_chunk(100), 0, "keep leaves room");
        v.push(99);
        assert_eq!(v[17], 99);
        while v.pop().is_some() {}
        assert_eq!(
            [v.free_chunk(0), v.free_chunk(0), v.free_chunk(0)],
            [16 * 8, 16 * 8, 0]
        );
        assert_eq!(v.capacity(), 0);
    }
}
