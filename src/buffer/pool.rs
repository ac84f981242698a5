//! Buffer storage lent to connections only while they have bytes in flight.
//!
//! A lock client mostly sits idle (a SESSION holder, a pooled connection), so
//! a connection holds storage for its input buffer only while it has unread
//! input (a partial frame, or frames not yet decoded) and for its output
//! buffer only while replies wait to be written; the server lends it before
//! reading or encoding and takes it back when the buffer drains. Each size of
//! buffer has its own pool.
//!
//! Steady state allocates nothing: a drained buffer goes back on the free
//! list and the next lend takes it from there. The pool allocates only when
//! the free list is empty, so it grows to the most buffers lent at once (at
//! most two per connection, as when every connection had its own).
//!
//! Shrinking: the fewest free buffers seen during a period of
//! [`BUFFER_POOL_TRIM_PERIOD_MS`] is how many nobody needed for that whole
//! period; that many, less [`BUFFERS_FREE_KEPT_MIN`], are given back to the
//! allocator during the next period, at most [`BUFFERS_FREED_PER_TURN_MAX`]
//! per turn. A load that keeps coming back within a period never sees its
//! buffers freed and re-allocated.

use super::ConnBuffer;
use crate::metrics::PoolFigures;

/// How long free buffers must go unused before they are freed: long enough
/// that a load's pauses between bursts do not free and re-allocate them.
pub const BUFFER_POOL_TRIM_PERIOD_MS: u64 = 10_000;

/// Buffers freed per turn while trimming: bounds the work a turn does for it
/// (64 calls to free, a few microseconds).
pub const BUFFERS_FREED_PER_TURN_MAX: usize = 64;

/// Free buffers never trimmed: a few connections that send a request now
/// and then are served without allocating.
pub const BUFFERS_FREE_KEPT_MIN: usize = 8;

/// Storage of one size for [`ConnBuffer`]s.
pub struct BufferPool {
    buffer_size: usize,
    free: Vec<Box<[u8]>>,
    /// Buffers attached to a connection's buffer now.
    lent: usize,
    /// Buffers allocated and not freed: `lent + free.len()`.
    allocated: usize,
    /// The fewest free buffers since the current period began.
    free_low: usize,
    /// Buffers left to free from the last period's unused ones.
    trim_due: usize,
    /// When the current period ends.
    period_end_ms: u64,
}

impl BufferPool {
    pub fn new(buffer_size: usize) -> BufferPool {
        BufferPool {
            buffer_size,
            free: Vec::with_capacity(BUFFERS_FREE_KEPT_MIN),
            lent: 0,
            allocated: 0,
            free_low: 0,
            trim_due: 0,
            period_end_ms: BUFFER_POOL_TRIM_PERIOD_MS,
        }
    }

    /// What `/metrics` shows of this pool.
    pub fn figures(&self) -> PoolFigures {
        PoolFigures {
            lent: self.lent,
            allocated: self.allocated,
            buffer_size: self.buffer_size,
        }
    }

    /// Buffers attached to a connection's buffer now.
    #[cfg(test)]
    pub fn lent(&self) -> usize {
        self.lent
    }

    /// Buffers allocated and not yet freed, lent or not.
    #[cfg(test)]
    pub fn allocated(&self) -> usize {
        self.allocated
    }

    /// Attaches storage to `buffer` if it has none: a free buffer, or a new
    /// one when none is free.
    pub fn lend(&mut self, buffer: &mut ConnBuffer) {
        if buffer.is_attached() {
            return;
        }
        debug_assert_eq!(buffer.capacity(), self.buffer_size);
        let storage = match self.free.pop() {
            Some(storage) => storage,
            None => {
                self.allocated += 1;
                vec![0; self.buffer_size].into_boxed_slice()
            }
        };
        self.free_low = self.free_low.min(self.free.len());
        self.lent += 1;
        buffer.attach(storage);
    }

    /// Takes the storage of `buffer` back if it is attached and empty.
    pub fn reclaim(&mut self, buffer: &mut ConnBuffer) {
        if buffer.is_attached() && buffer.is_empty() {
            self.take_back(buffer);
        }
    }

    /// Drops what `buffer` holds and takes its storage back (its connection
    /// is closing).
    pub fn reclaim_discarding(&mut self, buffer: &mut ConnBuffer) {
        if buffer.is_attached() {
            buffer.clear();
            self.take_back(buffer);
        }
    }

    fn take_back(&mut self, buffer: &mut ConnBuffer) {
        assert!(self.lent > 0, "a buffer came back that was not lent");
        assert_eq!(
            buffer.capacity(),
            self.buffer_size,
            "a buffer of another pool"
        );
        self.lent -= 1;
        self.free.push(buffer.detach());
    }

