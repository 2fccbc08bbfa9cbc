//! A keep-alive HTTP/1.1 server loop: one task per connection that reads a request head, hands
//! it to a [`Handler`], and goes on to the next request for as long as both sides keep the
//! connection. The handler reads the body and writes the answer through [`Connection`], so it
//! decides whether a body is read at all (a refused request need not upload it).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::limits::Paced;
use crate::stream::{Accepted, Listener, Stream};
use crate::{Error, Framing, Head, Limits};

/// Bytes of pipelined requests buffered while the current one is handled; past that the peer's
/// socket is not read until the answer is written.
const MAX_READ_AHEAD: usize = 1 << 20;

/// A request whose body was larger than this calls the memory-release hook once it is answered.
const RELEASE_AFTER_BODY: u64 = 1 << 20;

static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what is called after a request with a large body has been answered, to give the memory
/// its body and decoded data took back to the operating system. The binary sets it, since it
/// chooses the allocator: an allocator that keeps freed memory for reuse would otherwise keep a
/// process's resident size at its largest request's peak for good. The first call wins.
pub fn set_memory_release(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Calls the memory-release hook ([`set_memory_release`]) after a request whose body grew past the
/// size that calls it only once it arrived (a compressed body, decoded to `decoded_len` bytes):
/// the connection loop sees only the body as it arrived. Nothing when the body arrived that large
/// already, as the loop calls it then.
pub fn release_after_decoding(request: &Head, decoded_len: usize) {
    let arrived = match request.framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    if decoded_len as u64 > RELEASE_AFTER_BODY
        && arrived <= RELEASE_AFTER_BODY
        && let Some(release) = RELEASE_MEMORY.get()
    {
        release();
    }
}

/// What a server does with each request.
pub trait Handler: Send + Sync + 'static {
    /// Handles `request` on `connection`: reads (or skips) its body and writes one answer.
    /// Returns whether the connection may carry another request; `keep_alive` says whether the
    /// caller and the server's state allow it, and the answer must say `connection: close`
    /// when it is false.
    fn handle(
        &self,
        connection: &mut Connection,
        request: &Head,
        keep_alive: bool,
    ) -> impl Future<Output = bool> + Send;

    /// Called for a request whose head could not be parsed, before the server answers it with
    /// 400 (or 431 for a head too large) and closes the connection; for accounting.
    fn refused_head(&self, _error: &Error) {}

    /// How long a connection polls for the caller's next request before it sleeps on the socket,
    /// while this thread has no request in flight; see [`crate::poll`]. Zero (the default): it
    /// sleeps at once. Only for servers on single-threaded runtimes: requests in flight are
    /// counted per thread, and a task that moved to another thread would unbalance the count.
    fn idle_poll(&self) -> Duration {
        Duration::ZERO
    }
}

/// One caller's connection, as a handler sees it.
pub struct Connection {
    stream: Stream,
    buf: BytesMut,
    /// The answer's head, built by the handler and written by [`Connection::send`].
    pub head: Vec<u8>,
    limits: Arc<Limits>,
}

