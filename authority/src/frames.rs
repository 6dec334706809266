//! The client-to-server HTTP/2 stream, frame by frame (RFC 9113 3.4 and 4.1).

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::ReadBuf;

use crate::hpack::{Decoder, HpackError, REPLACEMENT, authority_is_acceptable, encode_literal};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const PRIORITY_LEN: usize = 5;
/// Frames we write stay within the SETTINGS_MAX_FRAME_SIZE every HTTP/2 server accepts.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Bounds what one header block may make us buffer, encoded or re-encoded (an indexed reference
/// of one octet can stand for a 4 KiB header). hyper refuses header lists above 16 KiB anyway.
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// How much to ask the inner stream for when frames are being parsed.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("header block of stream {stream} interrupted by a frame of type {frame_type:#x}")]
    InterruptedHeaderBlock { stream: u32, frame_type: u8 },
    #[error("header block of stream {stream} exceeds {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge { stream: u32 },
    #[error("HEADERS frame of stream {stream} has more padding or priority than payload")]
    BadHeadersPayload { stream: u32 },
    #[error("cannot decode the header block of stream {stream}: {source}")]
    Hpack {
        stream: u32,
        #[source]
        source: HpackError,
    },
    #[error("connection closed inside an HTTP/2 frame")]
    Truncated,
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        let kind = match e {
            FrameError::Truncated => std::io::ErrorKind::UnexpectedEof,
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e)
    }
}

/// What the reader has to do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Rewritten or framing bytes wait in the output buffer.
    Emit,
    /// The next `limit` bytes of the stream go to the server unchanged.
    Raw { limit: usize },
    /// The parser needs the input buffer to hold at least `at_least` bytes.
    NeedInput { at_least: usize },
}

#[derive(Debug)]
enum State {
    Preface,
    FrameHeader,
    /// Inside the payload of a frame that passes through; the count is what is left of it.
    Forward(usize),
    /// Not HTTP/2 with prior knowledge: the server gets everything as it is and decides.
    Opaque,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; PRIORITY_LEN]>,
    fragment: BytesMut,
    /// The frames as received, for when they can go on untouched.
    raw: BytesMut,
}

pub(crate) struct Rewriter {
    state: State,
    input: BytesMut,
    output: BytesMut,
    decoder: Decoder,
    block: Option<Block>,
    /// Set at the first refused authority; from then on every block is re-encoded, because the
    /// server's dynamic table no longer matches the client's.
    reencoding: bool,
    encoded: Vec<u8>,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("reencoding", &self.reencoding)
            .finish_non_exhaustive()
    }
}

impl Rewriter {
    pub(crate) fn new() -> Self {
        Rewriter {
            state: State::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: Decoder::default(),
            block: None,
            reencoding: false,
            encoded: Vec::new(),
        }
    }

    pub(crate) fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// The input buffer, with room for a read that brings it to `at_least` bytes.
    pub(crate) fn input_mut(&mut self, at_least: usize) -> &mut BytesMut {
        let want = at_least.saturating_sub(self.input.len()).max(READ_CHUNK);
        self.input.reserve(want);
        &mut self.input
    }

    pub(crate) fn drain_output(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.output.len().min(buf.remaining());
        buf.put_slice(&self.output[..n]);
        self.output.advance(n);
    }

    /// Copies buffered bytes of a pass-through frame (see [`Step::Raw`]).
    pub(crate) fn forward_buffered(&mut self, buf: &mut ReadBuf<'_>) {
        let limit = match self.state {
            State::Forward(n) => n,
            _ => usize::MAX,
        };
        let n = self.input.len().min(buf.remaining()).min(limit);
        buf.put_slice(&self.input[..n]);
        self.input.advance(n);
        self.forwarded(n);
    }

    /// Records that `n` bytes of a pass-through frame went to the server.
    pub(crate) fn forwarded(&mut self, n: usize) {
        if let State::Forward(left) = &mut self.state {
            *left -= n.min(*left);
        }
    }

