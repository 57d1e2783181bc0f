//! Connections waiting for their next request, and the one timer that serves them all.
//!
//! A keep-alive connection between requests registers here instead of arming a timer of its
//! own: the worker's sweeper walks the set a few times a second and fires the entries whose time
//! has come. That keeps timers off the request path and lets an idle connection shrink. Two
//! deadlines per entry: `shed` (a hot connection that went quiet gives back its request state and
//! read buffer) and `expire` (the idle timeout: the connection closes). Drain expires them all.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the sweeper looks at the set.
pub const TICK: Duration = Duration::from_millis(200);

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// Quiet long enough to give back the request state; the connection stays open.
    Shed,
    /// The idle timeout passed, or the worker drains: close.
    Expired,
}

#[derive(Debug)]
struct Slot {
    shed_at: Option<Instant>,
    expire_at: Instant,
    waker: Option<Waker>,
    fired: Option<Fired>,
}

/// Entries kept, when nobody waits, rather than given back.
const RELEASE_ABOVE: usize = 1024;

/// The waiting connections of one worker.
#[derive(Debug, Default)]
pub struct IdleSet {
    slots: RefCell<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Option<Slot>>,
    free: Vec<usize>,
    len: usize,
    /// Set by drain: every wait fires at once.
    closing: bool,
}

impl IdleSet {
    /// A wait that fires `Shed` after `shed` (if given) and `Expired` after `expire`.
    pub fn wait(&self, now: Instant, shed: Option<Duration>, expire: Duration) -> IdleWait<'_> {
        self.wait_until(shed.map(|d| now + d), now + expire)
    }

    /// A wait that fires `Shed` at `shed_at` (if given) and `Expired` at `expire_at`, to the
    /// sweeper's tick.
    pub fn wait_until(&self, shed_at: Option<Instant>, expire_at: Instant) -> IdleWait<'_> {
        let slot = Slot {
            shed_at,
            expire_at,
            waker: None,
            fired: None,
        };
        let mut s = self.slots.borrow_mut();
        let slot = if s.closing {
            Slot {
                fired: Some(Fired::Expired),
                ..slot
            }
        } else {
            slot
        };
        let key = match s.free.pop() {
            Some(k) => {
                s.entries[k] = Some(slot);
                k
            }
            None => {
                s.entries.push(Some(slot));
                s.entries.len() - 1
            }
        };
        s.len += 1;
        IdleWait { set: self, key }
    }

    /// Fires the entries whose time has come.
    pub fn sweep(&self, now: Instant) {
        let mut wake = Vec::new();
        {
            let mut s = self.slots.borrow_mut();
            if s.len == 0 && s.entries.capacity() > RELEASE_ABOVE {
                // Nobody waits: the table a crowd of connections grew is given back (a key is
                // held only by a wait, and there is none).
                s.entries = Vec::new();
                s.free = Vec::new();
            }
            for slot in s.entries.iter_mut().flatten() {
                if slot.fired.is_some() {
                    continue;
                }
                let fired = if now >= slot.expire_at {
                    Some(Fired::Expired)
                } else if slot.shed_at.is_some_and(|t| now >= t) {
                    Some(Fired::Shed)
                } else {
                    None
                };
                if fired.is_some() {
                    slot.fired = fired;
                    wake.extend(slot.waker.take());
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// Fires every wait, now and later (drain).
    pub fn expire_all(&self) {
        let mut wake = Vec::new();
        {
            let mut s = self.slots.borrow_mut();
            s.closing = true;
            for slot in s.entries.iter_mut().flatten() {
                slot.fired = Some(Fired::Expired);
                wake.extend(slot.waker.take());
            }
        }
        for w in wake {
            w.wake();
        }
    }

    /// Connections waiting.
    pub fn len(&self) -> usize {
        self.slots.borrow().len
    }

    /// Whether no connection is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A registered wait; a future of what fired. Deregisters on drop.
#[derive(Debug)]
pub struct IdleWait<'a> {
    set: &'a IdleSet,
    key: usize,
}

impl Future for IdleWait<'_> {
    type Output = Fired;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fired> {
        let mut s = self.set.slots.borrow_mut();
        let Some(slot) = s.entries.get_mut(self.key).and_then(Option::as_mut) else {
            return Poll::Ready(Fired::Expired);
        };
        if let Some(f) = slot.fired {
            return Poll::Ready(f);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for IdleWait<'_> {
    fn drop(&mut self) {
        let mut s = self.set.slots.borrow_mut();
        if let Some(e) = s.entries.get_mut(self.key) {
            *e = None;
            s.free.push(self.key);
            s.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn sheds_then_expires_and_recycles() {
        let set = IdleSet::default();
        let t0 = Instant::now();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut hot = Box::pin(set.wait(t0, Some(Duration::from_secs(1)), Duration::from_secs(60)));
        let mut cold = Box::pin(set.wait(t0, None, Duration::from_secs(2)));
        assert!(hot.as_mut().poll(&mut cx).is_pending());
        assert!(cold.as_mut().poll(&mut cx).is_pending());
        set.sweep(t0 + Duration::from_millis(500));
        assert_eq!(count.0.load(Ordering::Relaxed), 0);
        set.sweep(t0 + Duration::from_millis(1500));
        assert_eq!(hot.as_mut().poll(&mut cx), Poll::Ready(Fired::Shed));
        assert!(cold.as_mut().poll(&mut cx).is_pending());
        set.sweep(t0 + Duration::from_secs(3));
        assert_eq!(cold.as_mut().poll(&mut cx), Poll::Ready(Fired::Expired));
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        drop(hot);
        drop(cold);
        assert!(set.is_empty());
        let _again = set.wait(t0, None, Duration::from_secs(1));
        assert_eq!(set.slots.borrow().entries.len(), 2, "slots are reused");
    }

    #[test]
    fn expire_all_fires_current_and_later_waits() {
        let set = IdleSet::default();
        let now = Instant::now();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut a = Box::pin(set.wait(now, None, Duration::from_secs(60)));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        set.expire_all();
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(Fired::Expired));
        let mut b = Box::pin(set.wait(now, None, Duration::from_secs(60)));
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Ready(Fired::Expired));
    }

    #[test]
    fn the_table_a_crowd_grew_is_given_back_once_nobody_waits() {
        let set = IdleSet::default();
        let now = Instant::now();
        let crowd: Vec<IdleWait<'_>> = (0..3000)
            .map(|_| set.wait(now, None, Duration::from_secs(60)))
            .collect();
        let one = set.wait(now, None, Duration::from_secs(60));
        drop(crowd);
        set.sweep(now);
        assert!(
            set.slots.borrow().entries.len() > RELEASE_ABOVE,
            "one still waits"
        );
        drop(one);
        set.sweep(now);
        assert_eq!(set.slots.borrow().entries.capacity(), 0);
        // And it works on.
        let w = set.wait(now, None, Duration::from_secs(60));
        assert_eq!(set.len(), 1);
        drop(w);
        assert!(set.is_empty());
    }
}
