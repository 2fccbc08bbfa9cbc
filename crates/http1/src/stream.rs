//! The kinds of connection HTTP/1.1 runs over here: TCP, TLS over TCP (a gateway serving
//! HTTPS), and Unix domain sockets for a gateway and replicas on the same host.
//!
//! Why Unix sockets: a local replica reached over loopback TCP still pays the whole TCP stack in
//! both directions (segments, acknowledgements, a software interrupt per send). A Unix stream
//! socket hands the bytes to the peer's queue directly; on the project's benchmark machine a
//! request/answer round trip of the gateway's size took about 19 µs over a Unix socket against
//! 27 µs over loopback TCP.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// A connected socket of any kind.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: a TLS session is a few hundred bytes, the other kinds a file descriptor.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to `addr`: `unix:PATH` for a Unix socket, else `host:port` over TCP (with
    /// Nagle's algorithm off: small request/answer pairs would wait up to 40 ms for it).
    pub async fn connect(addr: &str) -> io::Result<Stream> {
        match addr.strip_prefix(UNIX_PREFIX) {
            Some(path) => UnixStream::connect(path).await.map(Stream::Unix),
            None => {
                let stream = TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Stream::Tcp(stream))
            }
        }
    }

    /// Readiness to read as the event loop last saw it; see [`crate::poll`].
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            // The socket's readiness says nothing of plaintext rustls already holds: report
            // ready, so a poller reads at once rather than spin.
            Stream::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

/// How an address names a Unix socket: `unix:/path/to/socket`.
pub const UNIX_PREFIX: &str = "unix:";

/// Listens on the Unix socket `path`, first removing a socket file an earlier run left there
/// (never a file of another kind: that is refused, naming the path).
pub fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let named = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: the path exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| named(e, "cannot replace the stale socket"))?;
    }
    tokio::net::UnixListener::bind(path).map_err(|e| named(e, "cannot listen on the Unix socket"))
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // rustls gathers the slices into records itself.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A listening socket of any kind.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// TCP whose connections speak TLS; the handshake happens on the connection's own task
    /// ([`Accepted::establish`]), so a slow one never holds up the accept loop.
    Tls(TcpListener, crate::tls::Tls),
}

/// A connection just accepted, before any TLS handshake.
#[derive(Debug)]
pub struct Accepted {
    stream: Stream,
    tls: Option<crate::tls::Tls>,
}

impl Accepted {
    /// The connection ready for HTTP: after the TLS handshake, when the listener speaks TLS.
    pub async fn establish(self) -> io::Result<Stream> {
        match (self.stream, self.tls) {
            (Stream::Tcp(tcp), Some(tls)) => Ok(Stream::Tls(Box::new(tls.acceptor().accept(tcp).await?))),
            (stream, _) => Ok(stream),
        }
    }
}

impl Listener {
    pub async fn accept(&self) -> io::Result<Accepted> {
        async fn tcp(l: &TcpListener) -> io::Result<Stream> {
            let (stream, _) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Stream::Tcp(stream))
        }
        match self {
            Listener::Tcp(l) => Ok(Accepted { stream: tcp(l).await?, tls: None }),
            Listener::Unix(l) => Ok(Accepted { stream: Stream::Unix(l.accept().await?.0), tls: None }),
            Listener::Tls(l, tls) => Ok(Accepted { stream: tcp(l).await?, tls: Some(tls.clone()) }),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}
