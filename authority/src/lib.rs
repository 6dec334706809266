//! Lets an HTTP/2 server built on hyper's h2 answer clients whose `:authority` is not an RFC 3986
//! `host[:port]`.
//!
//! Over a unix socket there is no host, and many gRPC clients put the socket path there (grpc-go
//! before 2024 with a custom dialer, so kubelet before 1.30 and crictl 1.29; grpc-java; grpcio),
//! percent-encoded or not, or leave it empty. h2 refuses such a request with RST_STREAM
//! PROTOCOL_ERROR and offers no switch to relax it (hyperium/h2#487), while containerd and CRI-O
//! accept any authority. [`AuthorityFix`] wraps an accepted connection and rewrites that one
//! header in the client-to-server byte stream before h2 parses it: a refused `:authority` becomes
//! `localhost`. Everything else passes through, and the server-to-client direction is untouched.
//!
//! To rewrite one header the wrapper has to follow the client's HPACK state: it decodes every
//! header block (the client's dynamic table lives in its decoder, [`hpack::Decoder`]). As long as every authority is
//! acceptable the original frames go on byte for byte, so the server's own decoder stays in step
//! with the client. From the first refused authority on, every header block of the connection is
//! re-encoded as plain literals that never touch the dynamic table, so the server's table no
//! longer matters. Frames other than HEADERS and CONTINUATION are forwarded without being looked
//! at beyond their 9-byte header; their payloads go straight into the server's read buffer.

mod frames;
pub mod hpack;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

pub use frames::FrameError;
use frames::{Rewriter, Step};

/// A server-side connection whose incoming HTTP/2 stream carries only authorities that h2
/// accepts. A stream that does not start with the HTTP/2 client preface passes through as is.
#[derive(Debug)]
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.rewriter.step()? {
                Step::Emit => {
                    this.rewriter.drain_output(buf);
                    return Poll::Ready(Ok(()));
                }
                Step::Raw { limit } => {
                    if this.rewriter.has_input() {
                        this.rewriter.forward_buffered(buf);
                        return Poll::Ready(Ok(()));
                    }
                    // Nothing buffered: let the inner stream fill the caller's buffer itself, so a
                    // DATA payload is copied once, as without the wrapper.
                    let limit = limit.min(buf.remaining());
                    let mut part = ReadBuf::new(buf.initialize_unfilled_to(limit));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                    let read = part.filled().len();
                    if read == 0 {
                        this.rewriter.end_of_input()?;
                        return Poll::Ready(Ok(()));
                    }
                    buf.advance(read);
                    this.rewriter.forwarded(read);
                    return Poll::Ready(Ok(()));
                }
                Step::NeedInput { at_least } => {
                    let input = this.rewriter.input_mut(at_least);
                    let read = ready!(tokio_util::io::poll_read_buf(
                        Pin::new(&mut this.inner),
                        cx,
                        input
                    ))?;
                    if read == 0 {
                        this.rewriter.end_of_input()?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
