//! A durable single node (`distlockd server --data-dir DIR`): the lock
//! table's effects (see [`crate::table::effects`]) written to the Raft log
//! of a one-voter group, fsynced before any reply that may reflect them
//! leaves, and replayed at start-up.
//!
//! Each loop turn, the table serves requests as it does in memory and
//! records the changes it made to holds; [`Durable::persist`] proposes them
//! as one log entry, appends it and fsyncs once (group commit: one fsync per
//! turn, whatever the number of requests), and the loop writes the turn's
//! replies only after that. A turn that changed no hold costs nothing.
//!
//! At start-up the newest snapshot restores the table, and the entries
//! after it are applied again, each hold with its whole TTL from then: a
//! hold never ends earlier than it would have without the restart. Tokens
//! continue above every token in the log, and above the wall clock's
//! nanoseconds as a server without a data directory starts them.
//!
//! The first entry of a new data directory (INIT) carries the owner-digest
//! key: owners are compared by digest, so a restarted server must compute
//! the same digests to recognise the same owner. Every
//! [`ENTRIES_PER_SNAPSHOT_MAX`] entries the table is written to a snapshot
//! and the log before it deleted.
//!
//! Entry data: a kind byte, then `EFFECTS`: effects as the table encodes
//! them; `INIT`: the owner key (2 × u64 LE) and the first token (u64 LE).

use std::path::Path;

use log::info;
use raft::eraftpb::{Entry, EntryType};
use raft::{Config, RawNode, StateRole};

use super::log::{DurableLog, LogError};
use crate::table::LockTable;
use crate::table::effects::{decode, decode_all};

/// Log entries between snapshots. A snapshot writes every hold (tens of
/// milliseconds at a million), so not too often; replaying the entries
/// after it at start-up costs about a microsecond each.
pub const ENTRIES_PER_SNAPSHOT_MAX: u64 = 100_000;

/// Effects per log entry at most, in bytes: a turn that changed more (say
/// thousands of connections closing, each releasing SESSION holds) writes
/// several entries, each far below the log's record limit.
pub const ENTRY_EFFECTS_BYTES_MAX: usize = 1 << 20;
const _: () = assert!(
    ENTRY_EFFECTS_BYTES_MAX + 1 + 300 < crate::storage::wal::WAL_RECORD_SIZE_MAX / 2,
    "an entry of effects, with the largest effect past the cap, fits a record"
);

const EFFECTS: u8 = 1;
const INIT: u8 = 2;

/// The node's id in its one-voter group.
const NODE_ID: u64 = 1;

/// The durable state of a single node.
pub struct Durable {
    node: RawNode<DurableLog>,
    /// Entries up to this index were proposed by this node, and their
    /// effects are in the table already.
    applied_own_through: u64,
    entries_since_snapshot: u64,
    /// The owner key came from the log (INIT) or a snapshot.
    has_init: bool,
}

impl Durable {
    /// Opens the data directory `dir` (made if missing) and brings `table`,
    /// which must be new, to the state it holds, at `now_ms`. From then on
    /// the table records effects.
    pub fn open(dir: &Path, table: &mut LockTable, now_ms: u64) -> Result<Durable, LogError> {
        assert!(table.is_empty(), "a durable node restores a new table");
        let (mut log, state) = DurableLog::open(dir)?;
        if !log.is_initialized() {
            log.bootstrap(&[NODE_ID])?;
        }
        let token_floor = table.next_token();
        if let Some(state) = &state {
            table
                .restore_state(state, now_ms)
                .map_err(LogError::State)?;
        }
        let applied = log.snapshot_index();
        let config = Config {
            id: NODE_ID,
            election_tick: 10,
            heartbeat_tick: 3,
            applied,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node = RawNode::new(&config, log, &logger).map_err(raft_error)?;
        let mut durable = Durable {
            node,
            applied_own_through: 0,
            entries_since_snapshot: 0,
            has_init: state.is_some(),
        };
        durable.node.campaign().map_err(raft_error)?;
        let replayed = durable.drain(table, now_ms)?;
        if durable.node.raft.state != StateRole::Leader {
            return Err(LogError::Raft(format!(
                "this node (id {NODE_ID}) did not become the leader of the log's group {:?}: \
                 the data directory belongs to a cluster member, not to a single server",
                durable.node.store().conf_state().voters
            )));
        }
        table.raise_next_token(token_floor);
        // A new directory, or one whose first start crashed between the
        // membership and the INIT entry: the key is this table's.
        if !durable.has_init {
            let mut data = vec![INIT];
            for word in table.owner_key() {
                data.extend_from_slice(&word.to_le_bytes());
            }
            data.extend_from_slice(&table.next_token().to_le_bytes());
            durable.propose(data)?;
            durable.drain(table, now_ms)?;
        }
        info!(
            "data directory {}: {} holds restored ({} log entries replayed)",
            dir.display(),
            table.len(),
            replayed
        );
        table.record_effects(true);
        Ok(durable)
    }

    /// Makes the changes the table recorded since the last call durable:
    /// one log entry, one fsync. Replies that may reflect them wait for
    /// this. An error leaves the log unusable: the server must stop.
    pub fn persist(&mut self, table: &mut LockTable, now_ms: u64) -> Result<(), LogError> {
        if !table.effects().is_empty() {
            let effects = table.take_effects();
            for chunk in split_effects(&effects, ENTRY_EFFECTS_BYTES_MAX) {
                let mut data = Vec::with_capacity(1 + chunk.len());
                data.push(EFFECTS);
                data.extend_from_slice(chunk);
                self.propose(data)?;
            }
        }
        self.drain(table, now_ms)?;
        if self.entries_since_snapshot >= ENTRIES_PER_SNAPSHOT_MAX {
            self.snapshot(table, now_ms)?;
        }
        Ok(())
    }

    fn propose(&mut self, data: Vec<u8>) -> Result<(), LogError> {
        self.node.propose(Vec::new(), data).map_err(raft_error)?;
        self.applied_own_through = self.node.raft.raft_log.last_index();
        self.entries_since_snapshot += 1;
        Ok(())
    }

    /// Handles every Ready in the documented order (a lone voter sends no
    /// message and receives no snapshot). Returns the entries applied.
    fn drain(&mut self, table: &mut LockTable, now_ms: u64) -> Result<usize, LogError> {
        let mut applied = 0;
        while self.node.has_ready() {
            let mut rd = self.node.ready();
            debug_assert!(rd.messages().is_empty() && rd.snapshot().is_empty());
            applied += self.apply(table, rd.take_committed_entries(), now_ms)?;
            let store = self.node.mut_store();
            store.append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                store.set_hard_state(hs)?;
            }
            store.sync()?;
            let mut light = self.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                // Written with the next sync: a lone voter's commit index
                // is recomputed from its log at start-up anyway.
                self.node.mut_store().set_commit(commit)?;
            }
            applied += self.apply(table, light.take_committed_entries(), now_ms)?;
            self.node.advance_apply();
        }
        Ok(applied)
    }

    /// Applies committed entries this node did not apply when it proposed
    /// them (all of them at start-up).
    fn apply(
        &mut self,
        table: &mut LockTable,
        entries: Vec<Entry>,
        now_ms: u64,
    ) -> Result<usize, LogError> {
        let mut applied = 0;
        for entry in entries {
            if entry.index <= self.applied_own_through
                || entry.get_entry_type() != EntryType::EntryNormal
                || entry.data.is_empty()
            {
                continue;
            }
            if apply_entry(table, &entry.data, now_ms)? == INIT {
                self.has_init = true;
            }
            applied += 1;
        }
        Ok(applied)
    }

    /// Writes the table to a snapshot at the commit index and deletes the
    /// log before it.
    fn snapshot(&mut self, table: &LockTable, now_ms: u64) -> Result<(), LogError> {
        let store = self.node.mut_store();
        let index = store.hard_state().commit;
        let conf_state = store.conf_state().clone();
        store.compact(index, &conf_state, table.encode_state(now_ms))?;
        self.entries_since_snapshot = 0;
        Ok(())
    }
}

