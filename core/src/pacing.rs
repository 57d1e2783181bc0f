//! New HTTP/1.1 connections to one endpoint, paced (per worker).
//!
//! A burst of clients must not become a burst of connects: a backend whose accept queue
//! overflows drops SYNs, the retransmission comes a second later, after the connect timeout,
//! and every request of the burst fails at once. So each endpoint has at most
//! `max_endpoint_connecting` connects in flight and `max_endpoint_connections` connections
//! open (pooled, busy or being made). A request that finds both a full pool and no free slot
//! waits in line, first come first served, for whichever comes first: a connection another
//! request hands back (given straight to the first in line, never pooled while someone waits),
//! or a slot freed by a connection that closed or a connect that finished. The wait counts
//! against the cluster's `connect_timeout`, as HAProxy's queue counts against `timeout queue`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The counters and the line of one endpoint; `C` is what is handed over (a connection).
#[derive(Debug)]
pub struct Pacing<C> {
    /// Connections open or being made.
    open: Cell<u32>,
    /// Connects in flight.
    connecting: Cell<u32>,
    /// Requests waiting, oldest first.
    line: RefCell<VecDeque<Rc<Waiter<C>>>>,
    /// Waiters woken for a slot that have not run yet: a newcomer lets them go first.
    woken: Cell<u32>,
    /// The limits last asked under, so that a slot freed while the other limit is still
    /// reached wakes nobody in vain.
    limits: Cell<Option<PaceLimits>>,
}

impl<C> Default for Pacing<C> {
    fn default() -> Self {
        Pacing {
            open: Cell::new(0),
            connecting: Cell::new(0),
            line: RefCell::new(VecDeque::new()),
            woken: Cell::new(0),
            limits: Cell::new(None),
        }
    }
}

/// One request in line.
struct Waiter<C> {
    /// A connection handed to it.
    handed: RefCell<Option<C>>,
    /// Woken for a freed slot (counted in `woken` until it runs).
    slot: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    /// It gave up (its future was dropped): skipped by whoever hands out.
    left: Cell<bool>,
}

impl<C> Waiter<C> {
    fn new() -> Self {
        Waiter {
            handed: RefCell::new(None),
            slot: Cell::new(false),
            waker: RefCell::new(None),
            left: Cell::new(false),
        }
    }
}

impl<C> std::fmt::Debug for Waiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("slot", &self.slot.get())
            .field("left", &self.left.get())
            .finish()
    }
}

/// A connection counted as open to its endpoint; dropping it frees the slot for the first in
/// line.
#[derive(Debug)]
pub struct OpenSlot<C>(Rc<Pacing<C>>);

/// A connect in flight; dropping it frees the slot for the first in line.
#[derive(Debug)]
pub struct ConnectingSlot<C>(Rc<Pacing<C>>);

impl<C> Drop for OpenSlot<C> {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get().saturating_sub(1));
        self.0.wake();
    }
}

impl<C> Drop for ConnectingSlot<C> {
    fn drop(&mut self) {
        self.0
            .connecting
            .set(self.0.connecting.get().saturating_sub(1));
        self.0.wake();
    }
}

/// What a wait in line ended with.
pub enum Waited<C> {
    /// A connection another request handed back.
    Handed(C),
    /// A slot was freed: try again (ahead of newcomers).
    Slot,
}

/// Limits of one endpoint, per worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceLimits {
    /// Connections open or being made.
    pub max_open: u32,
    /// Connects in flight.
    pub max_connecting: u32,
}

impl<C> Pacing<C> {
    /// Slots for a new connection, if the limits allow one now and nobody waits before the
    /// caller (`woken`: the caller was woken for a freed slot and goes first).
    pub fn try_start(
        self: &Rc<Self>,
        limits: PaceLimits,
        woken: bool,
    ) -> Option<(OpenSlot<C>, ConnectingSlot<C>)> {
        if self.limits.replace(Some(limits)) != Some(limits) {
            // A reload raised the limits: the room it made goes to those in line first.
            self.wake();
        }
        let ahead = self.woken.get() > 0 || self.line.borrow().iter().any(|w| !w.left.get());
        if (ahead && !woken)
            || self.open.get() >= limits.max_open
            || self.connecting.get() >= limits.max_connecting
        {
            return None;
        }
        self.open.set(self.open.get() + 1);
        self.connecting.set(self.connecting.get() + 1);
        Some((OpenSlot(self.clone()), ConnectingSlot(self.clone())))
    }

