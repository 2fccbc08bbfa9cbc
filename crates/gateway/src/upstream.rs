//! Keep-alive HTTP/1 connections to replicas, one pool per gateway thread.
//!
//! Every request the gateway handles runs on a single-threaded event loop (see
//! [`crate::serve_on_threads`]), so a thread-local pool needs no lock, and the request task itself
//! writes to and reads from the replica's socket: no connection task, no channel, no cross-task
//! wake-up per request. A connection goes back to the pool only after a whole response was read
//! from it; one whose exchange was abandoned (timeout, caller gone) is dropped, which closes it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_http1::stream::Stream;
use sluice_http1::{Error as WireError, Head};

/// Idle connections kept per replica and thread; more are closed.
const MAX_IDLE_PER_REPLICA: usize = 128;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One keep-alive connection and the bytes read from it but not yet used.
struct Connection {
    stream: Stream,
    buf: BytesMut,
    /// When it last went back to the pool.
    idle_since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Connection>>> = RefCell::default();
}

fn take_idle(addr: &str) -> Option<Connection> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(addr).and_then(Vec::pop))
}

fn give_back(addr: &Arc<str>, mut connection: Connection) {
    connection.idle_since = Instant::now();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        // Looked up by reference: once a replica has a list, returning a connection allocates
        // nothing.
        match idle.get_mut(&**addr) {
            Some(list) if list.len() < MAX_IDLE_PER_REPLICA => list.push(connection),
            Some(_) => {}
            None => {
                idle.insert(addr.clone(), vec![connection]);
            }
        }
    });
}

async fn connect(addr: &str) -> Result<Connection, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, Stream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { replica: addr.to_owned() })?
        .map_err(|source| UpstreamError::Connect { replica: addr.to_owned(), source })?;
    Ok(Connection { stream, buf: BytesMut::with_capacity(8 * 1024), idle_since: Instant::now() })
}

/// Closes, every so often, this thread's idle connections that waited longer than `idle_timeout`
/// and those to replicas no configuration names any more (`is_live` says which are named), so a
/// removed replica's connections do not stay open for good and a long-quiet one is not reused
/// just as the replica closes it. Runs for as long as it is polled, on the thread whose pool it
/// sweeps.
pub async fn sweep(idle_timeout: Duration, is_live: impl Fn(&str) -> bool) {
    let period = (idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        IDLE.with(|idle| {
            idle.borrow_mut().retain(|addr, connections| {
                if is_live(addr) {
                    connections.retain(|c| c.idle_since.elapsed() < idle_timeout);
                } else {
                    connections.clear();
                }
                !connections.is_empty()
            });
        });
    }
}

/// A replica's whole answer.
pub struct Answer {
    pub head: Head,
    pub body: Bytes,
}

/// How one attempt at a replica failed. What decides a retry is whether any byte of a response
/// arrived: before that the replica did nothing the caller could see, and scoring has no side
/// effects, so the request may go to another replica; after it, a response was started and is
/// never thrown away for another.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {replica}: {source}")]
    Connect {
        replica: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {replica} timed out")]
    ConnectTimeout { replica: String },
    /// The request could not be written, or the connection ended before any byte of a response.
    #[error("{replica} sent no response: {source}")]
    NoResponse {
        replica: String,
        #[source]
        source: WireError,
    },
    /// Part of a response arrived, then the connection broke or the response was malformed.
    #[error("{replica} broke off its response: {source}")]
    Broken {
        replica: String,
        #[source]
        source: WireError,
    },
}

impl UpstreamError {
    /// Whether the request may be sent again (to another replica): nothing of a response came.
    pub fn is_retryable(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. } | UpstreamError::NoResponse { .. } => {
                true
            }
            UpstreamError::Broken { .. } => false,
        }
    }
}

/// [`exchange`]'s failure before it knows the replica's name.
enum Failure {
    NoResponse(WireError),
    Broken(WireError),
}

impl Failure {
    fn at(self, replica: &str) -> UpstreamError {
        let replica = replica.to_owned();
        match self {
            Failure::NoResponse(source) => UpstreamError::NoResponse { replica, source },
            Failure::Broken(source) => UpstreamError::Broken { replica, source },
        }
    }
}

async fn exchange(
    c: &mut Connection,
    head: &[u8],
    body: &[u8],
    to_head: bool,
    max_response: usize,
    poll: Duration,
) -> Result<Answer, Failure> {
    sluice_http1::write_message(&mut c.stream, head, body).await.map_err(|e| Failure::NoResponse(e.into()))?;
    // The request this task handles is the thread's one in flight: poll for the answer rather
    // than sleep until it comes.
    sluice_http1::poll::until_readable(&c.stream, poll, 1).await;
    let response = loop {
        let head = sluice_http1::read_head(&mut c.stream, &mut c.buf, |b| sluice_http1::parse_response(b, to_head))
            .await
            .map_err(|e| match e {
                WireError::Closed => Failure::NoResponse(e),
                WireError::Io(_) if c.buf.is_empty() => Failure::NoResponse(e),
                e => Failure::Broken(e),
            })?;
        // Interim answers (103 Early Hints, say) are not forwarded; the final one follows.
        if !(100..200).contains(&head.status) {
            break head;
        }
    };
    let body = sluice_http1::read_body(&mut c.stream, &mut c.buf, response.framing, max_response)
        .await
        .map_err(Failure::Broken)?;
    Ok(Answer { head: response, body })
}

/// Sends one request (`head` already framed, `body` after it) to `addr`, over an idle connection
/// when there is one, and reads the whole answer, at most `max_response` bytes of body. A pooled
/// connection the replica closed meanwhile costs one retry on another connection, never an error
/// for the caller. `poll`: see [`sluice_http1::poll::until_readable`].
pub async fn send(
    addr: &Arc<str>,
    head: &[u8],
    body: &[u8],
    to_head: bool,
    max_response: usize,
    poll: Duration,
) -> Result<Answer, UpstreamError> {
    let mut pooled = take_idle(addr);
    loop {
        let reused = pooled.is_some();
        let mut connection = match pooled.take() {
            Some(c) => c,
            None => connect(addr).await?,
        };
        match exchange(&mut connection, head, body, to_head, max_response, poll).await {
            Ok(answer) => {
                // Bytes beyond the answer would be a replica speaking out of turn: not reused.
                if answer.head.keep_alive && connection.buf.is_empty() {
                    give_back(addr, connection);
                }
                return Ok(answer);
            }
            // The replica closed an idle keep-alive connection just as it was reused.
            Err(Failure::NoResponse(_)) if reused => pooled = take_idle(addr),
            Err(failure) => return Err(failure.at(addr)),
        }
    }
}
