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
//!   lock's name (stored in the record, not here); shard from hash bits
//!   that neither hashbrown's bucket index (low bits) nor its control byte
//!   (top 7 bits) use, so entries within a shard still spread evenly.
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
pub const SHARD_CAPACITY_MIN: usize = 16;

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
}

/// Under an eighth full, above the floor.
fn is_sparse(len: usize, capacity: usize) -> bool {
    capacity > SHARD_CAPACITY_MIN && len * 8 < capacity
}

/// What a shrink keeps: room for twice the entries, not under half the floor.
fn shrink_target(len: usize) -> usize {
    (2 * len).max(SHARD_CAPACITY_MIN / 2)
}

/// Lock record indexes by name hash.
pub struct NameIndex {
    shards: Box<[HashTable<u32>]>,
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
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first lock of this hash that `eq` accepts.
    pub fn find(&self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<u32> {
        self.shards[name_shard(hash)].find(hash, eq).copied()
    }

    /// Mutable access to that lock's entry (to point it at a moved record).
    pub fn find_mut(&mut self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<&mut u32> {
        self.shards[name_shard(hash)].find_mut(hash, eq)
    }

    /// Adds `lock` under `hash`; `rehash` gives any entry's hash, for a
    /// growth of the shard.
    pub fn insert(&mut self, hash: u64, lock: u32, rehash: impl Fn(&u32) -> u64) {
        self.shards[name_shard(hash)].insert_unique(hash, lock, rehash);
        self.len += 1;
    }

    /// Removes `lock`, indexed under `hash`; false if it was not there.
    pub fn remove(&mut self, hash: u64, lock: u32) -> bool {
        let shard = name_shard(hash);
        let Ok(entry) = self.shards[shard].find_entry(hash, |&i| i == lock) else {
            return false;
        };
        entry.remove();
        self.len -= 1;
        let table = &self.shards[shard];
        if is_sparse(table.len(), table.capacity()) {
            self.marks.set(shard);
        }
        true
    }

    pub fn has_sparse_shard(&self) -> bool {
        self.marks.any()
    }

    /// Shrinks one marked shard if it is still sparse: one rehash of at most
    /// an eighth of that shard's capacity.
    pub fn shrink_one(&mut self, rehash: impl Fn(&u32) -> u64) {
        let Some(shard) = self.marks.take_first() else {
            return;
        };
        let table = &mut self.shards[shard];
        if is_sparse(table.len(), table.capacity()) {
            table.shrink_to(shrink_target(table.len()), rehash);
        }
    }

    /// Entries the shards have room for, in all.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|t| t.capacity()).sum()
    }

    /// Checks the count and the marks; for tests.
    pub fn invariants(&self) {
        let len: usize = self.shards.iter().map(|t| t.len()).sum();
        assert_eq!(len, self.len, "index length");
        for (shard, table) in self.shards.iter().enumerate() {
            if is_sparse(table.len(), table.capacity()) {
                assert!(
                    self.marks.0[shard / 64] & (1 << (shard % 64)) != 0,
                    "sparse index shard {shard} unmarked"
                );
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
        if is_sparse(map.len(), map.capacity()) {
            self.marks.set(shard);
        }
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

    /// Checks the count and the marks; for tests.
    pub fn invariants(&self) {
        let len: usize = self.shards.iter().map(|m| m.len()).sum();
        assert_eq!(len, self.len, "extras length");
        for (shard, map) in self.shards.iter().enumerate() {
            if is_sparse(map.len(), map.capacity()) {
                assert!(
                    self.marks.0[shard / 64] & (1 << (shard % 64)) != 0,
                    "sparse extras shard {shard} unmarked"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_grows_and_shrinks_alone() {
        let mut index = NameIndex::default();
        let hash = |i: &u32| (*i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..100_000u32 {
            index.insert(hash(&i), i, hash);
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
        index.invariants();
        let before = index.capacity();
        while index.has_sparse_shard() {
            index.shrink_one(hash);
        }
        index.invariants();
        assert!(
            index.capacity() < before / 4,
            "{before} -> {}",
            index.capacity()
        );
        for i in 99_000..100_000u32 {
            assert_eq!(index.find(hash(&i), |&l| l == i), Some(i));
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
