//! The scoring server's HTTP/1.1 front on `sluice-http1`: each request is routed once
//! ([`crate::route`]) and answered by [`crate::answer`], whose [`Reply`] is written to the
//! connection as it is, with one vectored write.
//!
//! Why not hyper's server: at high concurrency the HTTP layer took about a third of the CPU on a
//! 2-core machine, CPU that batching needs for the model (issue 4). One task per connection that
//! parses the head in place and writes each answer with one vectored write costs less.
//!
//! Bodies in `Content-Encoding: gzip` or `deflate` are decoded here, before any route sees them,
//! within `--max-body-bytes` of decoded size, and answers are compressed here as the caller's
//! `Accept-Encoding` asks; a request and an answer without either take no extra copy.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sluice_http1::Head;
use sluice_http1::encoding::{self, Coding};
use sluice_http1::server::{Connection, Handler};
use sluice_telemetry::request_id::{HEADER as REQUEST_ID, Id};
use sluice_telemetry::trace::{self, Kind, Span, TRACEPARENT};

use crate::error::ApiError;
use crate::reply::Reply;
use crate::{AppState, HEADER_LENGTH};

/// Serves `state` on `listener`, and on `unix` too when given (a gateway on the same host reaches
/// the replica there for less than over loopback TCP), until `shutdown` resolves; then stops
/// accepting, reports not ready, and returns once in-flight requests have finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    unix: Option<tokio::net::UnixListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let front = Arc::new(Front { state: state.clone() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let limits = state.config.limits.clone();
    let on_unix = async {
        match unix {
            Some(l) => sluice_http1::server::serve(l, front.clone(), limits.clone(), stopped(stop_rx.clone())).await,
            None => Ok(()),
        }
    };
    let on_tcp = sluice_http1::server::serve(listener, front.clone(), limits.clone(), stopped(stop_rx.clone()));
    let signal = async move {
        shutdown.await;
        state.ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
    };
    let (tcp, unix, ()) = tokio::join!(on_tcp, on_unix, signal);
    tcp.and(unix)
}

struct Front {
    state: Arc<AppState>,
}

impl Handler for Front {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let limit = self.state.config.max_body_bytes;
        let to_head = request.method() == "HEAD";
        // A coding that cannot be decoded is refused before the body is read (415): a caller that
        // waits for `100 Continue` never uploads it, another's is skipped.
        let (body, keep_alive) = match encoding::content_coding(request) {
            Err(e) => (Err(ApiError::from(e)), keep_alive && c.skip_body(request, limit).await),
            Ok(coding) => {
                let body = c.read_body(request, limit).await.map_err(|e| match e {
                    sluice_http1::Error::BodyTooLarge { limit } => ApiError::PayloadTooLarge { limit },
                    e if e.is_timeout() => ApiError::RequestTimeout(e.to_string()),
                    e => ApiError::bad_request(format!("cannot read the request body: {e}")),
                });
                // A body that could not be read leaves the connection at an unknown point: close it.
                let keep_alive = keep_alive && body.is_ok();
                (body.and_then(|body| decoded(coding, body, limit)), keep_alive)
            }
        };
        let decoded_len = body.as_ref().map_or(0, |b| b.len());
        // Counted in the decoded body, as the binary extension defines it.
        let header_length = request.header(HEADER_LENGTH);
        let collected = kept_for_collection(&self.state, request.method(), request.target(), &body);
        let work = crate::answer(&self.state, request.method(), request.target(), header_length, body);
        // A caller that hangs up drops the request, and the model's queue skips it.
        let (reply, span) = match request_span(&self.state, request.target(), request.header(TRACEPARENT)) {
            None => match c.unless_gone(work).await {
                Some(reply) => (reply, None),
                None => return false,
            },
            Some(mut span) => {
                let Some((reply, run)) = c.unless_gone(noting_run(work)).await else {
                    span.set("http.response.status_code", 499u16);
                    span.end();
                    return false;
                };
                (reply, Some((span, run)))
            }
        };
        let id = Id::of(request.header(REQUEST_ID));
        collect(&self.state, &id, header_length, collected, &reply);
        let accept_encoding = request.header("accept-encoding");
        let sent = respond(c, &reply, id.as_bytes(), to_head, keep_alive, accept_encoding).await;
        if let Some((span, run)) = span {
            end_span(span, run, request.method(), reply.status);
        }
        drop(reply);
        sluice_http1::server::release_after_decoding(request, decoded_len);
        sent && keep_alive
    }
}

// === around the answer: collection and tracing, for both fronts ===

/// The body of a scoring request, kept for model data collection (a reference count, no copy),
/// only when collection is on.
pub(crate) fn kept_for_collection(
    state: &AppState,
    method: &str,
    target: &str,
    body: &Result<Bytes, ApiError>,
) -> Option<Bytes> {
    match (&state.config.collector, body) {
        (Some(_), Ok(b)) if is_scoring(method, target) => Some(b.clone()),
        _ => None,
    }
}

/// Hands a sampled, successful scoring request and its answer to the collector's writer thread.
pub(crate) fn collect(state: &AppState, id: &Id, header_length: Option<&[u8]>, inputs: Option<Bytes>, reply: &Reply) {
    if let (Some(collector), Some(inputs)) = (&state.config.collector, inputs)
        && reply.status == 200
        && collector.sample()
    {
        // The writer thread formats and writes; here only the hand-over.
        collector.record(sluice_collect::Record {
            request_id: String::from_utf8_lossy(id.as_bytes()).into_owned(),
            time: std::time::SystemTime::now(),
            json_length: header_length.and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
            inputs: inputs.to_vec(),
            predictions: reply.body.clone(),
        });
    }
}

