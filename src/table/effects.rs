//! The table's changes to held locks, as records another table applies to
//! hold the same locks: what a durable or replicated server writes to its
//! log, and what a replica (or a restart) replays.
//!
//! The table that serves clients decides (grants, hand-offs, expiries, all
//! by its own clock) and, while [`LockTable::record_effects`] is on,
//! records each change to a hold as an effect: a hold starts or is renewed
//! ([`Effect::Hold`], the whole hold: owner digest, token, TTL) or ends
//! ([`Effect::Free`]). A replica applies them ([`LockTable::apply_effect`])
//! without deciding anything: it never expires a hold by its clock, so
//! replicas need no common clock. Durations travel, never deadlines: a
//! replica's hold runs its TTL from when the replica applies it, which is
//! never earlier than the decision.
//!
//! Waiters are not recorded: a queued ACQUIRE lives on its connection, which
//! a failover or a restart closes; the client asks again.
//!
//! ```text
//! HOLD  1, name length u8, name, owner digest u64 LE, token u64 LE, TTL ms u32 LE
//! FREE  2, name length u8, name, token u64 LE
//! ```

use std::fmt;

use super::LockTable;
use crate::limits::NAME_LEN_CEILING;

const HOLD: u8 = 1;
const FREE: u8 = 2;

/// The first byte of [`LockTable::encode_state`]'s bytes.
const STATE_VERSION: u8 = 1;

/// One change to the held locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect<'a> {
    /// `name` is held, from when this is applied and for `ttl_ms`, by the
    /// owner whose digest is `owner`, under `token`.
    Hold {
        name: &'a [u8],
        owner: u64,
        token: u64,
        ttl_ms: u32,
    },
    /// The hold on `name` under `token` ended; nobody holds it.
    Free { name: &'a [u8], token: u64 },
}

/// Bytes that are not an effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EffectError {
    Truncated,
    UnknownKind(u8),
    BadName(usize),
}

impl fmt::Display for EffectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EffectError::Truncated => write!(f, "an effect is cut short"),
            EffectError::UnknownKind(k) => write!(f, "an effect of unknown kind {k}"),
            EffectError::BadName(n) => write!(
                f,
                "an effect's name of {n} bytes (1 to {NAME_LEN_CEILING})"
            ),
        }
    }
}

impl Effect<'_> {
    /// Appends the encoded effect to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Effect::Hold {
                name,
                owner,
                token,
                ttl_ms,
            } => {
                out.push(HOLD);
                push_name(out, name);
                out.extend_from_slice(&owner.to_le_bytes());
                out.extend_from_slice(&token.to_le_bytes());
                out.extend_from_slice(&ttl_ms.to_le_bytes());
            }
            Effect::Free { name, token } => {
                out.push(FREE);
                push_name(out, name);
                out.extend_from_slice(&token.to_le_bytes());
            }
        }
    }
}

