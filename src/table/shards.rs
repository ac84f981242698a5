//! The table's two hash maps, each split into shards ([`INDEX_SHARDS`],
//! [`EXTRAS_SHARDS`]) so that no single rehash stalls the event loop.
//!
//! A hash table grows and shrinks by rehashing every entry at once: at a
//! million locks one growth or shrink of a single table moves half a million
//! entries, tens of milliseconds during which no client is answered. Split
//! into shards that grow and shrink on their own, the largest rehash moves
//! one shard's entries: about 1/256 of the locks, well under a millisecond
//! at the default `locks_max`. Side data (SESSION bindings and wait queues)
//! is rarer, so its map has fewer shards and a smaller memory floor.
//!
//! - [`NameIndex`]: lock record indexes, found by the keyed hash of the
//!   lock's name (the name is in the record, not here). The shard comes
//!   from bits 32 to 39 of the hash; each entry keeps the low 18 bits as a
//!   tag, from which a growth or shrink recomputes where the entry goes
//!   without reading the record or hashing the name again (that read, a
//!   cache miss per entry, made a shard's growth at a million locks cost
//!   2 ms), and which a lookup compares before it reads a record.
//! - [`Extras`]: a lock's side data by record index; shard from the index's
//!   low bits (indexes are dense).
//!
//! A shard that a removal leaves under an eighth full (above a small floor)
//! is marked; [`NameIndex::shrink_one`] and [`Extras::shrink_one`] give one
//! marked shard's memory back, as one bounded step of the table's deferred
//! work. Marks are a bitmap, so finding one is a few word reads.

use std::collections::HashMap;

use hashbrown::HashTable;

use super::store::LockExtra;

/// Shards of the name index: the largest rehash is about 1/256 of the locks.
pub const INDEX_SHARDS: usize = 256;

/// Shards of the side data: 1/64 of a million SESSION holds is a rehash of
/// about 16,000 entries, a fraction of a millisecond.
pub const EXTRAS_SHARDS: usize = 64;

/// The most shards a map has, for the marks' bitmap.
const SHARDS_MAX: usize = 256;

/// Capacity each shard keeps however empty it gets; a shrink never goes
/// under half of it, so a small steady load never rehashes.
pub const SHARD_CAPACITY_MIN: usize = 8;

const MARK_WORDS: usize = SHARDS_MAX / 64;
const _: () = assert!(INDEX_SHARDS.is_power_of_two() && INDEX_SHARDS <= SHARDS_MAX);
const _: () = assert!(EXTRAS_SHARDS.is_power_of_two() && EXTRAS_SHARDS <= SHARDS_MAX);

/// Shards that may be sparse.
#[derive(Default)]
struct Marks([u64; MARK_WORDS]);

impl Marks {
    fn set(&mut self, shard: usize) {
        self.0[shard / 64] |= 1 << (shard % 64);
    }

    fn take_first(&mut self) -> Option<usize> {
        let word = self.0.iter().position(|&w| w != 0)?;
        let bit = self.0[word].trailing_zeros() as usize;
        self.0[word] &= !(1 << bit);
        Some(word * 64 + bit)
    }

    fn any(&self) -> bool {
        self.0.iter().any(|&w| w != 0)
    }

    /// Marks `shard` if a removal left it sparse.
    fn note(&mut self, shard: usize, len: usize, capacity: usize) {
        if is_sparse(len, capacity) {
            self.set(shard);
        }
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks that the shards' lengths add up to `total` and that every
    /// sparse shard is marked; `sizes` gives each shard's (len, capacity).
    fn invariants(&self, what: &str, total: usize, sizes: impl Iterator<Item = (usize, usize)>) {
        let mut sum = 0;
        for (shard, (len, capacity)) in sizes.enumerate() {
            sum += len;
            if is_sparse(len, capacity) {
                let marked = self.0[shard / 64] & (1 << (shard % 64)) != 0;
                assert!(marked, "sparse {what} shard {shard} unmarked");
            }
        }
        assert_eq!(sum, total, "{what} length");
    }
}

/// Under an eighth full, above the floor.
fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > SHARD_CAPACITY_MIN && len * 8 < capacity
}

/// What a shrink keeps: room for twice the entries, not under half the floor.
fn shrink_target(len: usize) -> usize {
    (2 * len).max(SHARD_CAPACITY_MIN / 2)
}

/// One index entry: a lock record and the low 18 bits of its name's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry([u8; ENTRY_SIZE]);

