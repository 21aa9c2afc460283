//! A deadline that is moved later far more often than it fires: a client's request timeout
//! (set again for every request) and a client connection's idle timeout (set again before every
//! read).
//!
//! Why: a fresh `deadline::Deadline` per request arms one timer per request, and in madsim a
//! timer is never cancelled, so each one later wakes its task for nothing (a request timeout of
//! 1 s with a request every ~25 ms: one spurious wake-up per request). This keeps the timer it
//! armed while the deadline only moves later; when that timer fires before the deadline it
//! arms one for the deadline as it is then. With a timeout `T` and requests every `t`, that is
//! about one timer per `T` instead of one per `t`. In tokio it saves a timer entry per request.
//!
//! `deadline::Deadline::set` keeps a timer the same way for a deadline that stays in one task
//! (a peer connection's silence limit); this one also follows an owner that moves between
//! tasks (a `Client` is used from whichever task holds it), at the price of a waker per timer.
//! Folding the two into one type is left to do.
//!
//! Invariants: `poll_elapsed` is ready exactly when the time reaches the deadline last `set`,
//! and whenever it returns pending, a timer is armed, no later than that deadline, that wakes
//! the task that polled last (a timer armed by another task is replaced: the owner may move
//! between tasks).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// The timer a `MovingDeadline` armed: when it fires and whom it wakes.
struct Armed {
    at: Instant,
    waker: Waker,
    /// Kept so that the timer stays registered (tokio cancels a dropped `Sleep`).
    _sleep: Pin<Box<Sleep>>,
}

pub struct MovingDeadline {
    at: Instant,
    armed: Option<Armed>,
}

impl MovingDeadline {
    /// A deadline at `at` (nothing is armed until it is polled).
    pub fn new(at: Instant) -> MovingDeadline {
        MovingDeadline { at, armed: None }
    }

    /// The deadline now is `at`; a timer armed for a later time is dropped.
    pub fn set(&mut self, at: Instant) {
        self.at = at;
        if self.armed.as_ref().is_some_and(|armed| armed.at > at) {
            self.armed = None;
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// Ready once the time reaches the deadline.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.at {
            return Poll::Ready(());
        }
        let keep = self
            .armed
            .as_ref()
            .is_some_and(|armed| armed.at > now && armed.waker.will_wake(cx.waker()));
        if !keep {
            let mut sleep = Box::pin(tokio::time::sleep_until(self.at));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.armed = Some(Armed {
                at: self.at,
                waker: cx.waker().clone(),
                _sleep: sleep,
            });
        }
        debug_assert!(self.armed.as_ref().is_some_and(|armed| armed.at <= self.at));
        Poll::Pending
    }

    /// Waits until the time reaches the deadline.
    pub async fn elapsed(&mut self) {
        std::future::poll_fn(|cx| self.poll_elapsed(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn fires_at_the_deadline_last_set() {
        let start = Instant::now();
        let mut deadline = MovingDeadline::new(start + ms(20));
        // Polled once (arms a timer at 20 ms), then moved later twice.
        assert!(tokio::time::timeout(ms(5), deadline.elapsed())
            .await
            .is_err());
        deadline.set(start + ms(40));
        deadline.set(start + ms(60));
        deadline.elapsed().await;
        assert!(start.elapsed() >= ms(60));
        assert_eq!(deadline.at(), start + ms(60));
        // Moved earlier than an armed timer: the earlier time counts.
        let start = Instant::now();
        deadline.set(start + ms(10_000));
        assert!(tokio::time::timeout(ms(5), deadline.elapsed())
            .await
            .is_err());
        deadline.set(start + ms(30));
        deadline.elapsed().await;
        let waited = start.elapsed();
        assert!(waited >= ms(30) && waited < ms(5_000), "{waited:?}");
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_is_ready_at_once() {
        let mut deadline = MovingDeadline::new(Instant::now());
        deadline.elapsed().await;
        deadline.set(Instant::now() - ms(1));
        deadline.elapsed().await;
    }

    #[tokio::test]
    async fn wakes_the_task_that_polled_last() {
        let start = Instant::now();
        let mut deadline = MovingDeadline::new(start + ms(40));
        // Armed by one task, which ends before the deadline; awaited to the end by another
        // (which the timer armed by the first would never wake).
        let mut deadline = tokio::spawn(async move {
            assert!(tokio::time::timeout(ms(5), deadline.elapsed())
                .await
                .is_err());
            deadline
        })
        .await
        .expect("first task");
        let second = tokio::spawn(async move { deadline.elapsed().await });
        tokio::time::timeout(ms(5_000), second)
            .await
            .expect("the second task is woken")
            .expect("second task");
        assert!(start.elapsed() >= ms(40));
    }
}
