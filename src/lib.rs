//! distlockd: a named-lock daemon and its blocking client.
//!
//! The request path, one file per step:
//! [`server`] (accept, read, write) → [`buffer`] (per-connection fixed
//! buffers) → [`execute`] (one frame: decode in place with [`protocol`] or
//! [`legacy`], apply, encode the reply) → [`table`] (the lock table: a
//! deterministic state machine) → [`wheel`] (expiry and wait deadlines).
//! [`limits`] names every bound; [`client`] is the blocking Rust client.

#![forbid(unsafe_code)]

pub mod auth;
pub mod buffer;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod check;
pub mod cli;
pub mod client;
pub mod execute;
pub mod http;
pub mod json;
pub mod legacy;
pub mod limits;
pub mod loadtest;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod table;
pub mod wheel;

/// Compiles the README's examples as doctests, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
