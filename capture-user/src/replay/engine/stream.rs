//! The byte stream a replay connection writes requests to: plain TCP, or a TLS session over
//! it for an https target. HTTP/1 connections and HTTP/2 sessions are the same over both;
//! only opening differs (the TLS handshake counts within the connect timeout) and how an idle
//! connection is probed (a TLS 1.3 server sends session tickets after the handshake, bytes
//! that are no answer and no close).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustls::AlertDescription;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::replay::report::{Failure, FailureKind};
use crate::replay::tls::{ALPN_H2, TlsClient};

/// Where a connection goes: the address, and TLS for an https target.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub tls: Option<Arc<TlsClient>>,
}

impl Endpoint {
    /// A plain http endpoint.
    pub fn plain(address: SocketAddr) -> Self {
        Self { address, tls: None }
    }
}

/// An open connection to the target or the baseline.
pub(super) enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a connection to `endpoint` (TCP, then TLS offering `h2` or `http/1.1`), all of it
/// within `within`.
pub(super) async fn open_stream(
    endpoint: &Endpoint,
    within: Duration,
    http2: bool,
) -> Result<Stream, Failure> {
    match timeout(within, open(endpoint, http2)).await {
        Err(_) => Err(FailureKind::ConnectTimeout.into()),
        Ok(result) => result,
    }
}

async fn open(endpoint: &Endpoint, http2: bool) -> Result<Stream, Failure> {
    let tcp = TcpStream::connect(endpoint.address)
        .await
        .map_err(|e| connect_failure(&e))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &endpoint.tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let name = tls.server_name().clone();
    let session = tls
        .connector(http2)
        .connect(name, tcp)
        .await
        .map_err(|e| handshake_failure(endpoint, &e, http2))?;
    // A server that does not speak h2 on TLS answers an HTTP/2 preface with nothing useful:
    // say so at once rather than as a session error.
    if http2 && session.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(FailureKind::TlsNoH2.into());
    }
    Ok(Stream::Tls(Box::new(session)))
}

/// A failed handshake, with rustls's reason: a server that refuses the `h2` offer by ALPN
/// (nginx does, with a fatal alert, when its TLS listener has no HTTP/2) is named as such.
fn handshake_failure(endpoint: &Endpoint, e: &io::Error, http2: bool) -> Failure {
    log::debug!("TLS handshake with {}: {e}", endpoint.address);
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let no_alpn = rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol);
    if http2 && alert == Some(&no_alpn) {
        FailureKind::TlsNoH2.into()
    } else {
        Failure::new(FailureKind::TlsHandshake, e)
    }
}

/// A connect error: its kind, and the OS's words for it.
pub(super) fn connect_failure(e: &io::Error) -> Failure {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => FailureKind::ConnectRefused,
        io::ErrorKind::AddrNotAvailable => FailureKind::LocalPortsExhausted,
        _ if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => FailureKind::LocalPortsExhausted,
        _ => FailureKind::ConnectError,
    };
    Failure::new(kind, e)
}

impl Stream {
    /// The target may have closed an idle keep-alive connection since the last answer; a new
    /// request on it would fail for a reason that is not the target's fault. Probes with one
    /// read that never waits: through the TLS session, so records that carry no data
    /// (session tickets, key updates) are taken in by rustls and leave the connection usable,
    /// while a close (EOF, close_notify, reset) or unasked-for bytes do not.
    pub(super) fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        // Ready means EOF, bytes nobody asked for, or an error: not reusable.
        Pin::new(self).poll_read(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_local_ports_is_named_as_such() {
        let e = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(connect_failure(&e).kind, FailureKind::LocalPortsExhausted);
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_failure(&e).kind, FailureKind::ConnectRefused);
        let e = io::Error::from_raw_os_error(libc::ENETUNREACH);
        let failure = connect_failure(&e);
        assert_eq!(failure.kind, FailureKind::ConnectError);
        // The summary says which connect error it was, in the OS's words.
        let detail = failure.detail.unwrap_or_default();
        assert!(detail.contains("Network is unreachable"), "{detail}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_open_until_the_peer_closes_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::plain(listener.local_addr().unwrap());
        let mut stream = open_stream(&endpoint, Duration::from_secs(5), false)
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        assert!(stream.still_open());
        drop(peer);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!stream.still_open());
    }
}