    /// Frees what went unused for a whole period (see module docs), at most
    /// [`BUFFERS_FREED_PER_TURN_MAX`] per call. Call once per turn.
    pub fn trim(&mut self, now_ms: u64) {
        if now_ms >= self.period_end_ms {
            self.trim_due = self.free_low.saturating_sub(BUFFERS_FREE_KEPT_MIN);
            self.free_low = self.free.len();
            self.period_end_ms = now_ms + BUFFER_POOL_TRIM_PERIOD_MS;
        }
        if self.trim_due == 0 {
            return;
        }
        let spare = self.free.len().saturating_sub(BUFFERS_FREE_KEPT_MIN);
        let n = self.trim_due.min(spare).min(BUFFERS_FREED_PER_TURN_MAX);
        self.free.truncate(self.free.len() - n);
        self.allocated -= n;
        // Less than the most a turn may free: nothing more can go.
        self.trim_due = if n < BUFFERS_FREED_PER_TURN_MAX {
            0
        } else {
            self.trim_due - n
        };
        self.free_low = self.free_low.min(self.free.len());
    }

    pub fn invariants(&self) {
        assert_eq!(
            self.lent + self.free.len(),
            self.allocated,
            "buffers lent + free == allocated"
        );
        assert!(
            self.free_low <= self.free.len(),
            "low-water mark above the free count"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 64;

    #[test]
    fn lends_while_in_flight_and_reuses_what_came_back() {
        let mut pool = BufferPool::new(SIZE);
        let mut a = ConnBuffer::detached(SIZE);
        pool.lend(&mut a);
        pool.lend(&mut a); // already attached: nothing more
        assert_eq!((pool.lent(), pool.allocated()), (1, 1));
        assert!(a.push(b"partial"));
        pool.reclaim(&mut a);
        assert!(a.is_attached(), "unread bytes keep their storage");
        a.consume(7);
        pool.reclaim(&mut a);
        assert!(!a.is_attached());
        pool.invariants();
        let mut b = ConnBuffer::detached(SIZE);
        pool.lend(&mut b);
        assert_eq!(
            (pool.lent(), pool.allocated()),
            (1, 1),
            "reused, not allocated"
        );
        pool.reclaim_discarding(&mut b);
        assert_eq!((pool.lent(), pool.allocated()), (0, 1));
        pool.invariants();
    }

    /// Lends `n` buffers and gives them back: a burst.
    fn burst(pool: &mut BufferPool, n: usize) {
        let mut buffers: Vec<ConnBuffer> = (0..n).map(|_| ConnBuffer::detached(SIZE)).collect();
        for b in &mut buffers {
            pool.lend(b);
        }
        pool.invariants();
        for b in &mut buffers {
            pool.reclaim(b);
        }
    }

    #[test]
    fn frees_buffers_unused_for_a_whole_period_a_few_per_turn() {
        let mut pool = BufferPool::new(SIZE);
        let many = BUFFERS_FREE_KEPT_MIN + 3 * BUFFERS_FREED_PER_TURN_MAX;
        burst(&mut pool, many);
        assert_eq!(pool.allocated(), many);
        // The burst's period: all were in use at once, none is freed.
        pool.trim(BUFFER_POOL_TRIM_PERIOD_MS);
        assert_eq!(pool.allocated(), many);
        // A whole period with none lent: freed, a bounded number per turn.
        let next = 2 * BUFFER_POOL_TRIM_PERIOD_MS + 1;
        pool.trim(next);
        assert_eq!(pool.allocated(), many - BUFFERS_FREED_PER_TURN_MAX);
        for turn in 1..10 {
            pool.trim(next + turn);
            pool.invariants();
        }
        assert_eq!(pool.allocated(), BUFFERS_FREE_KEPT_MIN);
    }

    #[test]
    fn keeps_what_a_steady_load_uses() {
        let mut pool = BufferPool::new(SIZE);
        let used = BUFFERS_FREE_KEPT_MIN + 40;
        for period in 1..5 {
            burst(&mut pool, used);
            pool.trim(period * BUFFER_POOL_TRIM_PERIOD_MS);
            pool.trim(period * BUFFER_POOL_TRIM_PERIOD_MS + 1);
            assert_eq!(pool.allocated(), used, "period {period}");
        }
    }

    #[test]
    #[should_panic(expected = "not lent")]
    fn taking_back_what_was_not_lent_is_a_programmer_error() {
        let mut pool = BufferPool::new(SIZE);
        pool.reclaim(&mut ConnBuffer::with_capacity(SIZE));
    }
}
