//! The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, the protocol's
//! `grpc_predict_v2.proto`): ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata
//! and ModelInfer, on tonic.
//!
//! One translation layer, used by the scoring server and by the gateway alike: each call becomes
//! the OIP v2 REST request that means the same (ModelInfer: the binary tensor extension, the
//! raw tensor bytes passed through as they came and typed contents encoded little-endian), a
//! [`Handler`] answers it, and the REST answer is turned back into the gRPC response (outputs
//! always as `raw_output_contents`, which the Triton and KServe clients read) or a gRPC status.
//! The scoring server's handler is its in-process router; the gateway's is its proxy path, so
//! auth, version choice, pinning, shadows, retries and ejection apply to gRPC callers unchanged.
//! Statuses and messages are therefore the REST ones: a 400's message becomes the
//! INVALID_ARGUMENT's, and so on (see [`status_of`]).
//!
//! This crate depends on no model or gateway crate: each side plugs its handler in.
#![forbid(unsafe_code)]

mod translate;

/// The protocol's messages, server and client, generated from `proto/grpc_predict_v2.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("inference");
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::*;
pub use translate::{encode_input, infer_request, infer_response, status_of};

/// Request metadata passed on to the handler as headers of the same name: the credential, the
/// gateway's routing headers (pin and sticky key), the trace context and the request id.
pub const FORWARDED_METADATA: [&str; 5] =
    ["authorization", "x-sluice-version", "x-sluice-route-key", "traceparent", "x-request-id"];

/// Headers of the handler's answer returned as response metadata (on errors too): the version
/// that answered and the request id.
pub const RETURNED_METADATA: [&str; 2] = ["x-sluice-version", "x-request-id"];

/// Answers an OIP v2 REST request without a socket: the scoring server's router, or the
/// gateway's proxy path. The request's body is whole, and so must the answer's be.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`; failures are answers too (a status and `{"error": "..."}`).
    fn call(&self, request: http::Request<Bytes>) -> impl Future<Output = http::Response<Bytes>> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(http::Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Bytes>> + Send,
{
    fn call(&self, request: http::Request<Bytes>) -> impl Future<Output = http::Response<Bytes>> + Send {
        self(request)
    }
}

/// Settings of a gRPC listener.
#[derive(Clone)]
pub struct Options {
    /// Largest request message accepted (tonic's own default is 4 MiB); larger ones get
    /// RESOURCE_EXHAUSTED. Set it to the HTTP side's body limit, so both take the same tensors.
    pub max_message_bytes: usize,
    /// Open connections at most; more wait in the listen backlog until one closes (the HTTP
    /// listener's `--max-connections`, counted separately).
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes (the HTTP/2 preface); one that says
    /// nothing is closed after it (the HTTP listener's `--header-read-timeout`).
    pub first_bytes_timeout: Duration,
    /// How often an idle connection is pinged, and how long the answer may take before the
    /// connection is closed: a peer that went away does not hold a connection (and its place
    /// under the cap) for good.
    pub keepalive: Duration,
    /// Serve TLS (ALPN `h2`) with this acceptor instead of cleartext HTTP/2; the handshake must
    /// finish within `first_bytes_timeout` too.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_connections", &self.max_connections)
            .field("first_bytes_timeout", &self.first_bytes_timeout)
            .field("keepalive", &self.keepalive)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_message_bytes: 64 * 1024 * 1024,
            max_connections: 4096,
            first_bytes_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// The `GRPCInferenceService` over `handler`.
pub struct Inference<H> {
    handler: Arc<H>,
}

impl<H> std::fmt::Debug for Inference<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inference").finish_non_exhaustive()
    }
}

impl<H: Handler> Inference<H> {
    /// The service over `handler`.
    pub fn new(handler: H) -> Self {
        Inference { handler: Arc::new(handler) }
    }

