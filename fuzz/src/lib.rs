//! What the fuzz targets share: running the crates' async readers over bytes in memory, in pieces
//! of a chosen size, so that a target can check that how the bytes arrive changes nothing.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

/// Runs `future` to completion with one poll: the readers here never wait, so a future that is
/// still pending after one poll is a bug in the code under test (it waits for nothing).
pub fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read from memory did not complete"),
    }
}

/// A peer whose bytes arrive at most `step` at a time, then end of stream.
#[derive(Debug)]
pub struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl<'a> Trickle<'a> {
    /// Reads of at most `step` bytes (at least 1) of `data`.
    pub fn new(data: &'a [u8], step: usize) -> Self {
        Trickle { data, step: step.max(1) }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let (now, later) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}
