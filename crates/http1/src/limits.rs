//! What a listener allows its callers, so that slow or silent connections cannot hold a server's
//! file descriptors, tasks or memory: the request head must arrive in time, a body at a least
//! rate, an idle keep-alive connection is closed, and connections beyond a cap wait in the listen
//! backlog while the open ones keep working.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A listener's limits on its callers. The defaults are those of the CLI flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a request head may take, from its first byte (for a new connection, from the
    /// accept: a caller that connects and says nothing is closed after it too).
    pub header_read_timeout: Duration,
    /// Time a request body may take before [`Limits::min_body_rate`] applies to it.
    pub body_read_timeout: Duration,
    /// Least average rate, in bytes per second, at which a body must keep arriving once
    /// `body_read_timeout` has passed: a body of N bytes gets `body_read_timeout + N / rate`.
    pub min_body_rate: u64,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Open connections at most; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: 64 * 1024,
            idle_timeout: Duration::from_secs(75),
            max_connections: 4096,
        }
    }
}

/// A body reader that fails with [`io::ErrorKind::TimedOut`] once the body falls behind its
/// schedule (`grace + bytes so far / rate`). Its timer is made only when a read has to wait, so a
/// body that arrived with its head costs nothing.
pub(crate) struct Paced<'a, R> {
    io: &'a mut R,
    started: Instant,
    read: u64,
    grace: Duration,
    rate: u64,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<'a, R> Paced<'a, R> {
    pub(crate) fn new(io: &'a mut R, grace: Duration, rate: u64) -> Self {
        Paced { io, started: Instant::now(), read: 0, grace, rate: rate.max(1), timer: None }
    }

    fn deadline(&self) -> Instant {
        self.started + self.grace + Duration::from_secs_f64(self.read as f64 / self.rate as f64)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Paced<'_, R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut *this.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.read += (buf.filled().len() - before) as u64;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let deadline = this.deadline();
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request body arrived slower than {} bytes/s after {} ms",
                        this.rate,
                        this.grace.as_millis()
                    ),
                )))
            }
        }
    }
}
