//! Keep-alive HTTP/1 connections to replicas, one pool per gateway thread.
//!
//! Every request the gateway handles runs on a single-threaded event loop (see
//! [`crate::serve_on_threads`]), so a thread-local pool needs no lock, and a request, its upstream
//! connection and that connection's driver task stay on one thread. A connection goes back to the
//! pool when its response body has been read to the end; one whose response was abandoned is
//! closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections kept per replica and thread; more are closed.
const MAX_IDLE_PER_REPLICA: usize = 128;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<Sender>>> = RefCell::default();
}

fn take_idle(addr: &str) -> Option<Sender> {
    IDLE.with(|idle| idle.borrow_mut().get_mut(addr).and_then(Vec::pop))
}

fn give_back(addr: &Arc<str>, sender: Sender) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        // Looked up by reference: once a replica has a list, returning a connection allocates
        // nothing.
        match idle.get_mut(&**addr) {
            Some(list) if list.len() < MAX_IDLE_PER_REPLICA => list.push(sender),
            Some(_) => {}
            None => {
                idle.insert(addr.clone(), vec![sender]);
            }
        }
    });
}

async fn connect(addr: &str) -> Result<Sender, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // Small request/response pairs: Nagle's algorithm would add up to 40 ms.
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends the request `build` makes to `addr`, over an idle connection when there is one. A pooled
/// connection the replica has closed meanwhile costs one retry on a fresh connection, never an
/// error for the caller.
pub async fn send(addr: &Arc<str>, build: impl Fn() -> Request<Full<Bytes>>) -> Result<Response<Body>, String> {
    let mut pooled = take_idle(addr);
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(s) => s,
            None => connect(addr).await?,
        };
        if sender.ready().await.is_err() {
            if reused {
                pooled = take_idle(addr);
                continue;
            }
            return Err(format!("connection to {addr} closed before the request was sent"));
        }
        match sender.send_request(build()).await {
            Ok(response) => {
                let addr = addr.clone();
                return Ok(response.map(|body| Body::new(Returning { body, sender: Some(sender), addr })));
            }
            // The replica closed an idle keep-alive connection just as it was reused.
            Err(e) if reused && (e.is_canceled() || e.is_closed() || e.is_incomplete_message()) => {
                pooled = take_idle(addr);
            }
            Err(e) => return Err(format!("{addr}: {e}")),
        }
    }
}

/// A response body that returns its connection to the pool once read to the end.
struct Returning {
    body: Incoming,
    sender: Option<Sender>,
    addr: Arc<str>,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled
            && let Some(sender) = this.sender.take()
        {
            give_back(&this.addr, sender);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body that was complete before anyone polled it (an empty one, say) still frees its
        // connection; an abandoned one does not, and the connection closes.
        if let Some(sender) = self.sender.take()
            && http_body::Body::is_end_stream(&self.body)
        {
            give_back(&self.addr, sender);
        }
    }
}
