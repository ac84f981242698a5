//! What a durable server keeps on disk: the write-ahead log ([`wal`]),
//! snapshot files ([`snapshot`]) and the checksum both carry ([`crc32c`]).
//!
//! Not yet read by the server, which still keeps everything in memory: the
//! durable server (`--data-dir`) is built on these next; until then only
//! their tests and the fuzz target `wal` use them.
#![cfg_attr(not(feature = "internals"), allow(dead_code))]

pub mod crc32c;
pub mod snapshot;
pub mod wal;
