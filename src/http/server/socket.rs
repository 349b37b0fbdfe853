//! The socket as hyper sees it: every byte that passes is told to the connection's watchdog, and
//! every request head is held back until [`HeadCheck`] has seen it whole.
//!
//! A refused head never reaches hyper: hyper is told the client has nothing more to say (end of
//! stream at a message boundary), so it finishes the answers it owes and shuts the connection
//! down; that shutdown writes the refusal in the contract's shape first, then reads and discards
//! what the client still sends for a moment, so closing does not reset the connection before the
//! client read the answer. hyper runs with `half_close` on, so it looks for the end of the stream
//! only between requests, never while an answer is owed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connections::Activity;
use super::head::{HeadCheck, Refusal, MAX_HEAD_BYTES};

/// Bytes read at once while a head is checked (a typical head is a few hundred bytes).
const READ_BYTES: usize = 4 * 1024;
/// How long a refused client may go on sending before the socket is closed anyway.
const LINGER: Duration = Duration::from_secs(1);

pub(super) struct Socket {
    stream: TcpStream,
    activity: Arc<Activity>,
    check: HeadCheck,
    /// Bytes read and not handed to hyper yet; the first `checked` of them may be.
    held: BytesMut,
    checked: usize,
    /// The client ended its side; what is held is handed on, then the end.
    eof: bool,
    refused: Option<Refused>,
}

/// A refusal being written, then the linger after it.
struct Refused {
    response: Vec<u8>,
    written: usize,
    shut: bool,
    linger: Pin<Box<tokio::time::Sleep>>,
}

impl Socket {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            activity,
            check: HeadCheck::default(),
            held: BytesMut::new(),
            checked: 0,
            eof: false,
            refused: None,
        }
    }

    fn refuse(&mut self, why: Refusal) {
        tracing::debug!(reason = why.label(), "request head refused");
        self.activity.refused(why.label());
        self.held = BytesMut::new();
        self.checked = 0;
        self.refused = Some(Refused {
            response: why.response(),
            written: 0,
            shut: false,
            linger: Box::pin(tokio::time::sleep(LINGER)),
        });
    }

    /// Reads more of the current head into `held` and checks it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.capacity() - self.held.len() < READ_BYTES / 4 {
            self.held.reserve(READ_BYTES);
        }
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.held))?;
        if n == 0 {
            self.eof = true;
            // An unfinished head goes to hyper as it is: hyper sees it end mid-request.
            self.checked = self.held.len();
            return Poll::Ready(Ok(()));
        }
        self.activity.read();
        match self.check.check(&self.held[self.checked..]) {
            Ok(n) => self.checked += n,
            Err(why) => self.refuse(why),
        }
        if self.refused.is_none() && self.held.len() - self.checked > MAX_HEAD_BYTES {
            self.refuse(Refusal::HeadTooLarge);
        }
        Poll::Ready(Ok(()))
    }

    /// Reads straight into hyper's buffer and checks the new bytes there (no copy when they are
    /// whole heads, the usual case); an unfinished head at their end is taken back into `held`.
    /// Returns whether hyper may have what is in its buffer now.
    fn poll_read_direct(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<bool>> {
        let before = out.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, out))?;
        let new = &out.filled()[before..];
        if new.is_empty() {
            self.eof = true;
            return Poll::Ready(Ok(true));
        }
        self.activity.read();
        if self.check.pass_through() {
            return Poll::Ready(Ok(true));
        }
        match self.check.check(new) {
            Ok(n) if n == new.len() => Poll::Ready(Ok(true)),
            Ok(n) => {
                self.held.extend_from_slice(&new[n..]);
                out.set_filled(before + n);
                Poll::Ready(Ok(n > 0))
            }
            Err(why) => {
                out.set_filled(before);
                self.refuse(why);
                Poll::Ready(Ok(true))
            }
        }
    }

    /// Writes the refusal, shuts the sending side, then discards what the client still sends
    /// until it closes or [`LINGER`] passes.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(r) = self.refused.as_mut() else { return Poll::Ready(Ok(())) };
        while r.written < r.response.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &r.response[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
            self.activity.wrote();
        }
        if !r.shut {
            ready!(Pin::new(&mut self.stream).poll_shutdown(cx))?;
            r.shut = true;
        }
        let mut sink = [0u8; 1024];
        loop {
            if r.linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {}
                // The client closed or reset: the answer was delivered or cannot be.
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncRead for Socket {
    /// Once the watchdog ended the connection, the end of the stream (as if the client had
    /// closed): hyper then finishes, also in the middle of a head.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.activity.expired() {
            return Poll::Ready(Ok(()));
        }
        match me.poll_read_checked(cx, out) {
            Poll::Pending if me.activity.wake_on_expiry(cx) => Poll::Ready(Ok(())),
            polled => polled,
        }
    }
}

impl Socket {
    fn poll_read_checked(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self;
        loop {
            if me.checked > 0 {
                let n = me.checked.min(out.remaining());
                out.put_slice(&me.held[..n]);
                me.held.advance(n);
                me.checked -= n;
                if me.held.is_empty() {
                    // Idle keep-alive connections hold no buffer of ours.
                    me.held = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = me.check.take_deferred() {
                me.refuse(why);
            }
            if me.eof || me.refused.is_some() {
                return Poll::Ready(Ok(()));
            }
            if me.held.is_empty() {
                if ready!(me.poll_read_direct(cx, out))? {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            ready!(me.poll_fill(cx))?;
        }
    }
}

impl Socket {
    /// Tells the watchdog of what `write` wrote; once the watchdog ended the connection (a client
    /// that stopped reading its answer), writing fails.
    fn poll_written(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.activity.expired() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        match write(Pin::new(&mut self.stream), cx) {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.activity.wrote();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.activity.wake_on_expiry(cx) => {
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            polled => polled,
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_written(cx, |stream, cx| stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_written(cx, |stream, cx| stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.refused.is_some() {
            return self.poll_refusal(cx);
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
