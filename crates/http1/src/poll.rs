//! Busy-polling a socket for a short while before sleeping on it, when the thread has nothing
//! else to do.
//!
//! Why: a proxy at low concurrency waits twice per request, for the replica's answer and for the
//! caller's next request, and each wait that sleeps in `epoll_wait` ends with a wake-up: the
//! peer's write has to interrupt this thread's CPU out of idle and the scheduler has to switch
//! back to it. On a virtual machine an idle CPU halts and the interrupt goes through the
//! hypervisor, so each such wake-up costs tens of microseconds, on the request's critical path. A
//! thread that keeps polling its event loop (no sleep) sees the bytes as soon as they land, and the
//! writer does not have to wake anyone.
//!
//! The price is CPU: the thread stays busy for up to the budget after every request. So it polls
//! only while it has no other request in flight (under load it always has, and then it sleeps as
//! before), and the budget is the operator's (0 turns it off).
//!
//! Polling here yields to the event loop between looks, so the loop's other tasks keep running and
//! each look is one non-blocking `epoll_wait` of the runtime, not a read attempt per spin.

use std::cell::Cell;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::stream::Stream;

thread_local! {
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// Requests being handled on this thread right now.
pub fn requests_in_flight() -> usize {
    IN_FLIGHT.get()
}

/// Counts one request as in flight on this thread for as long as it lives.
#[must_use]
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> InFlight {
        IN_FLIGHT.set(IN_FLIGHT.get() + 1);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.set(IN_FLIGHT.get().saturating_sub(1));
    }
}

/// Polls `stream` until it is readable, for at most `budget`, and only for as long as no more than
/// `own` requests are in flight on this thread (the caller's own: 1 while handling a request, 0
/// between requests). Returns when the stream is readable, or when polling should give way to an
/// ordinary sleeping read; it never reads.
pub async fn until_readable(stream: &Stream, budget: Duration, own: usize) {
    if budget.is_zero() {
        return;
    }
    let start = Instant::now();
    loop {
        // Readiness as the event loop last saw it: no system call here. It can be stale (set on
        // a socket not yet read from), which only ends polling early: the caller's read then
        // waits as usual.
        let ready = std::future::poll_fn(|cx| Poll::Ready(stream.poll_read_ready(cx).is_ready())).await;
        if ready || requests_in_flight() > own || start.elapsed() >= budget {
            return;
        }
        // Any other thread waiting for this CPU runs first: a woken replica or client thread must
        // not queue behind a poller until the scheduler's next tick.
        std::thread::yield_now();
        // Back to the event loop, which runs what else is ready and then looks at its sockets
        // without sleeping (a yielded task makes tokio poll its driver with a zero timeout).
        tokio::task::yield_now().await;
    }
}
