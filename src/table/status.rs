//! STATUS: the state of one lock, or of all held locks page by page, for
//! operators (`distlockd status`). Owners are never part of it.
//!
//! Time is advanced first, and a closed session's SESSION hold whose release
//! is still deferred is shown as free: STATUS never shows a hold that a
//! command would not see.

use super::{LockTable, hash_bytes, remaining_ms};
use crate::protocol::StatusEntry;

impl LockTable {
    /// Calls `f` with the state of the lock `name` if it is held.
    pub fn status_of(&mut self, name: &[u8], now_ms: u64, f: impl FnOnce(&StatusEntry<'_>)) {
        self.advance(now_ms);
        let hash = hash_bytes(&self.name_hasher, name);
        if let Some(lock) = self.find_settled(hash, name, now_ms) {
            f(&self.entry(lock, now_ms));
        }
    }

    /// Calls `push` with held locks, in storage order, starting at `cursor`
    /// (0: the first), until `push` returns false. Returns the cursor of the
    /// first lock not taken, or 0 when every lock was. A listing that spans
    /// changes between pages may miss or repeat locks taken, released or
    /// moved meanwhile (storage is compacted after mass releases).
    pub fn status_page(
        &mut self,
        cursor: u32,
        now_ms: u64,
        mut push: impl FnMut(&StatusEntry<'_>) -> bool,
    ) -> u32 {
        self.advance(now_ms);
        let start = cursor.saturating_sub(1);
        for lock in self.store.live_locks_from(start) {
            if self.deferred_release(lock).is_some() {
                continue;
            }
            if !push(&self.entry(lock, now_ms)) {
                return lock + 1;
            }
        }
        0
    }

    fn entry(&self, lock: u32, now_ms: u64) -> StatusEntry<'_> {
        let record = self.store.record(lock);
        let extra = self.extra(lock);
        StatusEntry {
            name: self.store.name(lock),
            token: record.token,
            remaining_ms: remaining_ms(record.deadline_ms(), now_ms),
            waiters: extra.waiter_count,
            session: extra.session != super::store::NIL,
        }
    }
}
