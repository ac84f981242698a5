//! Storage for lock names too long to sit inside a lock record.
//!
//! Names are kept in size classes of [`NAME_CLASS_STEP`] bytes: class `c`
//! holds names of up to `(c + 1) * 16` bytes in fixed-size slots, with a free
//! list of slot numbers. A 32-byte name costs its 32 bytes and nothing else
//! (a heap allocation per name would add a vector header and the allocator's
//! own overhead, more than doubling it). A slot's length is kept by the
//! caller (the lock record has room for it).
//!
//! Slots live in chunks of 256 slots first, doubling up to about 1 MiB (see
//! [`super::chunked`] for why: a million 16-byte names must not be copied in
//! one growth, and their memory must go back to the kernel). When the last
//! name of a class is removed, the class starts over in the chunks it has,
//! and [`NameArena::free_spare_chunk`] gives them back one per call, so
//! memory returns to its baseline after a burst of long names without one
//! call freeing megabytes.

use super::chunked::{ChunkedVec, Shape};
use crate::limits::NAME_LEN_CEILING;

/// Slot sizes grow in steps of this many bytes.
pub const NAME_CLASS_STEP: usize = 16;
const CLASS_COUNT: usize = NAME_LEN_CEILING.div_ceil(NAME_CLASS_STEP);

/// Slots in a class's first chunk (4 KiB to 64 KiB of names).
pub const FIRST_CHUNK_SLOTS: usize = 256;

/// A class's chunks grow up to about this many bytes.
const CHUNK_BYTES_MAX: usize = 1 << 20;

/// Free-list chunks: 1 KiB first, up to 256 KiB.
type FreeList = ChunkedVec<u32, 256, { 1 << 16 }>;

/// The chunk shape of the class whose slots are `stride` bytes.
const fn class_shape(stride: usize) -> Shape {
    let cap = 1 << (CHUNK_BYTES_MAX / stride).ilog2();
    Shape::new(FIRST_CHUNK_SLOTS, cap)
}

/// Every class's chunk shape, computed once: a name's every access would
/// otherwise divide by its stride.
const CLASS_SHAPES: [Shape; CLASS_COUNT] = {
    let mut shapes = [class_shape(NAME_CLASS_STEP); CLASS_COUNT];
    let mut class = 1;
    while class < CLASS_COUNT {
        shapes[class] = class_shape((class + 1) * NAME_CLASS_STEP);
        class += 1;
    }
    shapes
};

/// Where a long name is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameSlot {
    pub len: u8,
    pub index: u32,
}

struct Class {
    chunks: Vec<Box<[u8]>>,
    /// Slots handed out so far (free or in use).
    slots: u32,
    free: FreeList,
    live: usize,
}

impl Default for Class {
    fn default() -> Class {
        Class {
            chunks: Vec::new(),
            slots: 0,
            free: FreeList::new(),
            live: 0,
        }
    }
}

#[derive(Default)]
pub struct NameArena {
    classes: [Class; CLASS_COUNT],
    /// Bit `c`: class `c` emptied and still holds chunks to give back.
    spare: u32,
}

const _: () = assert!(CLASS_COUNT <= u32::BITS as usize);

fn class_of(len: usize) -> (usize, usize) {
    debug_assert!((1..=NAME_LEN_CEILING).contains(&len));
    let class = (len - 1) / NAME_CLASS_STEP;
    (class, (class + 1) * NAME_CLASS_STEP)
}

/// The chunk of a slot of `class` and its byte offset there.
fn place(index: u32, class: usize, stride: usize) -> (usize, usize) {
    let (chunk, offset) = CLASS_SHAPES[class].locate(index as usize);
    (chunk, offset * stride)
}

impl NameArena {
    #[inline]
    pub fn insert(&mut self, name: &[u8]) -> NameSlot {
        let (class, stride) = class_of(name.len());
        // In use again: it keeps its chunks.
        self.spare &= !(1 << class);
        let c = &mut self.classes[class];
        let index = match c.free.pop() {
            Some(index) => index,
            None => {
                let index = c.slots;
                let shape = CLASS_SHAPES[class];
                if index as usize == shape.capacity(c.chunks.len()) {
                    let slots = shape.chunk_len(c.chunks.len());
                    c.chunks.push(vec![0; slots * stride].into_boxed_slice());
                }
                c.slots += 1;
                index
            }
        };
        let (chunk, start) = place(index, class, stride);
        c.chunks[chunk][start..start + name.len()].copy_from_slice(name);
        c.live += 1;
        NameSlot {
            len: name.len() as u8,
            index,
        }
    }

