//! Simulation hooks (compiled only into test and simulation builds): the switches through which
//! the simulator bends a node's clock, makes its disk slow, and makes chosen code paths take
//! their rare branch (BUGGIFY).
//!
//! Why here: the node reads time only as its event loop's ticks, and persists only through the
//! `Disk` trait, whose calls are synchronous; so a clock fault is applied where ticks are
//! counted, and a slow disk is a debt of simulated time that the event loop pays (sleeps)
//! right after the sync that incurred it, before anything that depended on the sync leaves.
//!
//! Invariants: the default `SimHooks` is inert (one tick per tick, no debt, BUGGIFY off); every
//! decision comes from a seeded RNG, so a run stays a function of its seed; the handles hold no
//! node state that a restart should lose (they model hardware and the environment, like the
//! simulated disk) and are shared by clones, so the simulator changes them at run time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Every hook a simulated node is handed (`ServerConfig::sim`).
#[derive(Clone, Debug, Default)]
pub struct SimHooks {
    pub clock: ClockFaults,
    pub disk_stall: DiskStall,
    pub buggify: Buggify,
}

/// Most ticks one clock jump may deliver at once.
pub const CLOCK_JUMP_TICKS_MAX: u64 = 10_000;
/// Bounds of a drifting clock's rate, in percent of real (simulated) time.
pub const CLOCK_RATE_PERCENT_MIN: u32 = 10;
pub const CLOCK_RATE_PERCENT_MAX: u32 = 1_000;

#[derive(Debug)]
struct ClockState {
    /// How fast this node's clock runs, in percent of simulated time (100: exact).
    rate_percent: u32,
    /// Percent-ticks accumulated but not yet delivered (drift below one tick).
    carry_percent: u32,
    /// While set, the clock stands still: no tick is delivered.
    stalled: bool,
    /// Ticks owed by a forward jump, delivered at the next tick.
    jump_ticks: u64,
}

impl Default for ClockState {
    fn default() -> Self {
        ClockState {
            rate_percent: 100,
            carry_percent: 0,
            stalled: false,
            jump_ticks: 0,
        }
    }
}

/// A node's clock as the simulator bends it: each timer tick of the event loop counts as
/// `ticks_due()` protocol ticks (0 while stalled, more when running fast or after a jump).
#[derive(Clone, Debug, Default)]
pub struct ClockFaults {
    state: Arc<Mutex<ClockState>>,
}

impl ClockFaults {
    fn lock(&self) -> MutexGuard<'_, ClockState> {
        // Plain data: a panic while holding the lock cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The clock runs at `rate_percent` of simulated time (clamped to the bounds above).
    pub fn set_rate_percent(&self, rate_percent: u32) {
        self.lock().rate_percent =
            rate_percent.clamp(CLOCK_RATE_PERCENT_MIN, CLOCK_RATE_PERCENT_MAX);
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.lock().stalled = stalled;
    }

    /// The clock leaps forward by `ticks` at its next tick.
    pub fn jump(&self, ticks: u64) {
        let mut st = self.lock();
        st.jump_ticks = (st.jump_ticks + ticks).min(CLOCK_JUMP_TICKS_MAX);
    }

    /// Back to an exact clock.
    pub fn reset(&self) {
        *self.lock() = ClockState::default();
    }

    /// Protocol ticks to run for one timer tick.
    pub fn ticks_due(&self) -> u64 {
        let mut st = self.lock();
        if st.stalled {
            return 0;
        }
        st.carry_percent += st.rate_percent;
        let due = u64::from(st.carry_percent / 100) + std::mem::take(&mut st.jump_ticks);
        st.carry_percent %= 100;
        due
    }
}

/// Simulated time a node's disk owes: the simulated disk adds to it when an operation is slow,
/// the event loop sleeps it off after its sync (so a slow fsync delays the acknowledgements that
/// wait for it), and at the end of each turn (slow reads).
#[derive(Clone, Debug, Default)]
pub struct DiskStall {
    owed_ns: Arc<AtomicU64>,
}