    /// Sends one REST request (with the caller's forwarded metadata) to the handler.
    async fn exchange(
        &self,
        metadata: &MetadataMap,
        method: http::Method,
        path: String,
        body: Bytes,
        json_length: Option<usize>,
    ) -> Result<http::Response<Bytes>, Status> {
        let mut builder = http::Request::builder().method(method).uri(&path);
        if let Some(n) = json_length {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/octet-stream")
                .header(translate::HEADER_LENGTH, n);
        }
        for name in FORWARDED_METADATA {
            // Each forwarded once: two credentials are refused by the gateway, never guessed at.
            for value in metadata.get_all(name) {
                builder = builder.header(name, value.as_bytes());
            }
        }
        let request = builder.body(body).map_err(|e| Status::invalid_argument(format!("bad request: {e}")))?;
        Ok(self.handler.call(request).await)
    }

    async fn get(&self, metadata: &MetadataMap, path: String) -> Result<http::Response<Bytes>, Status> {
        self.exchange(metadata, http::Method::GET, path, Bytes::new(), None).await
    }
}

/// The JSON body of a 2xx answer, or the answer's status.
fn json_of(answer: &http::Response<Bytes>) -> Result<serde_json::Value, Status> {
    if !answer.status().is_success() {
        return Err(status_of(answer));
    }
    serde_json::from_slice(answer.body()).map_err(|e| Status::internal(format!("unreadable answer: {e}")))
}

/// `message` with the answer's returned metadata.
fn respond<T>(answer: &http::Response<Bytes>, message: T) -> Response<T> {
    let mut response = Response::new(message);
    copy_metadata(answer, response.metadata_mut());
    response
}

/// Copies [`RETURNED_METADATA`] from `answer` into `metadata`.
pub(crate) fn copy_metadata(answer: &http::Response<Bytes>, metadata: &mut MetadataMap) {
    for name in RETURNED_METADATA {
        if let Some(value) = answer.headers().get(name).and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()) {
            metadata.insert(name, value);
        }
    }
}

