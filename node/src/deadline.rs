//! Timeouts and periodic ticks that arm one timer per deadline, however often they are polled.
//!
//! Why: madsim's `Sleep` registers a new timer (a boxed wake-up) every time it is polled while
//! pending and never cancels one, so a `tokio::time::timeout` around a read that is woken many
//! times, or an `interval` in a `select!` that is polled on every message, leaves one stale
//! timer per poll; each later wakes its task for nothing, and that poll arms yet another. In
//! simulation that was a large share of the work per message. Real tokio keeps one timer entry
//! per `Sleep`. Arming once is correct in both, because the task that polls first is the task
//! that polls later (the first poll's waker is the one woken): use these only in futures that
//! stay in one task.
//!
//! The clock is read only where a decision needs it: `timeout` reads it when its future first
//! returns `Pending` (a write or a read that completes at once costs no clock read and no
//! timer), and an armed deadline asks its timer whether it fired (`fired`).
//! A deadline that keeps moving later (`Deadline::set`, `timeout_on`: a connection's silence
//! limit, restarted by every frame) keeps its armed timer and arms the next one only when that
//! fires, so it costs one timer per wait rather than one per frame.
//!
//! Invariant: a `Deadline` completes exactly when the (simulated or real) time reaches `at`,
//! whether or not it is polled in between, and wherever `set` moved `at` meanwhile.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A point in time to wait for, with one armed timer.
pub struct Deadline {
    at: Instant,
    /// The armed timer and the instant it was armed for: never after `at` (`set` drops a
    /// timer armed for later), before `at` only once `at` moved on since it was armed.
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl Deadline {
    pub fn at(at: Instant) -> Deadline {
        Deadline { at, timer: None }
    }

    pub fn after(wait: Duration) -> Deadline {
        Deadline::at(Instant::now() + wait)
    }

    /// Moves the deadline to `at`. A later `at` keeps the armed timer: when it fires, the next
    /// poll arms one for `at` (so a deadline pushed back on every message arms one timer per
    /// wait, not one per message). An earlier `at` drops it and arms a new one.
    pub fn set(&mut self, at: Instant) {
        self.at = at;
        if self.timer.as_ref().is_some_and(|(armed, _)| *armed > at) {
            self.timer = None;
        }
    }

    /// Completes if `now` is past the deadline, else arms a timer for it.
    fn arm(&mut self, now: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if now >= self.at {
            return Poll::Ready(());
        }
        #[cfg(test)]
        tests::ARMED.with(|armed| armed.set(armed.get() + 1));
        let mut sleep = Box::pin(tokio::time::sleep_until(self.at));
        let fired = sleep.as_mut().poll(cx);
        // madsim arms its timer at least 1 ms ahead (as tokio's millisecond wheel may wake
        // late); the deadline itself stays `at`, as `fired` sees it.
        #[cfg(madsim)]
        sleep.as_mut().reset(self.at);
        self.timer = Some((self.at, sleep));
        fired
    }
}

/// Whether an armed timer has fired. madsim adds a timer on every poll of a pending `Sleep`, so
/// it is asked (the simulated clock, no timer); tokio keeps one timer entry per `Sleep`, and
/// polling it keeps the waker current and registers the entry if an earlier poll could not
/// (tokio's cooperative budget makes a `Sleep` return `Pending` before registering).
#[cfg(madsim)]
fn fired(sleep: &mut Pin<Box<Sleep>>, _cx: &mut Context<'_>) -> bool {
    sleep.is_elapsed()
}

#[cfg(not(madsim))]
fn fired(sleep: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> bool {
    sleep.as_mut().poll(cx).is_ready()
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some((armed, sleep)) = &mut this.timer {
            if !fired(sleep, cx) {
                // It wakes this task when it fires.
                return Poll::Pending;
            }
            if *armed == this.at {
                return Poll::Ready(());
            }
            // It fired for an instant `at` has moved on from: arm the next one.
        }
        this.arm(Instant::now(), cx)
    }
}

/// The operation did not complete within its time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// `future`, unless `wait` passes first (as `tokio::time::timeout`, with one timer). The wait
/// starts when `future` first returns `Pending`: one that completes at once reads no clock.
pub async fn timeout<F: Future>(wait: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut deadline: Option<Deadline> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let fired = match &mut deadline {
            Some(deadline) => Pin::new(deadline).poll(cx),
            None => {
                let now = Instant::now();
                deadline.insert(Deadline::at(now + wait)).arm(now, cx)
            }
        };
        fired.map(|()| Err(Elapsed))
    })
    .await
}