    /// Hands `conn` to the first request in line; gives it back when nobody waits.
    pub fn hand_over(&self, conn: C) -> Option<C> {
        let mut line = self.line.borrow_mut();
        while let Some(w) = line.pop_front() {
            if w.left.get() {
                continue;
            }
            *w.handed.borrow_mut() = Some(conn);
            if let Some(waker) = w.waker.borrow_mut().take() {
                waker.wake();
            }
            return None;
        }
        Some(conn)
    }

    /// Joins the line; the future ends with what the wait brought. Dropped before it ends, it
    /// leaves the line and passes on whatever it was given.
    pub fn wait(self: &Rc<Self>) -> Wait<C> {
        let w = Rc::new(Waiter::new());
        self.line.borrow_mut().push_back(w.clone());
        Wait {
            pacing: self.clone(),
            waiter: w,
            done: false,
        }
    }

    /// Requests in line.
    pub fn waiting(&self) -> usize {
        self.line.borrow().iter().filter(|w| !w.left.get()).count()
    }

    /// Connections open or being made.
    pub fn open(&self) -> u32 {
        self.open.get()
    }

    /// Connects in flight.
    pub fn connecting(&self) -> u32 {
        self.connecting.get()
    }

    /// Wakes as many of those in line as there is room for (each woken one counts as taking
    /// a slot until it runs). Called when a slot is freed, when the limits change, and by a
    /// woken request that did not use its slot after all.
    pub fn wake(&self) {
        let mut line = self.line.borrow_mut();
        loop {
            if let Some(l) = self.limits.get() {
                let woken = self.woken.get();
                if self.open.get() + woken >= l.max_open
                    || self.connecting.get() + woken >= l.max_connecting
                {
                    return;
                }
            }
            let Some(w) = line.pop_front() else {
                return;
            };
            if w.left.get() {
                continue;
            }
            w.slot.set(true);
            self.woken.set(self.woken.get() + 1);
            if let Some(waker) = w.waker.borrow_mut().take() {
                waker.wake();
            }
            if self.limits.get().is_none() {
                // No limits known yet: one at a time.
                return;
            }
        }
    }

    /// Whether a resend (which cannot take a pooled connection) would get a slot if one idle
    /// connection were closed: the open limit is all that stands in its way.
    pub fn only_open_limit_reached(&self, limits: PaceLimits) -> bool {
        self.open.get() >= limits.max_open
            && self.connecting.get() < limits.max_connecting
            && self.woken.get() == 0
            && self.waiting() == 0
    }
}

/// A request waiting in line: see [`Pacing::wait`].
#[derive(Debug)]
pub struct Wait<C> {
    pacing: Rc<Pacing<C>>,
    waiter: Rc<Waiter<C>>,
    done: bool,
}

// Nothing in a `Wait` is pinned in place (it holds two `Rc`s and a flag).
impl<C> Unpin for Wait<C> {}

