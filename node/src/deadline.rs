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
//! Invariant: a `Deadline` completes exactly when the (simulated or real) time reaches `at`,
//! whether or not it is polled in between.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A point in time to wait for, with one armed timer.
pub struct Deadline {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub fn at(at: Instant) -> Deadline {
        Deadline { at, sleep: None }
    }

    pub fn after(wait: Duration) -> Deadline {
        Deadline::at(Instant::now() + wait)
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        if self.sleep.is_none() {
            let mut sleep = Box::pin(tokio::time::sleep_until(self.at));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.sleep = Some(sleep);
        }
        Poll::Pending
    }
}

/// The operation did not complete within its time limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct Elapsed;

/// `future`, unless `wait` passes first (as `tokio::time::timeout`, with one timer).
pub async fn timeout<F: Future>(wait: Duration, future: F) -> Result<F::Output, Elapsed> {
    let deadline = Deadline::after(wait);
    tokio::select! {
        biased;
        output = future => Ok(output),
        _ = deadline => Err(Elapsed),
    }
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