fn push_name(out: &mut Vec<u8>, name: &[u8]) {
    assert!(
        !name.is_empty() && name.len() <= NAME_LEN_CEILING,
        "a held name of {} bytes",
        name.len()
    );
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

/// The effect at the front of `bytes` and its length; any bytes give an
/// answer, never a panic.
pub fn decode(bytes: &[u8]) -> Result<(Effect<'_>, usize), EffectError> {
    let mut r = bytes;
    let kind = take(&mut r, 1)?[0];
    let name_len = take(&mut r, 1)?[0] as usize;
    if name_len == 0 {
        return Err(EffectError::BadName(0));
    }
    let name = take(&mut r, name_len)?;
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let effect = match kind {
        HOLD => Effect::Hold {
            name,
            owner: u64_of(take(&mut r, 8)?),
            token: u64_of(take(&mut r, 8)?),
            ttl_ms: u32::from_le_bytes(take(&mut r, 4)?.try_into().expect("4 bytes")),
        },
        FREE => Effect::Free {
            name,
            token: u64_of(take(&mut r, 8)?),
        },
        other => return Err(EffectError::UnknownKind(other)),
    };
    Ok((effect, bytes.len() - r.len()))
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], EffectError> {
    if r.len() < n {
        return Err(EffectError::Truncated);
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

/// Every effect in `bytes`, in order; an error ends them.
pub fn decode_all(bytes: &[u8]) -> DecodeAll<'_> {
    DecodeAll { rest: bytes }
}

pub struct DecodeAll<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DecodeAll<'a> {
    type Item = Result<Effect<'a>, EffectError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match decode(self.rest) {
            Ok((effect, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(effect))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

impl LockTable {
    /// Starts (or stops) recording effects: from now on every change to a
    /// hold is encoded into [`LockTable::effects`]. Off by default: a
    /// server that keeps nothing pays nothing.
    pub fn record_effects(&mut self, on: bool) {
        self.effects = on.then(Vec::new);
    }

    /// The effects recorded since the last [`LockTable::take_effects`].
    pub fn effects(&self) -> &[u8] {
        self.effects.as_deref().unwrap_or(&[])
    }

    /// Hands over the effects recorded so far, leaving none.
    pub fn take_effects(&mut self) -> Vec<u8> {
        self.effects.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records that `lock` is held from now for `ttl_ms` (its owner and
    /// token as they are now). Inline: a table that does not record pays
    /// one test of a register on the request path, not a call.
    #[inline]
    pub(super) fn note_hold(&mut self, lock: u32, ttl_ms: u32) {
        if self.effects.is_some() {
            self.record_hold(lock, ttl_ms);
        }
    }

    #[inline(never)]
    fn record_hold(&mut self, lock: u32, ttl_ms: u32) {
        let mut out = self.effects.take().expect("recording");
        self.hold_effect(lock, ttl_ms).encode(&mut out);
        self.effects = Some(out);
    }

    /// `lock`'s hold as a HOLD effect of `ttl_ms`.
    fn hold_effect(&self, lock: u32, ttl_ms: u32) -> Effect<'_> {
        let record = self.store.record(lock);
        Effect::Hold {
            name: self.store.name(lock),
            owner: record.owner,
            token: record.token,
            ttl_ms,
        }
    }

    /// Records that the hold on `lock` ends (before its record goes).
    #[inline]
    pub(super) fn note_free(&mut self, lock: u32) {
        if self.effects.is_some() {
            self.record_free(lock);
        }
    }

    #[inline(never)]
    fn record_free(&mut self, lock: u32) {
        let effect = Effect::Free {
            name: self.store.name(lock),
            token: self.store.record(lock).token,
        };
        effect.encode(self.effects.as_mut().expect("recording"));
    }

    /// Applies an effect another table recorded, at `now_ms` by this
    /// table's clock. A `Free` whose token no longer holds the name is
    /// stale (a later hold replaced it) and changes nothing. Tokens handed
    /// out later are above every token applied.
    pub fn apply_effect(&mut self, effect: &Effect<'_>, now_ms: u64) {
        // What is applied is not this table's decision: not recorded.
        let recording = self.effects.take();
        self.apply_unrecorded(effect, now_ms);
        self.effects = recording;
    }

    fn apply_unrecorded(&mut self, effect: &Effect<'_>, now_ms: u64) {
        match *effect {
            Effect::Hold {
                name,
                owner,
                token,
                ttl_ms,
            } => {
                let hash = self.name_key.hash(name);
                match self.index.find(hash, |i| self.store.name(i) == name) {
                    Some(lock) => {
                        let record = self.store.record_mut(lock);
                        record.owner = owner;
                        record.token = token;
                        self.set_expiry(lock, ttl_ms, now_ms);
                    }
                    None => {
                        self.make_room(now_ms);
                        self.insert_lock(hash, name, owner, token, ttl_ms, now_ms);
                    }
                }
                self.next_token = self.next_token.max(token.saturating_add(1));
            }
            Effect::Free { name, token } => {
                let hash = self.name_key.hash(name);
                let found = self.index.find(hash, |i| self.store.name(i) == name);
                if let Some(lock) = found.filter(|&l| self.store.record(l).token == token) {
                    self.free_lock(lock, now_ms, now_ms, Some(hash));
                }
            }
        }
    }

    /// Hands out no token below `floor` from now on.
    pub fn raise_next_token(&mut self, floor: u64) {
        self.next_token = self.next_token.max(floor);
    }

    /// The whole table as bytes [`LockTable::restore_state`] takes: the
    /// owner key, the next token, and every hold as a HOLD effect whose TTL
    /// is what is left of it at `now_ms`. Waiters are not kept (see the
    /// module's docs). O(holds).
    pub fn encode_state(&self, now_ms: u64) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        for word in self.owner_key() {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.next_token.to_le_bytes());
        for lock in self.store.live_locks() {
            let left = self.store.record(lock).deadline_ms().saturating_sub(now_ms);
            let ttl_ms = left.min(u32::MAX as u64) as u32;
            self.hold_effect(lock, ttl_ms).encode(&mut out);
        }
        out
    }

    /// Takes the state [`LockTable::encode_state`] wrote, into this new
    /// table, at `now_ms`.
    pub fn restore_state(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), &'static str> {
        const WHAT: &str = "a lock table snapshot";
        let header = bytes.get(..25).ok_or(WHAT)?;
        if header[0] != STATE_VERSION {
            return Err(WHAT);
        }
        let word = |i: usize| u64::from_le_bytes(header[1 + 8 * i..9 + 8 * i].try_into().expect("8 bytes"));
        self.set_owner_key([word(0), word(1)]);
        self.raise_next_token(word(2));
        for effect in decode_all(&bytes[25..]) {
            self.apply_effect(&effect.map_err(|_| WHAT)?, now_ms);
        }
        Ok(())
    }

    /// The owner-digest key, which every table that applies this one's
    /// effects must share (digests are compared across them).
    pub fn owner_key(&self) -> [u64; 2] {
        self.owner_key.to_words()
    }

    /// Takes another table's owner-digest key; only while nothing is held.
    pub fn set_owner_key(&mut self, key: [u64; 2]) {
        // Records, not `len`: a deferred SESSION hold keeps its digest too.
        assert!(self.store.len() == 0, "owner key changed under held locks");
        self.owner_key = super::siphash::SipKey::from_words(key);
    }

    /// Every hold, in name order: name, owner digest, token, deadline.
    #[cfg(any(test, feature = "internals"))]
    pub fn holds(&self) -> Vec<(Vec<u8>, u64, u64, u64)> {
        let mut holds: Vec<_> = self
            .store
            .live_locks()
            .map(|l| {
                let r = self.store.record(l);
                (self.store.name(l).to_vec(), r.owner, r.token, r.deadline_ms())
            })
            .collect();
        holds.sort();
        holds
    }
}

#[cfg(test)]
mod tests;