/// An entry packs a record index (30 bits: lock records stay below
/// `LOCKS_CEILING`) and a tag of the name's hash (18 bits) into 6 bytes,
/// 7 with hashbrown's control byte: at a million locks, 4 bytes less per
/// lock than a 4-byte index and a 4-byte tag.
const ENTRY_SIZE: usize = 6;
const LOCK_BITS: u32 = 30;
const TAG_BITS: u32 = 48 - LOCK_BITS;
const _: () = assert!(crate::limits::LOCKS_CEILING <= 1 << LOCK_BITS);

impl Entry {
    fn new(lock: u32, tag: u32) -> Entry {
        debug_assert!(lock < 1 << LOCK_BITS && tag < 1 << TAG_BITS);
        let packed = lock as u64 | (tag as u64) << LOCK_BITS;
        let mut bytes = [0; ENTRY_SIZE];
        bytes.copy_from_slice(&packed.to_le_bytes()[..ENTRY_SIZE]);
        Entry(bytes)
    }

    fn packed(&self) -> u64 {
        let mut bytes = [0; 8];
        bytes[..ENTRY_SIZE].copy_from_slice(&self.0);
        u64::from_le_bytes(bytes)
    }

    fn lock(&self) -> u32 {
        (self.packed() & ((1 << LOCK_BITS) - 1)) as u32
    }

    fn tag(&self) -> u32 {
        (self.packed() >> LOCK_BITS) as u32
    }
}

