//! The timer wheel against a reference: a sorted map from (deadline,
//! insertion seq) to value. Both [`TimerWheel`] and [`WheelCore`] over a
//! plain slice store (reusing keys the way the lock table reuses records)
//! are driven through random inserts, cancels, deadline queries and polls at
//! random times; every answer must agree, with invariants checked after
//! every step.

use std::collections::BTreeMap;

use super::Source;
use crate::wheel::{
    PollStep, TimerHandle, TimerLinks, TimerStore, TimerWheel, WHEEL_HORIZON_MS, WHEEL_SLOT_COUNT,
    WheelCore,
};

/// Bits of a time that index the slots of one level.
const SLOT_BITS: u64 = WHEEL_SLOT_COUNT.trailing_zeros() as u64;

/// Runs one comparison with choices from `src`: which wheel, whether
/// cancels happen, then up to `steps` operations (fewer if `src` runs out).
pub fn run(src: &mut impl Source, steps: usize) {
    let with_cancels = src.below(4) != 0;
    if src.below(2) == 0 {
        compare_with_model::<TimerWheel<u64>>(src, steps, with_cancels);
    } else {
        compare_with_model::<CoreTimers>(src, steps, with_cancels);
    }
}

/// The reference: a sorted map from (deadline, insertion seq) to value.
#[derive(Default)]
struct Model {
    timers: BTreeMap<(u64, u64), u64>,
    deadline_of_seq: BTreeMap<u64, u64>,
    elapsed_ms: u64,
}

impl Model {
    fn insert(&mut self, deadline_ms: u64, seq: u64) {
        let deadline_ms = deadline_ms.max(self.elapsed_ms);
        self.timers.insert((deadline_ms, seq), seq);
        self.deadline_of_seq.insert(seq, deadline_ms);
    }

    fn cancel(&mut self, seq: u64) -> Option<u64> {
        let deadline_ms = self.deadline_of_seq.remove(&seq)?;
        self.timers.remove(&(deadline_ms, seq))
    }

    fn poll(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let first = self.timers.first_key_value().map(|(&key, _)| key);
        match first {
            Some((deadline_ms, seq)) if deadline_ms <= now_ms => {
                self.timers.remove(&(deadline_ms, seq));
                self.deadline_of_seq.remove(&seq);
                self.elapsed_ms = deadline_ms;
                Some((deadline_ms, seq))
            }
            _ => {
                self.elapsed_ms = self.elapsed_ms.max(now_ms);
                None
            }
        }
    }

    fn earliest(&self) -> Option<u64> {
        self.timers
            .first_key_value()
            .map(|(&(deadline_ms, _), _)| deadline_ms)
    }
}

fn random_deadline(src: &mut impl Source, elapsed_ms: u64) -> u64 {
    match src.below(8) {
        0 => elapsed_ms.saturating_sub(src.below(100)),
        1 => elapsed_ms + src.below(4),
        2 => elapsed_ms + src.below(100),
        3 => elapsed_ms + src.below(5000),
        4 => elapsed_ms + src.below(1 << 20),
        5 => elapsed_ms + src.below(1 << 32),
        6 => elapsed_ms + src.below(4 * WHEEL_HORIZON_MS),
        _ => {
            // Next multiple of 64^level, give or take a millisecond.
            let unit = 1_u64 << (SLOT_BITS * src.below(7));
            ((elapsed_ms / unit + 1) * unit + src.below(3)).saturating_sub(1)
        }
    }
}

fn random_now(src: &mut impl Source, model: &Model) -> u64 {
    let elapsed_ms = model.elapsed_ms;
    // Mostly small steps so timers pile up; rare huge jumps drain them.
    match src.below(128) {
        0 => elapsed_ms.saturating_sub(src.below(10)),
        1..=40 => elapsed_ms + src.below(3),
        41..=80 => elapsed_ms + src.below(200),
        81..=110 => elapsed_ms + src.below(1 << 16),
        111..=122 => model.earliest().unwrap_or(elapsed_ms),
        123..=125 => elapsed_ms + src.below(1 << 34),
        _ => elapsed_ms + src.below(2 * WHEEL_HORIZON_MS),
    }
}

/// What the model comparison drives: `TimerWheel`, and `WheelCore` over
/// a slice store. The methods mirror `TimerWheel`'s, values are seqs.
pub trait ModelSubject {
    type Handle: Copy;
    fn start(now_ms: u64) -> Self;
    fn insert(&mut self, deadline_ms: u64, seq: u64) -> Self::Handle;
    fn cancel(&mut self, handle: Self::Handle) -> Option<u64>;
    fn deadline(&self, handle: Self::Handle) -> Option<u64>;
    fn poll(&mut self, now_ms: u64) -> Option<(u64, u64)>;
    fn poll_bounded(&mut self, now_ms: u64, budget: &mut usize) -> PollStep<u64>;
    fn next_deadline(&self) -> Option<u64>;
    fn elapsed_ms(&self) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool;
    fn invariants(&self);
}