    #[inline]
    pub fn get(&self, slot: NameSlot) -> &[u8] {
        let (class, stride) = class_of(slot.len as usize);
        let (chunk, start) = place(slot.index, class, stride);
        &self.classes[class].chunks[chunk][start..start + slot.len as usize]
    }

    #[inline]
    pub fn remove(&mut self, slot: NameSlot) {
        let (class, _) = class_of(slot.len as usize);
        let c = &mut self.classes[class];
        c.live -= 1;
        if c.live == 0 {
            // Start over in the chunks there are; give back all but one of
            // each kind later (the one kept spares a small steady load any
            // allocation).
            c.slots = 0;
            c.free.clear();
            if c.chunks.len() > 1 || c.free.capacity() > FreeList::SHAPE.capacity_of_first() {
                self.spare |= 1 << class;
            }
        } else {
            c.free.push(slot.index);
        }
    }

    /// An emptied class still holds chunks: call [`NameArena::free_spare_chunk`].
    pub fn has_spare_chunks(&self) -> bool {
        self.spare != 0
    }

    /// Gives back one chunk of an emptied class (of names, or of its free
    /// list), down to one of each. Returns the bytes it freed.
    pub fn free_spare_chunk(&mut self) -> usize {
        let Some(class) = (self.spare != 0).then(|| self.spare.trailing_zeros() as usize) else {
            return 0;
        };
        let c = &mut self.classes[class];
        debug_assert_eq!(c.live, 0);
        if c.chunks.len() > 1 {
            return c.chunks.pop().map_or(0, |chunk| chunk.len());
        }
        let freed = c.free.free_chunk(FreeList::SHAPE.capacity_of_first());
        if freed == 0 {
            self.spare &= !(1 << class);
        }
        freed
    }

    /// Bytes reserved by all classes.
    #[cfg(test)]
    pub fn reserved_bytes(&self) -> usize {
        self.classes
            .iter()
            .map(|c| c.chunks.iter().map(|k| k.len()).sum::<usize>() + 4 * c.free.capacity())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_slots_are_reused() {
        let mut arena = NameArena::default();
        let a = arena.insert(&[b'a'; 16]);
        let b = arena.insert(&[b'b'; 17]);
        let c = arena.insert(&[b'c'; 255]);
        assert_eq!(arena.get(a), &[b'a'; 16]);
        assert_eq!(arena.get(b), &[b'b'; 17]);
        assert_eq!(arena.get(c), &[b'c'; 255][..]);
        let d = arena.insert(&[b'd'; 20]);
        arena.remove(b);
        let e = arena.insert(&[b'e'; 32]);
        assert_eq!(e.index, b.index, "a freed slot of the class is reused");
        assert_eq!(arena.get(d), &[b'd'; 20]);
        assert_eq!(arena.get(e), &[b'e'; 32]);
    }

    #[test]
    fn memory_returns_when_a_class_empties() {
        let mut arena = NameArena::default();
        let slots: Vec<NameSlot> = (0..1000u32)
            .map(|i| arena.insert(format!("a-fairly-long-lock-name-{i:08}").as_bytes()))
            .collect();
        assert!(arena.reserved_bytes() >= 1000 * 32);
        for slot in slots {
            arena.remove(slot);
        }
        assert!(arena.has_spare_chunks());
        let mut steps = 0;
        while arena.has_spare_chunks() {
            arena.free_spare_chunk();
            steps += 1;
        }
        assert!(steps > 2, "one chunk per step");
        assert!(
            arena.reserved_bytes() <= FIRST_CHUNK_SLOTS * 32 + 4 * 256,
            "one chunk of each kind is kept: {}",
            arena.reserved_bytes()
        );
    }
}