/// The readiness an answer tells: 200 ready, 503 not ready; anything else is an error.
fn readiness(answer: &http::Response<Bytes>) -> Result<bool, Status> {
    match answer.status().as_u16() {
        200..=299 => Ok(true),
        503 => Ok(false),
        _ => Err(status_of(answer)),
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn text(value: &serde_json::Value, key: &str) -> String {
    value.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
}

fn tensors(value: &serde_json::Value) -> Vec<model_metadata_response::TensorMetadata> {
    let Some(list) = value.as_array() else { return Vec::new() };
    list.iter()
        .map(|t| model_metadata_response::TensorMetadata {
            name: text(t, "name"),
            datatype: text(t, "datatype"),
            shape: t
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| s.iter().filter_map(serde_json::Value::as_i64).collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[tonic::async_trait]
impl<H: Handler> GrpcInferenceService for Inference<H> {
    async fn server_live(&self, request: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        let answer = self.get(request.metadata(), "/v2/health/live".into()).await?;
        let live = json_of(&answer)?.get("live").and_then(|v| v.as_bool()).unwrap_or(true);
        Ok(respond(&answer, ServerLiveResponse { live }))
    }

    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let answer = self.get(request.metadata(), "/v2/health/ready".into()).await?;
        let ready = readiness(&answer)?;
        Ok(respond(&answer, ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let m = request.get_ref();
        let path = translate::model_path(&m.name, &m.version, "/ready")?;
        let answer = self.get(request.metadata(), path).await?;
        let ready = readiness(&answer)?;
        Ok(respond(&answer, ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let answer = self.get(request.metadata(), "/v2".into()).await?;
        let json = json_of(&answer)?;
        let message = ServerMetadataResponse {
            name: text(&json, "name"),
            version: text(&json, "version"),
            extensions: json.get("extensions").map(strings).unwrap_or_default(),
        };
        Ok(respond(&answer, message))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let m = request.get_ref();
        let path = translate::model_path(&m.name, &m.version, "")?;
        let answer = self.get(request.metadata(), path).await?;
        let json = json_of(&answer)?;
        let message = ModelMetadataResponse {
            name: text(&json, "name"),
            versions: json.get("versions").map(strings).unwrap_or_default(),
            platform: text(&json, "platform"),
            inputs: json.get("inputs").map(tensors).unwrap_or_default(),
            outputs: json.get("outputs").map(tensors).unwrap_or_default(),
        };
        Ok(respond(&answer, message))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let (metadata, _, infer) = request.into_parts();
        let (path, body, json_length) = infer_request(&infer)?;
        drop(infer);
        let answer = self.exchange(&metadata, http::Method::POST, path, body, Some(json_length)).await?;
        match infer_response(&answer) {
            Ok(message) => Ok(respond(&answer, message)),
            Err(mut status) => {
                copy_metadata(&answer, status.metadata_mut());
                Err(status)
            }
        }
    }
}

/// The service as tonic serves it, with `options`' message limit.
pub fn service<H: Handler>(handler: H, options: &Options) -> GrpcInferenceServiceServer<Inference<H>> {
    GrpcInferenceServiceServer::new(Inference::new(handler))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(usize::MAX)
}

/// Serves `handler` over gRPC (HTTP/2, cleartext or TLS) on `listener` until `shutdown` resolves;
/// calls in flight are answered first. Connections are capped and vetted by [`capped`].
pub async fn serve<H: Handler>(
    listener: tokio::net::TcpListener,
    handler: H,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.keepalive))
        .http2_keepalive_timeout(Some(options.keepalive))
        .add_service(service(handler, &options))
        .serve_with_incoming_shutdown(capped(listener, &options), shutdown)
        .await
}

/// The connections `listener` accepts, at most `options.max_connections` open at once (the next
/// is accepted when one closes), each handed on only once its first bytes arrived (and, with TLS,
/// its handshake finished) within `options.first_bytes_timeout`; a connection that says nothing
/// in that time is closed. The wait runs per connection, so silent callers do not hold up the
/// others.
pub fn capped(
    listener: tokio::net::TcpListener,
    options: &Options,
) -> impl futures_util::Stream<Item = std::io::Result<Capped>> + Send + 'static {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Capped>(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let first_bytes_timeout = options.first_bytes_timeout;
    let tls = options.tls.clone();
    // Ends when the stream (and with it `rx`) is dropped: the server stopped.
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    // Out of descriptors and the like: the next accept may work.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let vetted = tokio::time::timeout(first_bytes_timeout, async {
                    // `peek`, not `readable` (which may wake without data): the bytes stay for
                    // tonic, or for the TLS handshake.
                    let mut first = [0u8; 1];
                    if !matches!(stream.peek(&mut first).await, Ok(1..)) {
                        return None;
                    }
                    match tls {
                        None => Some(Io::Plain(stream)),
                        Some(acceptor) => acceptor.accept(stream).await.ok().map(|s| Io::Tls(Box::new(s))),
                    }
                });
                if let Ok(Some(io)) = vetted.await {
                    let _ = tx.send(Capped { io, _slot: slot }).await;
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
}

/// An accepted connection holding its place under the connection cap until it closes.
#[derive(Debug)]
pub struct Capped {
    io: Io,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Debug)]
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// Forwards an I/O call to the connection, whichever it is.
macro_rules! io {
    ($self:ident, $s:ident => $call:expr) => {
        match &mut $self.io {
            Io::Plain($s) => $call,
            Io::Tls($s) => $call,
        }
    };
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        tonic::transport::server::Connected::connect_info(tcp)
    }
}

impl tokio::io::AsyncRead for Capped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        io!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        io!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        io!(self, s => std::pin::Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        io!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        io!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}

/// Binds `addr` for [`serve`]: a busy port fails here, before anything is loaded.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
