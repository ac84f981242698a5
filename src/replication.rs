//! Replication: the lock table's changes as a Raft log, durable on every
//! node. [`log`] is raft-rs's storage over the write-ahead log and
//! snapshots.

pub mod durable;
pub mod log;
