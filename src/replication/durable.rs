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
use crate::table::effects::decode_all;

/// Log entries between snapshots. A snapshot writes every hold (tens of
/// milliseconds at a million), so not too often; replaying the entries
/// after it at start-up costs about a microsecond each.
pub const ENTRIES_PER_SNAPSHOT_MAX: u64 = 100_000;

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
}

impl Durable {
    /// Opens the data directory `dir` (made if missing) and brings `table`,
    /// which must be new, to the state it holds, at `now_ms`. From then on
    /// the table records effects.
    pub fn open(dir: &Path, table: &mut LockTable, now_ms: u64) -> Result<Durable, LogError> {
        assert!(table.is_empty(), "a durable node restores a new table");
        let (mut log, state) = DurableLog::open(dir)?;
        let fresh = !log.is_initialized();
        if fresh {
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
        };
        durable.node.campaign().map_err(raft_error)?;
        let replayed = durable.drain(table, now_ms)?;
        assert_eq!(durable.node.raft.state, StateRole::Leader, "a lone voter leads");
        table.raise_next_token(token_floor);
        if fresh {
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
            let mut data = Vec::with_capacity(1 + table.effects().len());
            data.push(EFFECTS);
            data.extend_from_slice(&table.take_effects());
            self.propose(data)?;
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
            apply_entry(table, &entry.data, now_ms)?;
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

/// Applies one entry's data to the table.
fn apply_entry(table: &mut LockTable, data: &[u8], now_ms: u64) -> Result<(), LogError> {
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
    Ok(())
}

fn raft_error(e: raft::Error) -> LogError {
    LogError::Raft(e.to_string())
}
