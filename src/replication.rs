//! Replication: the lock table's changes as a Raft log, durable on every
//! node. [`log`] is raft-rs's storage over the write-ahead log and
//! snapshots.
//!
//! Not yet driven by the server: the loop that ticks, steps and drains a
//! `RawNode` comes next; until then only tests use it.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

pub mod log;