impl DiskStall {
    pub fn add(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.owed_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// The time owed so far; the debt is cleared.
    pub fn take(&self) -> Duration {
        Duration::from_nanos(self.owed_ns.swap(0, Ordering::SeqCst))
    }
}

#[derive(Debug)]
struct BuggifyState {
    /// Percent of evaluations at an enabled site that fire.
    fire_percent: u32,
    rng: StdRng,
    /// Whether each site seen so far is enabled in this run (decided at its first evaluation,
    /// with probability one half, as FoundationDB does).
    sites: BTreeMap<&'static str, bool>,
    fired: u64,
}

/// Code-path BUGGIFY for one node: off unless the simulator turned it on.
#[derive(Clone, Debug, Default)]
pub struct Buggify {
    state: Option<Arc<Mutex<BuggifyState>>>,
}

impl Buggify {
    /// BUGGIFY on: an enabled site fires in `fire_percent`% of its evaluations.
    pub fn enabled(seed: u64, fire_percent: u32) -> Buggify {
        Buggify {
            state: Some(Arc::new(Mutex::new(BuggifyState {
                fire_percent: fire_percent.min(100),
                rng: StdRng::seed_from_u64(seed),
                sites: BTreeMap::new(),
                fired: 0,
            }))),
        }
    }

    /// Whether `site` takes its rare path now.
    pub fn fire(&self, site: &'static str) -> bool {
        let Some(state) = &self.state else {
            return false;
        };
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let BuggifyState {
            fire_percent,
            rng,
            sites,
            fired,
        } = &mut *st;
        let enabled = *sites.entry(site).or_insert_with(|| rng.random_bool(0.5));
        let fire = enabled && rng.random_range(0..100) < *fire_percent;
        if fire {
            *fired += 1;
            tracing::debug!(site, "buggify");
        }
        fire
    }

    /// How often any site fired so far.
    pub fn fired(&self) -> u64 {
        self.state
            .as_ref()
            .map_or(0, |s| s.lock().unwrap_or_else(|p| p.into_inner()).fired)
    }

    /// A draw from BUGGIFY's RNG in `range` (what a fired site does, e.g. how long it delays).
    pub fn draw(&self, range: std::ops::RangeInclusive<u64>) -> u64 {
        match &self.state {
            Some(state) => state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .rng
                .random_range(range),
            None => *range.start(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_clock_delivers_one_tick_per_tick() {
        let clock = ClockFaults::default();
        assert!((0..100).all(|_| clock.ticks_due() == 1));
    }

    #[test]
    fn drift_stall_and_jump() {
        let clock = ClockFaults::default();
        clock.set_rate_percent(150);
        let ticks: u64 = (0..100).map(|_| clock.ticks_due()).sum();
        assert_eq!(ticks, 150);
        clock.set_rate_percent(50);
        let ticks: u64 = (0..100).map(|_| clock.ticks_due()).sum();
        assert_eq!(ticks, 50);
        clock.set_stalled(true);
        assert_eq!(clock.ticks_due(), 0);
        clock.set_stalled(false);
        clock.reset();
        clock.jump(40);
        assert_eq!(clock.ticks_due(), 41);
        assert_eq!(clock.ticks_due(), 1);
        clock.set_rate_percent(0);
        let ticks: u64 = (0..100).map(|_| clock.ticks_due()).sum();
        assert_eq!(ticks, u64::from(CLOCK_RATE_PERCENT_MIN));
    }

    #[test]
    fn disk_stall_is_paid_once() {
        let stall = DiskStall::default();
        stall.add(Duration::from_millis(3));
        stall.add(Duration::from_millis(4));
        assert_eq!(stall.take(), Duration::from_millis(7));
        assert_eq!(stall.take(), Duration::ZERO);
    }

    #[test]
    fn buggify_is_off_by_default_and_seeded_when_on() {
        let off = Buggify::default();
        assert!((0..100).all(|_| !off.fire("site")));
        let run = |seed| {
            let b = Buggify::enabled(seed, 50);
            (0..200)
                .map(|i| b.fire(if i % 2 == 0 { "a" } else { "b" }))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        // Over many seeds, some enable a site and some do not.
        let fired: Vec<bool> = (0..32).map(|s| run(s).contains(&true)).collect();
        assert!(fired.contains(&true) && fired.contains(&false));
    }

    #[test]
    fn buggify_macro_is_false_outside_the_simulator() {
        let hooks = SimHooks {
            buggify: Buggify::enabled(1, 100),
            ..SimHooks::default()
        };
        let fired = (0..64).filter(|_| crate::buggify!(hooks, "site")).count();
        drop(hooks);
        if cfg!(madsim) {
            assert!(fired == 0 || fired == 64);
        } else {
            assert_eq!(fired, 0);
        }
    }
}
