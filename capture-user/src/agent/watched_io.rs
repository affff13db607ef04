//! A connection's byte stream that tells its [`ConnClock`] when bytes move, so the
//! connection's deadlines follow what the client really does; and the clock as the
//! connection's stream, service and task share it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::conn_clock::{ConnClock, ConnTimeout, ConnTimeouts};
use crate::sync::lock;

/// A connection's [`ConnClock`], shared. Its task sleeps until the deadline it read; when a
/// deadline moves earlier (an answer went out, so the idle timeout runs; the next head
/// started, so the header timeout does) the task is woken to read it again.
#[derive(Debug)]
pub struct SharedClock {
    clock: Mutex<ConnClock>,
    moved: Notify,
}

impl SharedClock {
    /// The clock of a connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            clock: Mutex::new(ConnClock::new(now)),
            moved: Notify::new(),
        }
    }

    /// See [`ConnClock::read`].
    pub fn read(&self, now: Instant) {
        if lock(&self.clock).read(now) {
            self.moved.notify_one();
        }
    }

    /// See [`ConnClock::wrote`] (it only ever moves the deadline later).
    pub fn wrote(&self, now: Instant) {
        lock(&self.clock).wrote(now);
    }

    /// See [`ConnClock::request_started`] (no deadline while the router has the request).
    pub fn request_started(&self) {
        lock(&self.clock).request_started();
    }

    /// See [`ConnClock::answered`].
    pub fn answered(&self, now: Instant) {
        lock(&self.clock).answered(now);
        self.moved.notify_one();
    }

    /// See [`ConnClock::deadline`].
    pub fn deadline(&self, limits: &ConnTimeouts) -> Option<(Instant, ConnTimeout)> {
        lock(&self.clock).deadline(limits)
    }

    /// See [`ConnClock::expired`].
    pub fn expired(&self, limits: &ConnTimeouts, now: Instant) -> Option<ConnTimeout> {
        lock(&self.clock).expired(limits, now)
    }

    /// Resolves once a deadline may have moved earlier since the last call (a change made
    /// before the task waits is kept, not lost).
    pub async fn moved(&self) {
        self.moved.notified().await;
    }
}

/// `inner`, reporting reads and writes to `clock`.
pub struct WatchedIo<T> {
    inner: T,
    clock: Arc<SharedClock>,
}

impl<T> WatchedIo<T> {
    /// `inner`, reporting to `clock`.
    pub fn new(inner: T, clock: Arc<SharedClock>) -> Self {
        Self { inner, clock }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read(Instant::now());
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> WatchedIo<T> {
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.clock.wrote(Instant::now());
        }
    }
}