    /// The client closed its side: fine between frames, an error inside one.
    pub(crate) fn end_of_input(&self) -> Result<(), FrameError> {
        let between_frames = match self.state {
            State::Opaque => true,
            State::Preface | State::FrameHeader => self.input.is_empty() && self.block.is_none(),
            State::Forward(_) => false,
        };
        if between_frames {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }

    pub(crate) fn step(&mut self) -> Result<Step, FrameError> {
        loop {
            if !self.output.is_empty() {
                return Ok(Step::Emit);
            }
            match self.state {
                State::Opaque => return Ok(Step::Raw { limit: usize::MAX }),
                State::Forward(0) => self.state = State::FrameHeader,
                State::Forward(limit) => return Ok(Step::Raw { limit }),
                State::Preface => {
                    let seen = self.input.len().min(PREFACE.len());
                    if self.input[..seen] != PREFACE[..seen] {
                        self.state = State::Opaque;
                    } else if seen < PREFACE.len() {
                        return Ok(Step::NeedInput {
                            at_least: PREFACE.len(),
                        });
                    } else {
                        self.output.extend_from_slice(&self.input[..PREFACE.len()]);
                        self.input.advance(PREFACE.len());
                        self.state = State::FrameHeader;
                    }
                }
                State::FrameHeader => {
                    if let Some(step) = self.frame()? {
                        return Ok(step);
                    }
                }
            }
        }
    }

    /// Handles the frame at the start of the input, or says what more it needs.
    fn frame(&mut self) -> Result<Option<Step>, FrameError> {
        if self.input.len() < FRAME_HEADER_LEN {
            return Ok(Some(Step::NeedInput {
                at_least: FRAME_HEADER_LEN,
            }));
        }
        let head = &self.input[..FRAME_HEADER_LEN];
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let frame_type = head[3];
        let flags = head[4];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;

        let in_block = match &self.block {
            Some(block) if frame_type != CONTINUATION || stream != block.stream => {
                return Err(FrameError::InterruptedHeaderBlock {
                    stream: block.stream,
                    frame_type,
                });
            }
            Some(_) => true,
            None => false,
        };
        if frame_type != HEADERS && !in_block {
            // A stray CONTINUATION included: the server reports it as it would without us.
            self.output.extend_from_slice(head);
            self.input.advance(FRAME_HEADER_LEN);
            self.state = State::Forward(len);
            return Ok(None);
        }
        let gathered = self.block.as_ref().map_or(0, |b| b.fragment.len());
        if gathered + len > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderBlockTooLarge { stream });
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            return Ok(Some(Step::NeedInput {
                at_least: FRAME_HEADER_LEN + len,
            }));
        }
        let frame = self.input.split_to(FRAME_HEADER_LEN + len);
        if in_block {
            if let Some(block) = &mut self.block {
                block.fragment.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
                block.raw.extend_from_slice(&frame);
            }
        } else {
            self.block = Some(open_block(stream, flags, frame)?);
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block)?;
        }
        Ok(None)
    }

    /// Decodes a complete header block and queues it for the server, as received or re-encoded.
    fn finish(&mut self, block: Block) -> Result<(), FrameError> {
        let mut refused: Option<Vec<u8>> = None;
        let encoded = &mut self.encoded;
        encoded.clear();
        // Indexed fields can make a block expand a hundredfold: stop growing past the limit.
        let mut oversized = false;
        self.decoder
            .decode(&block.fragment, |name, value| {
                if encoded.len() > MAX_HEADER_BLOCK {
                    oversized = true;
                } else if name == b":authority" && !authority_is_acceptable(value) {
                    refused.get_or_insert_with(|| value.to_vec());
                    encode_literal(encoded, name, REPLACEMENT);
                } else {
                    encode_literal(encoded, name, value);
                }
            })
            .map_err(|source| FrameError::Hpack {
                stream: block.stream,
                source,
            })?;
        if oversized || self.encoded.len() > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderBlockTooLarge {
                stream: block.stream,
            });
        }
        if let Some(authority) = refused
            && !self.reencoding
        {
            tracing::debug!(
                authority = %String::from_utf8_lossy(&authority),
                stream = block.stream,
                "HTTP/2 :authority is not host[:port]; the server gets localhost"
            );
            self.reencoding = true;
        }
        if !self.reencoding {
            self.output.extend_from_slice(&block.raw);
            return Ok(());
        }
        self.write_block(&block);
        Ok(())
    }

    /// Frames `self.encoded` as one HEADERS frame and as many CONTINUATION frames as needed.
    fn write_block(&mut self, block: &Block) {
        let first_room = MAX_FRAME_PAYLOAD - block.priority.map_or(0, |_| PRIORITY_LEN);
        let (first, rest) = self.encoded.split_at(first_room.min(self.encoded.len()));
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        put_frame_header(
            &mut self.output,
            priority.len() + first.len(),
            HEADERS,
            flags,
            block.stream,
        );
        self.output.extend_from_slice(priority);
        self.output.extend_from_slice(first);
        let mut chunks = rest.chunks(MAX_FRAME_PAYLOAD).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            put_frame_header(
                &mut self.output,
                chunk.len(),
                CONTINUATION,
                flags,
                block.stream,
            );
            self.output.extend_from_slice(chunk);
        }
    }
}

/// Strips padding and priority from a HEADERS frame and starts its block.
fn open_block(stream: u32, flags: u8, frame: BytesMut) -> Result<Block, FrameError> {
    let bad = || FrameError::BadHeadersPayload { stream };
    let mut payload = &frame[FRAME_HEADER_LEN..];
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or_else(bad)?;
        let keep = rest.len().checked_sub(usize::from(pad)).ok_or_else(bad)?;
        payload = &rest[..keep];
    }
    let priority = if flags & PRIORITY != 0 {
        let (fields, rest) = payload
            .split_first_chunk::<PRIORITY_LEN>()
            .ok_or_else(bad)?;
        payload = rest;
        Some(*fields)
    } else {
        None
    };
    Ok(Block {
        stream,
        end_stream: flags & END_STREAM != 0,
        priority,
        fragment: BytesMut::from(payload),
        raw: frame,
    })
}

fn put_frame_header(out: &mut BytesMut, len: usize, frame_type: u8, flags: u8, stream: u32) {
    // `len` never exceeds MAX_FRAME_PAYLOAD, so it fits the 24-bit length field.
    out.put_uint(len as u64, 3);
    out.put_u8(frame_type);
    out.put_u8(flags);
    out.put_u32(stream);
}