/// Plain delegation: paths name the inherent methods.
impl ModelSubject for TimerWheel<u64> {
    type Handle = TimerHandle;

    fn start(now_ms: u64) -> Self {
        TimerWheel::new(now_ms)
    }

    fn insert(&mut self, deadline_ms: u64, seq: u64) -> TimerHandle {
        TimerWheel::insert(self, deadline_ms, seq)
    }

    fn cancel(&mut self, handle: TimerHandle) -> Option<u64> {
        TimerWheel::cancel(self, handle)
    }

    fn deadline(&self, handle: TimerHandle) -> Option<u64> {
        TimerWheel::deadline(self, handle)
    }

    fn poll(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        TimerWheel::poll(self, now_ms)
    }

    fn poll_bounded(&mut self, now_ms: u64, budget: &mut usize) -> PollStep<u64> {
        TimerWheel::poll_bounded(self, now_ms, budget)
    }

    fn next_deadline(&self) -> Option<u64> {
        TimerWheel::next_deadline(self)
    }

    fn elapsed_ms(&self) -> u64 {
        TimerWheel::elapsed_ms(self)
    }

    fn len(&self) -> usize {
        TimerWheel::len(self)
    }

    fn is_empty(&self) -> bool {
        TimerWheel::is_empty(self)
    }

    fn invariants(&self) {
        TimerWheel::invariants(self)
    }
}

/// The simplest intrusive store: links in a slice, indexed by key.
impl TimerStore for [TimerLinks] {
    fn links(&self, key: u32) -> TimerLinks {
        self[key as usize]
    }

    fn set_links(&mut self, key: u32, links: TimerLinks) {
        self[key as usize] = links;
    }
}

/// `WheelCore` over a `Vec<TimerLinks>`, reusing keys the way the lock
/// table reuses records. A handle is (key, seq): the seq stands in for a
/// generation.
pub struct CoreTimers {
    core: WheelCore,
    links: Vec<TimerLinks>,
    /// The seq of each key's latest timer: its value.
    seqs: Vec<u64>,
    free_keys: Vec<u32>,
}

impl CoreTimers {
    fn live_key(&self, (key, seq): (u32, u64)) -> Option<u32> {
        let live = self.seqs[key as usize] == seq && self.core.is_linked(&self.links[..], key);
        live.then_some(key)
    }

    fn take_key(&mut self) -> u32 {
        self.free_keys.pop().unwrap_or_else(|| {
            self.links.push(TimerLinks::UNLINKED);
            self.seqs.push(0);
            u32::try_from(self.links.len() - 1).unwrap()
        })
    }
}

impl ModelSubject for CoreTimers {
    type Handle = (u32, u64);

    fn start(now_ms: u64) -> Self {
        CoreTimers {
            core: WheelCore::new(now_ms),
            links: Vec::new(),
            seqs: Vec::new(),
            free_keys: Vec::new(),
        }
    }

    fn insert(&mut self, deadline_ms: u64, seq: u64) -> (u32, u64) {
        let key = self.take_key();
        self.seqs[key as usize] = seq;
        let raised_ms = deadline_ms.max(self.core.elapsed_ms());
        let stored_ms = self.core.link(self.links.as_mut_slice(), key, deadline_ms);
        assert_eq!(stored_ms, raised_ms);
        assert_eq!(self.links[key as usize].deadline_ms, raised_ms);
        (key, seq)
    }

    fn cancel(&mut self, handle: (u32, u64)) -> Option<u64> {
        let key = self.live_key(handle)?;
        self.core.unlink(self.links.as_mut_slice(), key);
        self.free_keys.push(key);
        Some(handle.1)
    }

    fn deadline(&self, handle: (u32, u64)) -> Option<u64> {
        let key = self.live_key(handle)?;
        Some(self.links[key as usize].deadline_ms)
    }

    fn poll(&mut self, now_ms: u64) -> Option<(u64, u64)> {
        let (deadline_ms, key) = self.core.poll(self.links.as_mut_slice(), now_ms)?;
        self.free_keys.push(key);
        Some((deadline_ms, self.seqs[key as usize]))
    }