/// Where an entry goes in its shard: a hash of its tag alone. Multiplying
/// by an odd constant keeps the tag's randomness in the low bits (the
/// bucket) and spreads it to the top 7 (hashbrown's control byte). With
/// 2^18 tags, entries spread evenly in shards of up to 2^18 buckets (about
/// 58 million locks in all); beyond that, lookups stay right but probe
/// further.
fn placement(tag: u32) -> u64 {
    (tag as u64 | (tag as u64) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn tag_of(hash: u64) -> u32 {
    (hash & ((1 << TAG_BITS) - 1)) as u32
}

/// Lock record indexes by name hash.
pub struct NameIndex {
    shards: Box<[HashTable<Entry>]>,
    marks: Marks,
    len: usize,
}

impl Default for NameIndex {
    fn default() -> NameIndex {
        NameIndex {
            shards: (0..INDEX_SHARDS).map(|_| HashTable::new()).collect(),
            marks: Marks::default(),
            len: 0,
        }
    }
}

fn name_shard(hash: u64) -> usize {
    (hash >> 32) as usize % INDEX_SHARDS
}

impl NameIndex {
    #[cfg(any(test, feature = "internals"))]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first lock of this hash that `eq` accepts.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        self.shards[name_shard(hash)]
            .find(placement(tag), |e| e.tag() == tag && eq(e.lock()))
            .map(Entry::lock)
    }

    /// Points the entry of lock `from`, indexed under `hash`, at `to` (a
    /// moved record). False if it was not there.
    pub fn repoint(&mut self, hash: u64, from: u32, to: u32) -> bool {
        let tag = tag_of(hash);
        let shard = &mut self.shards[name_shard(hash)];
        match shard.find_mut(placement(tag), |e| e.tag() == tag && e.lock() == from) {
            Some(entry) => {
                *entry = Entry::new(to, tag);
                true
            }
            None => false,
        }
    }

    /// Adds `lock` under `hash`.
    pub fn insert(&mut self, hash: u64, lock: u32) {
        let tag = tag_of(hash);
        let entry = Entry::new(lock, tag);
        self.shards[name_shard(hash)].insert_unique(placement(tag), entry, |e| placement(e.tag()));
        self.len += 1;
    }

    /// Removes `lock`, indexed under `hash`; false if it was not there.
    pub fn remove(&mut self, hash: u64, lock: u32) -> bool {
        let shard = name_shard(hash);
        let tag = tag_of(hash);
        let found =
            self.shards[shard].find_entry(placement(tag), |e| e.tag() == tag && e.lock() == lock);
        let Ok(entry) = found else {
            return false;
        };
        entry.remove();
        self.len -= 1;
        let table = &self.shards[shard];
        self.marks.note(shard, table.len(), table.capacity());
        true
    }

    pub fn has_sparse_shard(&self) -> bool {
        self.marks.any()
    }

    /// Shrinks one marked shard if it is still sparse: one rehash of at most
    /// an eighth of that shard's capacity.
    pub fn shrink_one(&mut self) {
        let Some(shard) = self.marks.take_first() else {
            return;
        };
        let table = &mut self.shards[shard];
        if is_sparse(table.len(), table.capacity()) {
            table.shrink_to(shrink_target(table.len()), |e| placement(e.tag()));
        }
    }

    /// Entries the shards have room for, in all.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|t| t.capacity()).sum()
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks the count and the marks, and that `hash_of` gives each
    /// entry's lock the hash it is indexed under; for tests.
    pub fn invariants(&self, hash_of: impl Fn(u32) -> u64) {
        let sizes = self.shards.iter().map(|t| (t.len(), t.capacity()));
        self.marks.invariants("index", self.len, sizes);
        for (shard, table) in self.shards.iter().enumerate() {
            for e in table.iter() {
                let hash = hash_of(e.lock());
                assert_eq!((name_shard(hash), tag_of(hash)), (shard, e.tag()), "{e:?}");
            }
        }
    }
}

/// Each lock's side data, for the locks that have some, by record index.
pub struct Extras {
    shards: Box<[HashMap<u32, LockExtra>]>,
    marks: Marks,
    len: usize,
}

impl Default for Extras {
    fn default() -> Extras {
        Extras {
            shards: (0..EXTRAS_SHARDS).map(|_| HashMap::new()).collect(),
            marks: Marks::default(),
            len: 0,
        }
    }
}

fn extra_shard(lock: u32) -> usize {
    lock as usize % EXTRAS_SHARDS
}

impl Extras {
    #[cfg(any(test, feature = "internals"))]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, lock: u32) -> Option<&LockExtra> {
        self.shards[extra_shard(lock)].get(&lock)
    }

    pub fn insert(&mut self, lock: u32, extra: LockExtra) {
        if self.shards[extra_shard(lock)].insert(lock, extra).is_none() {
            self.len += 1;
        }
    }

    pub fn remove(&mut self, lock: u32) -> Option<LockExtra> {
        let shard = extra_shard(lock);
        let map = &mut self.shards[shard];
        let extra = map.remove(&lock)?;
        self.len -= 1;
        self.marks.note(shard, map.len(), map.capacity());
        Some(extra)
    }

    pub fn has_sparse_shard(&self) -> bool {
        self.marks.any()
    }

    /// As [`NameIndex::shrink_one`].
    pub fn shrink_one(&mut self) {
        let Some(shard) = self.marks.take_first() else {
            return;
        };
        let map = &mut self.shards[shard];
        if is_sparse(map.len(), map.capacity()) {
            map.shrink_to(shrink_target(map.len()));
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|m| m.capacity()).sum()
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks the count and the marks; for tests.
    pub fn invariants(&self) {
        let sizes = self.shards.iter().map(|m| (m.len(), m.capacity()));
        self.marks.invariants("extras", self.len, sizes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_grows_and_shrinks_alone() {
        let mut index = NameIndex::default();
        let hash = |i: &u32| {
            (*i as u64 + 1)
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .rotate_left(17)
        };
        for i in 0..100_000u32 {
            index.insert(hash(&i), i);
        }
        let largest = index.shards.iter().map(|t| t.capacity()).max().unwrap();
        assert!(
            largest < 4 * 100_000 / INDEX_SHARDS,
            "largest shard {largest}: the hash spreads over the shards"
        );
        for i in 0..99_000u32 {
            assert!(index.remove(hash(&i), i));
        }
        assert!(!index.remove(hash(&0), 0));
        index.invariants(|i| hash(&i));
        let before = index.capacity();
        while index.has_sparse_shard() {
            index.shrink_one();
        }
        index.invariants(|i| hash(&i));
        assert!(
            index.capacity() < before / 4,
            "{before} -> {}",
            index.capacity()
        );
        for i in 99_000..100_000u32 {
            assert_eq!(index.find(hash(&i), |l| l == i), Some(i));
        }
        assert_eq!(index.len(), 1000);
    }

    #[test]
    fn extras_shrink_one_shard_at_a_time() {
        let mut extras = Extras::default();
        for i in 0..50_000u32 {
            extras.insert(i, LockExtra::NONE);
        }
        for i in 0..50_000u32 {
            assert!(extras.remove(i).is_some());
        }
        extras.invariants();
        let mut steps = 0;
        while extras.has_sparse_shard() {
            extras.shrink_one();
            steps += 1;
        }
        assert!(steps <= EXTRAS_SHARDS);
        assert!(extras.capacity() <= EXTRAS_SHARDS * SHARD_CAPACITY_MIN);
        extras.invariants();
    }
}