/// The replica's span for one request, continuing the caller's `traceparent`; `None` (one
/// branch) unless tracing is on. Health probes and metrics scrapes are not traced: the control
/// plane probes every replica every second, which would bury the requests' traces in probes.
pub(crate) fn request_span(state: &AppState, target: &str, traceparent: Option<&[u8]>) -> Option<Span> {
    if !trace::enabled() || target.starts_with("/v2/health/") || target.starts_with("/metrics") {
        return None;
    }
    let mut span = trace::server_span("replica request", traceparent)?;
    span.set("url.path", target.split('?').next().unwrap_or(target));
    if let Some(service) = &state.config.service {
        span.set("sluice.service", service.as_ref());
    }
    Some(span)
}

/// Runs `work` noting the model run it makes (if any), for the request's span.
pub(crate) async fn noting_run(work: impl Future<Output = Reply>) -> (Reply, Option<Run>) {
    RUN.scope(std::cell::RefCell::new(None), async {
        let reply = work.await;
        (reply, RUN.with(|r| r.borrow_mut().take()))
    })
    .await
}

// === tracing ===

/// One engine run of a traced request, as the runtime measured it (its metrics' own numbers).
pub(crate) struct Run {
    model: String,
    version: String,
    queue_time: std::time::Duration,
    inference_time: std::time::Duration,
    batch_rows: usize,
    /// When the answer came back from the runtime, in Unix nanoseconds.
    done_ns: u64,
}

tokio::task_local! {
    /// Set only while a traced request is answered.
    static RUN: std::cell::RefCell<Option<Run>>;
}

/// Notes a model run for the request's span; nothing when tracing is off.
pub(crate) fn traced_run(model: &sluice_runtime::ModelHandle, outcome: &sluice_runtime::InferOutcome) {
    if !trace::enabled() {
        return;
    }
    let _ = RUN.try_with(|r| {
        *r.borrow_mut() = Some(Run {
            model: model.name().to_owned(),
            version: model.version().to_owned(),
            queue_time: outcome.queue_time,
            inference_time: outcome.inference_time,
            batch_rows: outcome.batch_rows,
            done_ns: trace::now_ns(),
        });
    });
}

/// Ends a request's span, with a child span each for its queue wait and its engine run, placed
/// back from when the run's answer arrived.
pub(crate) fn end_span(mut span: Span, run: Option<Run>, method: &str, status: u16) {
    span.set("http.request.method", method);
    span.set("http.response.status_code", status);
    if status >= 500 {
        span.fail();
    }
    if let Some(run) = run {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let inference_start = run.done_ns.saturating_sub(nanos(run.inference_time));
        let queue_start = inference_start.saturating_sub(nanos(run.queue_time));
        let mut queue = span.child("replica queue wait", Kind::Internal).started_at(queue_start);
        queue.set("sluice.model", run.model.as_str());
        queue.end_at(inference_start);
        let mut inference = span.child("replica inference", Kind::Internal).started_at(inference_start);
        inference.set("sluice.model", run.model.as_str());
        inference.set("sluice.model_version", run.version.as_str());
        inference.set("sluice.batch_size", run.batch_rows);
        inference.end_at(run.done_ns);
        span.set("sluice.model", run.model);
        span.set("sluice.model_version", run.version);
    }
    span.end();
}

/// A scoring request (OIP infer or `/score`): what model data collection keeps.
fn is_scoring(method: &str, target: &str) -> bool {
    let path = target.split('?').next().unwrap_or_default();
    method == "POST" && (path.ends_with("/infer") || path.ends_with("/score"))
}

/// The request body as the routes read it: decoded when it came in a content coding, within
/// `limit` bytes of decoded size. Without a coding it is passed on as it is (no copy).
fn decoded(coding: Option<Coding>, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    match coding {
        None => Ok(body),
        Some(coding) => Ok(encoding::decode(coding, &body, limit)?.into()),
    }
}

/// Writes `reply` with the request's id (the caller's, as a gateway sends it, or a new one);
/// `false` when the connection failed. A HEAD answer declares the length a GET would have had,
/// without the body. The body is compressed when the caller's `Accept-Encoding` asks for a
/// coding and it is large enough for that to pay (see `sluice_http1::encoding`); every answer
/// that could have been compressed says `Vary: Accept-Encoding`, so caches keep them apart.
async fn respond(
    c: &mut Connection,
    reply: &Reply,
    request_id: &[u8],
    to_head: bool,
    keep_alive: bool,
    accept_encoding: Option<&[u8]>,
) -> bool {
    let compressed = encoding::compress_for(accept_encoding, &reply.body);
    let body = compressed.as_ref().map_or(&reply.body[..], |(_, b)| &b[..]);
    let out = &mut c.head;
    sluice_http1::push_status_line(out, reply.status);
    sluice_http1::push_date(out);
    sluice_http1::push_header(out, "content-type", reply.content_type.as_bytes());
    for (name, value) in &reply.headers {
        sluice_http1::push_header(out, name, value.as_bytes());
    }
    sluice_http1::push_header(out, REQUEST_ID, request_id);
    if reply.body.len() >= encoding::MIN_COMPRESSED_BODY {
        sluice_http1::push_header(out, "vary", b"accept-encoding");
    }
    if let Some((coding, _)) = &compressed {
        sluice_http1::push_header(out, "content-encoding", coding.as_str().as_bytes());
    }
    sluice_http1::push_content_length(out, body.len());
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    c.send(if to_head { &[] } else { body }).await
}