/// As `timeout`, on a deadline kept from one call to the next (one per connection): the wait
/// restarts with each call, as with `timeout`, but a timer armed by an earlier call is kept
/// until it fires (`Deadline::set`), so waits restarted many times arm few timers.
pub async fn timeout_on<F: Future>(
    deadline: &mut Deadline,
    wait: Duration,
    future: F,
) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut started = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        if !started {
            started = true;
            deadline.set(Instant::now() + wait);
        }
        Pin::new(&mut *deadline).poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// A periodic tick (as `tokio::time::interval` with `MissedTickBehavior::Delay`: the next tick
/// is a period after a tick is taken) with one timer per period. The first tick is immediate.
pub struct Ticker {
    period: Duration,
    next: Deadline,
}

impl Ticker {
    pub fn new(period: Duration) -> Ticker {
        Ticker {
            period,
            next: Deadline::at(Instant::now()),
        }
    }

    /// Waits for the next tick; cancel-safe (a tick is taken only when this completes).
    pub async fn tick(&mut self) {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match Pin::new(&mut self.next).poll(cx) {
            Poll::Ready(()) => {
                self.next = Deadline::after(self.period);
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Timers armed by deadlines on this thread (a `#[tokio::test]` runs on one thread).
        pub(super) static ARMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn armed() -> u64 {
        ARMED.with(|armed| armed.get())
    }

    /// Polls `deadline` once: whether it completed.
    async fn poll_once(deadline: &mut Deadline) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *deadline).poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn a_moved_deadline_completes_at_its_new_instant() {
        let started = Instant::now();
        let mut deadline = Deadline::at(started + Duration::from_millis(20));
        assert!(!poll_once(&mut deadline).await, "armed for 20 ms");
        deadline.set(started + Duration::from_millis(60));
        (&mut deadline).await;
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "completed when the timer armed for the earlier instant fired"
        );

        let started = Instant::now();
        let mut deadline = Deadline::at(started + Duration::from_secs(5));
        assert!(!poll_once(&mut deadline).await, "armed for 5 s");
        deadline.set(started + Duration::from_millis(20));
        (&mut deadline).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(
            waited < Duration::from_secs(5),
            "moved earlier, but waited for the timer armed for later"
        );
    }

    #[tokio::test]
    async fn timeout_on_restarts_the_wait_per_call_and_arms_one_timer_per_wait() {
        let wait = Duration::from_millis(40);
        let mut deadline = Deadline::after(wait);
        let before = armed();
        let started = Instant::now();
        // Five operations of 15 ms each: each within the wait, together well past it.
        for _ in 0..5 {
            let sleep = tokio::time::sleep(Duration::from_millis(15));
            assert_eq!(timeout_on(&mut deadline, wait, sleep).await, Ok(()));
        }
        assert!(started.elapsed() >= Duration::from_millis(75));
        let restarts_armed = armed() - before;
        assert!(
            restarts_armed <= 3,
            "{restarts_armed} timers for 5 restarts of a 40 ms wait within 75 ms"
        );
        // An operation that never completes fails one wait after it started.
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(timeout_on(&mut deadline, wait, never).await, Err(Elapsed));
        assert!(started.elapsed() >= wait);
    }

    #[tokio::test]
    async fn a_timeout_around_a_ready_future_arms_nothing() {
        let before = armed();
        for i in 0..10 {
            assert_eq!(timeout(Duration::from_secs(1), async { i }).await, Ok(i));
        }
        assert_eq!(armed(), before);
    }

    #[tokio::test]
    async fn timeout_and_ticker_keep_time() {
        let started = Instant::now();
        assert_eq!(
            timeout(Duration::from_millis(30), std::future::pending::<()>()).await,
            Err(Elapsed)
        );
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(timeout(Duration::from_millis(30), async { 7 }).await, Ok(7));
        let mut ticker = Ticker::new(Duration::from_millis(10));
        let started = Instant::now();
        for _ in 0..4 {
            ticker.tick().await;
        }
        // An immediate first tick, then at least three periods.
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn a_ticker_in_a_select_keeps_ticking_while_other_branches_fire() {
        let mut ticker = Ticker::new(Duration::from_millis(10));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        tokio::spawn(async move {
            for i in 0..20 {
                tokio::time::sleep(Duration::from_millis(3)).await;
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
        let (mut ticks, mut messages) = (0u32, 0u32);
        let started = Instant::now();
        while messages < 20 || ticks < 3 {
            tokio::select! {
                _ = ticker.tick() => ticks += 1,
                Some(_) = rx.recv() => messages += 1,
            }
        }
        // The third tick cannot come before two periods.
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