    fn poll_bounded(&mut self, now_ms: u64, budget: &mut usize) -> PollStep<u64> {
        match self
            .core
            .poll_bounded(self.links.as_mut_slice(), now_ms, budget)
        {
            PollStep::Fired(deadline_ms, key) => {
                self.free_keys.push(key);
                PollStep::Fired(deadline_ms, self.seqs[key as usize])
            }
            PollStep::Idle => PollStep::Idle,
            PollStep::Budget => PollStep::Budget,
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.core.next_deadline()
    }

    fn elapsed_ms(&self) -> u64 {
        self.core.elapsed_ms()
    }

    fn len(&self) -> usize {
        self.links.len() - self.free_keys.len()
    }

    fn is_empty(&self) -> bool {
        self.core.is_empty()
    }

    fn invariants(&self) {
        let linked = self.core.invariants(&self.links[..]);
        assert_eq!(linked, self.len(), "every live key is linked");
        assert_eq!(self.core.is_empty(), linked == 0);
        for &key in &self.free_keys {
            assert_eq!(
                self.links[key as usize],
                TimerLinks::UNLINKED,
                "free key {key}"
            );
        }
    }
}

/// Random operations on the wheel and the model side by side; every
/// answer must agree. Without cancels `next_deadline` must be exact.
pub fn compare_with_model<W: ModelSubject>(
    src: &mut impl Source,
    steps: usize,
    with_cancels: bool,
) {
    let start_ms = [0, 1 << 20, (63 << 30) + 5, WHEEL_HORIZON_MS - 100][src.below(4) as usize];
    let mut wheel = W::start(start_ms);
    let mut model = Model {
        elapsed_ms: start_ms,
        ..Model::default()
    };
    let mut handles: Vec<(W::Handle, u64)> = Vec::new();
    // A bounded poll left a cascade unfinished: next_deadline answers
    // elapsed until it is done.
    let mut cascading = false;
    for seq in 0..steps as u64 {
        if src.is_exhausted() {
            break;
        }
        match src.below(10) {
            0..=4 => {
                let deadline_ms = random_deadline(src, model.elapsed_ms);
                handles.push((wheel.insert(deadline_ms, seq), seq));
                model.insert(deadline_ms, seq);
            }
            5 if with_cancels && !handles.is_empty() => {
                let (handle, seq) = handles[src.below(handles.len() as u64) as usize];
                assert_eq!(wheel.cancel(handle), model.cancel(seq), "step {seq}");
            }
            6 if !handles.is_empty() => {
                let (handle, seq) = handles[src.below(handles.len() as u64) as usize];
                let expected = model.deadline_of_seq.get(&seq).copied();
                assert_eq!(wheel.deadline(handle), expected, "step {seq}");
            }
            7 => {
                let now_ms = random_now(src, &model);
                // Small budgets: cascades are cut short, links and cancels
                // come in between, and the order must not change.
                for _ in 0..=src.below(40) {
                    let mut budget = src.below(4) as usize;
                    match wheel.poll_bounded(now_ms, &mut budget) {
                        PollStep::Fired(deadline_ms, value) => {
                            let expected = model.poll(now_ms);
                            assert_eq!(Some((deadline_ms, value)), expected, "step {seq}");
                            cascading = false;
                        }
                        PollStep::Idle => {
                            assert_eq!(model.poll(now_ms), None, "step {seq}");
                            cascading = false;
                            break;
                        }
                        PollStep::Budget => {
                            // Elapsed may move to the start of the slot being
                            // cascaded (not past `now_ms`; a cascade begun
                            // earlier may go on at an older `now_ms`): no
                            // timer is due before it.
                            let elapsed_ms = wheel.elapsed_ms();
                            let latest_ms = now_ms.max(model.elapsed_ms);
                            assert!((model.elapsed_ms..=latest_ms).contains(&elapsed_ms));
                            assert!(model.earliest().is_none_or(|e| e >= elapsed_ms));
                            model.elapsed_ms = elapsed_ms;
                            cascading = wheel.next_deadline() == Some(elapsed_ms);
                        }
                    }
                    wheel.invariants();
                }
            }
            _ => {
                let now_ms = random_now(src, &model);
                // Sometimes stop before the due timers are drained.
                for _ in 0..=src.below(40) {
                    let fired = wheel.poll(now_ms);
                    assert_eq!(fired, model.poll(now_ms), "step {seq}");
                    wheel.invariants();
                    cascading = false;
                    if fired.is_none() {
                        break;
                    }
                }
            }
        }
        wheel.invariants();
        assert_eq!(wheel.len(), model.timers.len(), "step {seq}");
        assert_eq!(wheel.elapsed_ms(), model.elapsed_ms, "step {seq}");
        let exact = !with_cancels && !cascading;
        check_next_deadline(wheel.next_deadline(), &model, exact, seq);
        if handles.len() > 2000 {
            handles.drain(..1000);
        }
    }
    let end_ms = model.elapsed_ms + 100 * WHEEL_HORIZON_MS;
    while let Some(expected) = model.poll(end_ms) {
        assert_eq!(wheel.poll(end_ms), Some(expected), "final drain");
    }
    assert_eq!(wheel.poll(end_ms), None);
    assert!(wheel.is_empty());
}

fn check_next_deadline(answer: Option<u64>, model: &Model, exact: bool, step: u64) {
    let earliest = model.earliest();
    if exact {
        assert_eq!(answer, earliest, "step {step}");
        return;
    }
    assert_eq!(answer.is_some(), earliest.is_some(), "step {step}");
    if let (Some(answer), Some(earliest)) = (answer, earliest) {
        assert!(
            answer <= earliest,
            "step {step}: {answer} later than {earliest}"
        );
        assert!(
            answer >= model.elapsed_ms,
            "step {step}: {answer} behind elapsed"
        );
    }
}