impl Connection {
    /// Reads the request's body, at most `limit` bytes, first telling a caller that waits for
    /// it (`Expect: 100-continue`) to go ahead.
    pub async fn read_body(&mut self, request: &Head, limit: usize) -> Result<Bytes, Error> {
        // Checked here too, before `100 Continue`: a caller is never invited to upload a body
        // that will be refused.
        if let Framing::Length(n) = request.framing
            && n > limit as u64
        {
            return Err(Error::BodyTooLarge { limit });
        }
        if request.expect_continue && self.buf.is_empty() {
            self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut paced = Paced::new(&mut self.stream, self.limits.body_read_timeout, self.limits.min_body_rate);
        crate::read_body(&mut paced, &mut self.buf, request.framing, limit).await
    }

    /// Reads and drops the body of a request answered without it, so the connection can carry
    /// the next request. `false` when the connection must close instead: the caller waits for
    /// `100 Continue` (and will not send the body), or the body is too large or malformed.
    pub async fn skip_body(&mut self, request: &Head, limit: usize) -> bool {
        match request.framing {
            Framing::Empty => true,
            _ if request.expect_continue && self.buf.is_empty() => false,
            framing => {
                let mut paced = Paced::new(&mut self.stream, self.limits.body_read_timeout, self.limits.min_body_rate);
                crate::read_body(&mut paced, &mut self.buf, framing, limit).await.is_ok()
            }
        }
    }

    async fn read_more(&mut self) -> bool {
        self.buf.reserve(8 * 1024);
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// Runs `work` unless the caller hangs up first: then `None`, and `work` is dropped, which
    /// cancels whatever it was waiting on. Pipelined bytes that arrive meanwhile are kept.
    pub async fn unless_gone<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let gone = async {
            while self.buf.len() < MAX_READ_AHEAD {
                if !self.read_more().await {
                    return;
                }
            }
            std::future::pending().await
        };
        tokio::select! {
            biased;
            done = work => Some(done),
            () = gone => None,
        }
    }

    /// The caller's address; `None` over a Unix socket (or when the socket cannot say). One
    /// system call: ask only when it is needed (an access log line).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.stream {
            Stream::Tcp(s) => s.peer_addr().ok(),
            Stream::Tls(s) => s.get_ref().0.peer_addr().ok(),
            Stream::Unix(_) => None,
        }
    }

    /// Writes [`Connection::head`] (which must end with the blank line) then `body`; `false`
    /// when the connection failed.
    pub async fn send(&mut self, body: &[u8]) -> bool {
        crate::write_message(&mut self.stream, &self.head, body).await.is_ok()
    }

    /// Writes more of a body whose head [`Connection::send`] wrote (a streamed answer of a
    /// declared length); `false` when the connection failed.
    pub async fn send_more(&mut self, chunk: &[u8]) -> bool {
        self.stream.write_all(chunk).await.is_ok() && self.stream.flush().await.is_ok()
    }
}

/// Serves `handler` on `listener` within `limits` until `shutdown` resolves; requests in flight
/// are answered first, and idle connections are closed.
pub async fn serve<H: Handler>(
    listener: impl Into<Listener>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = listener.into();
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns `None` once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    // One permit per open connection: at the cap the loop stops accepting, so new connections
    // wait in the kernel's backlog while the open ones are served.
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let pacer = tokio::spawn(pace_timers());
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed; this is a bug"),
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    let alive = (alive_tx.clone(), slot);
                    tokio::spawn(connection(stream, handler.clone(), limits.clone(), stop_rx.clone(), alive));
                }
                // Out of file descriptors, say: back off instead of spinning on the error.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    pacer.abort();
    Ok(())
}

/// Keeps a timer due within a second on this runtime, for as long as it is polled.
///
/// Handlers arm a timer per request (a scoring or upstream timeout). Tokio wakes its event loop
/// through an eventfd whenever a new timer is due before the loop's next planned wake-up, and a
/// loop with no timers has none planned: so on a lightly loaded server each request paid one
/// extra write and one extra `epoll_wait`. A timer that is always due sooner than any request's
/// timeout makes those wake-ups unnecessary, at the cost of one wake-up per second.
async fn pace_timers() {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
    }
}