impl<C> Future for Wait<C> {
    type Output = Waited<C>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Waited<C>> {
        let handed = self.waiter.handed.borrow_mut().take();
        if let Some(conn) = handed {
            self.done = true;
            return Poll::Ready(Waited::Handed(conn));
        }
        if self.waiter.slot.replace(false) {
            self.pacing
                .woken
                .set(self.pacing.woken.get().saturating_sub(1));
            self.done = true;
            return Poll::Ready(Waited::Slot);
        }
        *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<C> Drop for Wait<C> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.waiter.left.set(true);
        self.pacing
            .line
            .borrow_mut()
            .retain(|w| !Rc::ptr_eq(w, &self.waiter));
        // What it was given goes to the next in line.
        if let Some(conn) = self.waiter.handed.borrow_mut().take() {
            if let Some(conn) = self.pacing.hand_over(conn) {
                // Nobody waits: the connection closes (the pool is the caller's to fill).
                drop(conn);
            }
        }
        if self.waiter.slot.replace(false) {
            self.pacing
                .woken
                .set(self.pacing.woken.get().saturating_sub(1));
            self.pacing.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PaceLimits = PaceLimits {
        max_open: 2,
        max_connecting: 1,
    };

    fn poll(w: &mut Wait<u32>) -> Poll<Waited<u32>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(w).poll(&mut cx)
    }

    #[test]
    fn connects_are_paced_and_the_line_is_served_in_order() {
        let p: Rc<Pacing<u32>> = Rc::new(Pacing::default());
        let (open1, connecting1) = p.try_start(LIMITS, false).expect("a first connect");
        // One connect in flight: the next waits.
        assert!(p.try_start(LIMITS, false).is_none());
        let mut first = p.wait();
        let mut second = p.wait();
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        // The connect finishes: the first in line is woken for the slot, and a newcomer does
        // not jump ahead of it.
        drop(connecting1);
        assert!(matches!(poll(&mut first), Poll::Ready(Waited::Slot)));
        assert!(poll(&mut second).is_pending());
        let (open2, connecting2) = p.try_start(LIMITS, true).expect("the woken one goes");
        drop(connecting2);
        // Two open, the limit: nobody is woken until one of them closes.
        assert!(poll(&mut second).is_pending());
        drop(open1);
        assert!(matches!(poll(&mut second), Poll::Ready(Waited::Slot)));
        assert!(p.try_start(LIMITS, true).is_some());
        drop(open2);
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_slot_on() {
        let p: Rc<Pacing<u32>> = Rc::new(Pacing::default());
        let (_open, connecting) = p.try_start(LIMITS, false).unwrap();
        let mut first = p.wait();
        let mut second = p.wait();
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        drop(connecting);
        // The first was woken but gave up before it ran: the second gets the slot.
        drop(first);
        assert!(matches!(poll(&mut second), Poll::Ready(Waited::Slot)));
        assert!(p.try_start(LIMITS, true).is_some());
    }

    #[test]
    fn a_connection_handed_back_goes_to_the_first_in_line_and_on_past_one_who_left() {
        let p: Rc<Pacing<u32>> = Rc::new(Pacing::default());
        // Nobody waits: it comes back, for the pool.
        assert_eq!(p.hand_over(7), Some(7));
        let mut first = p.wait();
        let second = p.wait();
        let mut third = p.wait();
        assert!(poll(&mut first).is_pending());
        assert_eq!(p.hand_over(1), None);
        assert!(matches!(poll(&mut first), Poll::Ready(Waited::Handed(1))));
        // The second is handed one but leaves before it runs: the third gets it.
        assert_eq!(p.hand_over(2), None);
        drop(second);
        assert!(matches!(poll(&mut third), Poll::Ready(Waited::Handed(2))));
        assert_eq!(p.waiting(), 0);
        // A newcomer does not jump a line that is there.
        let _waiting = p.wait();
        assert!(p.try_start(LIMITS, false).is_none());
        assert!(p.try_start(LIMITS, true).is_some(), "one woken goes first");
    }

    #[test]
    fn raised_limits_let_as_many_go_as_they_make_room_for() {
        let p: Rc<Pacing<u32>> = Rc::new(Pacing::default());
        let one = PaceLimits {
            max_open: 1,
            max_connecting: 1,
        };
        let _slots = p.try_start(one, false).unwrap();
        let mut line: Vec<Wait<u32>> = (0..3).map(|_| p.wait()).collect();
        for w in &mut line {
            assert!(poll(w).is_pending());
        }
        // A reload makes room for two more: the first two in line go, the newcomer that
        // brought the news waits behind them.
        let three = PaceLimits {
            max_open: 3,
            max_connecting: 3,
        };
        assert!(p.try_start(three, false).is_none());
        assert!(matches!(poll(&mut line[0]), Poll::Ready(Waited::Slot)));
        assert!(matches!(poll(&mut line[1]), Poll::Ready(Waited::Slot)));
        assert!(poll(&mut line[2]).is_pending());
        let _a = p.try_start(three, true).unwrap();
        let _b = p.try_start(three, true).unwrap();
        assert!(poll(&mut line[2]).is_pending(), "no room left");
    }
}