/// `effects` cut at effect boundaries into pieces of at most `max` bytes
/// (or one effect, if a single one is longer).
fn split_effects(effects: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = effects;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        while end < rest.len() {
            let (_, len) = decode(&rest[end..]).expect("effects the table encoded");
            if end > 0 && end + len > max {
                break;
            }
            end += len;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Applies one entry's data to the table; returns its kind.
fn apply_entry(table: &mut LockTable, data: &[u8], now_ms: u64) -> Result<u8, LogError> {
    let bad = LogError::State;
    match data[0] {
        EFFECTS => {
            for effect in decode_all(&data[1..]) {
                let effect = effect.map_err(|_| bad("an effect in a log entry"))?;
                table.apply_effect(&effect, now_ms);
            }
        }
        INIT => {
            let word = |i: usize| {
                data.get(1 + 8 * i..9 + 8 * i)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .ok_or(bad("a log's first entry"))
            };
            if !table.is_empty() {
                return Err(bad("a first entry after holds"));
            }
            table.set_owner_key([word(0)?, word(1)?]);
            table.raise_next_token(word(2)?);
        }
        _ => return Err(bad("a log entry of unknown kind")),
    }
    Ok(data[0])
}

fn raft_error(e: raft::Error) -> LogError {
    LogError::Raft(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::table::effects::Effect;

    #[test]
    fn effects_are_split_at_their_boundaries_under_the_cap() {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for i in 0..50u64 {
            let name = vec![b'a' + (i % 26) as u8; 1 + (i as usize * 7) % 200];
            let effect = Effect::Free {
                name: &name,
                token: i,
            };
            effect.encode(&mut bytes);
            ends.push(bytes.len());
        }
        for max in [1, 30, 100, 1000, 1 << 20] {
            let pieces: Vec<&[u8]> = split_effects(&bytes, max).collect();
            assert_eq!(pieces.concat(), bytes, "max {max}");
            let mut at = 0;
            for piece in &pieces {
                at += piece.len();
                assert!(ends.contains(&at), "max {max}: a cut inside an effect");
                let effects = decode_all(piece).count();
                assert!(piece.len() <= max || effects == 1, "max {max}: {}", piece.len());
            }
        }
    }

    /// A first start that crashed after the membership was written but
    /// before the INIT entry: the next start writes INIT, so the owner key
    /// is the same on every start after it.
    #[test]
    fn a_first_start_cut_short_before_init_writes_it_on_the_next() {
        let tmp = crate::storage::TempDir::new("durable-init");
        let dir = tmp.0.clone();
        {
            let (mut log, _) = DurableLog::open(&dir).unwrap();
            log.bootstrap(&[NODE_ID]).unwrap();
        }
        let key = |dir: &Path| {
            let mut table = LockTable::new(Limits::default(), 1, 0);
            let _durable = Durable::open(dir, &mut table, 0).unwrap();
            table.owner_key()
        };
        let first = key(&dir);
        assert_eq!(key(&dir), first, "the key the second start wrote");
        assert_eq!(key(&dir), first);
    }
}