async fn connection<H: Handler>(
    accepted: Accepted,
    handler: Arc<H>,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    _alive: (mpsc::Sender<()>, OwnedSemaphorePermit),
) {
    let (header_timeout, idle_timeout) = (limits.header_read_timeout, limits.idle_timeout);
    // A TLS handshake counts against the first head's time: a caller that starts one and stalls
    // is closed like one that says nothing.
    let accepted_at = Instant::now();
    let stream = match tokio::time::timeout_at(accepted_at + header_timeout, accepted.establish()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) | Err(_) => return,
    };
    let mut c = Connection { stream, buf: BytesMut::with_capacity(8 * 1024), head: Vec::with_capacity(1024), limits };
    let idle_poll = handler.idle_poll();
    let polling = !idle_poll.is_zero();
    // A new connection's first head is due within the header timeout of the accept.
    let mut head_due = Some(accepted_at + header_timeout);
    // One timer per connection for the wait between requests, moved forward only when the new
    // deadline is later by more than `slack` (an eighth of the idle timeout, at most a second):
    // a timer armed and cancelled for every request measurably slowed a busy server, while an
    // idle connection closed that much early is still closed for being idle.
    let slack = (idle_timeout / 8).min(std::time::Duration::from_secs(1));
    let mut quiet = Box::pin(tokio::time::sleep_until(accepted_at + header_timeout));
    loop {
        // Between requests, a shutdown closes the connection, and so does the idle timeout (or,
        // before the first request, the header timeout: a caller that says nothing).
        if c.buf.is_empty() {
            crate::poll::until_readable(&c.stream, idle_poll, 0).await;
            let quiet_until = head_due.unwrap_or_else(|| Instant::now() + idle_timeout);
            if quiet_until > quiet.deadline() + slack || quiet_until < quiet.deadline() {
                quiet.as_mut().reset(quiet_until);
            }
            tokio::select! {
                biased;
                more = c.read_more() => if !more { return },
                _ = stop.wait_for(|stopped| *stopped) => return,
                () = &mut quiet => return,
            }
        }
        // From its first byte, the rest of a head is due within the header timeout; a head that
        // arrived whole (nearly all do) is parsed without arming a timer.
        let due = head_due.take();
        let whole = match crate::parse_request(&mut c.buf) {
            Ok(Some(request)) => Ok(request),
            Ok(None) => Err(None),
            Err(e) => Err(Some(e)),
        };
        let request = match whole {
            Ok(request) => Ok(Ok(request)),
            Err(Some(e)) => Ok(Err(e)),
            Err(None) => {
                let due = due.unwrap_or_else(|| Instant::now() + header_timeout);
                let read = crate::read_head(&mut c.stream, &mut c.buf, crate::parse_request);
                tokio::time::timeout_at(due, read).await
            }
        };
        let request = match request {
            Ok(Ok(request)) => request,
            Ok(Err(Error::Closed | Error::Incomplete | Error::Io(_))) => return,
            Ok(Err(e)) => {
                handler.refused_head(&e);
                let status = if matches!(e, Error::HeadTooLarge) { 431 } else { 400 };
                refuse(&mut c, status, &e.to_string()).await;
                return;
            }
            Err(_) => {
                let message = format!("the request head did not arrive within {} ms", header_timeout.as_millis());
                handler.refused_head(&Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message.clone())));
                refuse(&mut c, 408, &message).await;
                return;
            }
        };
        let keep_alive = request.keep_alive && !*stop.borrow();
        c.head.clear();
        let in_flight = polling.then(crate::poll::InFlight::enter);
        let keep = handler.handle(&mut c, &request, keep_alive).await;
        drop(in_flight);
        if let (Framing::Length(n), Some(release)) = (request.framing, RELEASE_MEMORY.get())
            && n > RELEASE_AFTER_BODY
        {
            release();
        }
        if !keep {
            // Let the caller read the answer before the close: shut down our side first.
            let _ = c.stream.shutdown().await;
            return;
        }
    }
}

/// Answers `status` with a JSON error and closes: for a head that cannot be served.
async fn refuse(c: &mut Connection, status: u16, message: &str) {
    c.head.clear();
    let body = error_body(message);
    crate::push_status_line(&mut c.head, status);
    crate::push_header(&mut c.head, "content-type", b"application/json");
    crate::push_content_length(&mut c.head, body.len());
    c.head.extend_from_slice(b"connection: close\r\n\r\n");
    let _ = c.send(&body).await;
    let _ = c.stream.shutdown().await;
}

/// `{"error": message}`, the JSON error body of every Sluice server.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default()
}
