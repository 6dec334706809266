//! The wrapper on hand-made frames, and in front of a real h2 server.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::AuthorityFix;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const SOCKET: &[u8] = b"/run/berth/berth.sock";

fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        frame_type,
        flags,
    ];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    assert!(s.len() < 127, "test strings use a one-octet length");
    let mut out = vec![s.len() as u8];
    out.extend_from_slice(s);
    out
}

/// `:method GET`, `:scheme http`, `:path /` from the static table.
const GET_HTTP_ROOT: [u8; 3] = [0x82, 0x86, 0x84];

/// Literal `:authority` (static name index 1); `indexing` adds it to the dynamic table.
fn authority(value: &[u8], indexing: bool) -> Vec<u8> {
    let mut out = vec![if indexing { 0x41 } else { 0x01 }];
    out.extend(string(value));
    out
}

fn block(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Hands out the input a few bytes per read, so every parser state meets a split.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = (this.data.len() - this.pos)
            .min(this.chunk)
            .min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// The bytes the server would read, the same whether the client's bytes come one at a time, in
/// odd pieces or all at once.
async fn through_wrapper(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut results = Vec::new();
    for chunk in [1, 7, 1 << 20] {
        let mut fix = AuthorityFix::new(Trickle {
            data: input.to_vec(),
            pos: 0,
            chunk,
        });
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await?;
        results.push(out);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    Ok(results.remove(0))
}

#[derive(Debug, PartialEq)]
struct Frame {
    frame_type: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn parse(mut bytes: &[u8]) -> Vec<Frame> {
    bytes = bytes.strip_prefix(PREFACE).expect("preface first");
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        frames.push(Frame {
            frame_type: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    frames
}

type Headers = Vec<(String, String)>;

/// Decodes the header blocks as the server would, with one decoder for the connection.
fn server_view(frames: &[Frame]) -> Vec<Headers> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for f in frames {
        match f.frame_type {
            HEADERS => {
                assert_eq!(f.flags & PADDED, 0, "the server never sees padding");
                let skip = if f.flags & PRIORITY != 0 { 5 } else { 0 };
                pending = f.payload[skip..].to_vec();
            }
            CONTINUATION => pending.extend_from_slice(&f.payload),
            _ => continue,
        }
        if f.flags & END_HEADERS != 0 {
            let decoded = decoder.decode(&pending).expect("server decodes the block");
            blocks.push(
                decoded
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect(),
            );
        }
    }
    blocks
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn request(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, stream, block)
}

fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

#[tokio::test]
async fn path_authority_becomes_localhost() {
    let input = connection(&[request(
        1,
        END_STREAM,
        &block(&[
            &GET_HTTP_ROOT,
            &authority(SOCKET, false),
            &[0x7a],
            &string(b"x"),
        ]),
    )]);
    let frames = parse(&through_wrapper(&input).await.unwrap());
    let headers = server_view(&frames);
    assert_eq!(headers.len(), 1);
    assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
    assert_eq!(header(&headers[0], ":path"), Some("/"));
    // 0x7a is static index 58, user-agent.
    assert_eq!(header(&headers[0], "user-agent"), Some("x"));
    let names: Vec<_> = headers[0].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [":method", ":scheme", ":path", ":authority", "user-agent"]
    );
    let h = &frames[1];
    assert_eq!((h.frame_type, h.stream), (HEADERS, 1));
    assert_eq!(h.flags, END_STREAM | END_HEADERS);
}

#[tokio::test]
async fn empty_and_percent_encoded_authorities_become_localhost() {
    for value in [&b""[..], b"%2Frun%2Fberth%2Fberth.sock"] {
        let input = connection(&[request(
            1,
            END_STREAM,
            &block(&[&GET_HTTP_ROOT, &authority(value, false)]),
        )]);
        let headers = server_view(&parse(&through_wrapper(&input).await.unwrap()));
        assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
    }
}

#[tokio::test]
async fn valid_authorities_pass_byte_exact() {
    // RFC 7541 C.4.1 and C.4.2: Huffman-coded www.example.com, then a reference to it.
    let first = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let second = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    let input = connection(&[
        request(1, END_STREAM, &first),
        request(3, END_STREAM, &second),
        request(
            5,
            END_STREAM,
            &block(&[&GET_HTTP_ROOT, &authority(b"localhost", false)]),
        ),
    ]);
    let output = through_wrapper(&input).await.unwrap();
    assert_eq!(output, input);
    let headers = server_view(&parse(&output));
    assert_eq!(header(&headers[1], ":authority"), Some("www.example.com"));
    assert_eq!(header(&headers[1], "cache-control"), Some("no-cache"));
}

#[tokio::test]
async fn dynamic_table_references_across_requests_decode() {
    let custom = block(&[&[0x40], &string(b"x-trace"), &string(b"abc")]);
    let input = connection(&[
        // Passes untouched: the server's table gets x-trace: abc (index 62).
        request(
            1,
            END_STREAM,
            &block(&[&GET_HTTP_ROOT, &authority(b"localhost", false), &custom]),
        ),
        // Inserts the path authority (index 62, x-trace moves to 63) and is rewritten.
        request(
            3,
            END_STREAM,
            &block(&[&GET_HTTP_ROOT, &authority(SOCKET, true)]),
        ),
        // Refers to both entries by index only.
        request(5, END_STREAM, &block(&[&GET_HTTP_ROOT, &[0xbe, 0xbf]])),
    ]);
    let headers = server_view(&parse(&through_wrapper(&input).await.unwrap()));
    assert_eq!(headers.len(), 3);
    assert_eq!(header(&headers[0], "x-trace"), Some("abc"));
    assert_eq!(header(&headers[1], ":authority"), Some("localhost"));
    assert_eq!(header(&headers[2], ":authority"), Some("localhost"));
    assert_eq!(header(&headers[2], "x-trace"), Some("abc"));
}

/// RFC 7541 Appendix B codes for the characters of `SOCKET`.
fn huffman(s: &[u8]) -> Vec<u8> {
    let code = |c: u8| -> (u32, u32) {
        match c {
            b'/' => (0x18, 6),
            b'.' => (0x17, 6),
            b'b' => (0x23, 6),
            b'c' => (0x4, 5),
            b'e' => (0x5, 5),
            b'h' => (0x27, 6),
            b'k' => (0x75, 7),
            b'n' => (0x2a, 6),
            b'o' => (0x7, 5),
            b'r' => (0x2c, 6),
            b's' => (0x8, 5),
            b't' => (0x9, 5),
            b'u' => (0x2d, 6),
            other => panic!("no code for {other}"),
        }
    };
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &c in s {
        let (value, len) = code(c);
        acc = acc << len | u64::from(value);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        // EOS padding: the most significant bits of the EOS code, all ones.
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

#[tokio::test]
async fn huffman_coded_path_authority_is_rewritten() {
    let coded = huffman(SOCKET);
    let mut field = vec![0x01, 0x80 | coded.len() as u8];
    field.extend(&coded);
    let original = block(&[&GET_HTTP_ROOT, &field]);
    let as_sent = loona_hpack::Decoder::new().decode(&original).unwrap();
    assert_eq!(as_sent[3], (b":authority".to_vec(), SOCKET.to_vec()));

    let input = connection(&[request(1, END_STREAM, &original)]);
    let headers = server_view(&parse(&through_wrapper(&input).await.unwrap()));
    assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
}

#[tokio::test]
async fn continuation_frames_are_reassembled() {
    let whole = block(&[
        &GET_HTTP_ROOT,
        &authority(SOCKET, true),
        &[0x40],
        &string(b"x-one"),
        &string(b"1"),
    ]);
    let input = connection(&[
        frame(HEADERS, END_STREAM, 7, &whole[..4]),
        frame(CONTINUATION, 0, 7, &whole[4..10]),
        frame(CONTINUATION, END_HEADERS, 7, &whole[10..]),
        frame(DATA, END_STREAM, 9, b"after"),
    ]);
    let frames = parse(&through_wrapper(&input).await.unwrap());
    let types: Vec<_> = frames.iter().map(|f| f.frame_type).collect();
    assert_eq!(types, [SETTINGS, HEADERS, DATA]);
    assert_eq!(frames[1].flags, END_STREAM | END_HEADERS);
    assert_eq!(frames[1].stream, 7);
    let headers = server_view(&frames);
    assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
    assert_eq!(header(&headers[0], "x-one"), Some("1"));
}

#[tokio::test]
async fn padding_is_dropped_and_priority_kept() {
    let fragment = block(&[&GET_HTTP_ROOT, &authority(SOCKET, false)]);
    let priority = [0x80, 0, 0, 3, 200];
    let mut payload = vec![6];
    payload.extend(priority);
    payload.extend(&fragment);
    payload.extend([0; 6]);
    let input = connection(&[frame(
        HEADERS,
        PADDED | PRIORITY | END_HEADERS | END_STREAM,
        1,
        &payload,
    )]);
    let frames = parse(&through_wrapper(&input).await.unwrap());
    let h = &frames[1];
    assert_eq!(h.flags, PRIORITY | END_HEADERS | END_STREAM);
    assert_eq!(h.payload[..5], priority);
    let headers = server_view(&frames);
    assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
    assert_eq!(header(&headers[0], ":method"), Some("GET"));
}

#[tokio::test]
async fn other_frames_pass_byte_exact_around_a_rewrite() {
    let big: Vec<u8> = (0..16_000u32).map(|i| (i % 251) as u8).collect();
    let frames_in = [
        frame(WINDOW_UPDATE, 0, 0, &[0, 1, 0, 0]),
        request(1, 0, &block(&[&GET_HTTP_ROOT, &authority(SOCKET, false)])),
        frame(DATA, 0, 1, &big),
        frame(DATA, END_STREAM, 1, b""),
        frame(PING, 0, 0, b"12345678"),
        frame(SETTINGS, 0x1, 0, &[]),
    ];
    let input = connection(&frames_in);
    let output = parse(&through_wrapper(&input).await.unwrap());
    let expected = parse(&input);
    assert_eq!(output.len(), expected.len());
    for (i, (got, want)) in output.iter().zip(&expected).enumerate() {
        if got.frame_type != HEADERS {
            assert_eq!(got, want, "frame {i}");
        }
    }
}

#[tokio::test]
async fn a_block_over_16k_is_split_into_continuations() {
    let long = vec![b'v'; 120];
    let mut whole = block(&[&GET_HTTP_ROOT, &authority(SOCKET, false)]);
    // 200 indexed-once headers of 120 bytes re-encode to about 26 KB.
    whole.extend([0x40]);
    whole.extend(string(b"x-long"));
    whole.extend(string(&long));
    whole.extend(std::iter::repeat_n(0xbe, 199));
    let input = connection(&[request(3, PRIORITY, &{
        let mut p = vec![0, 0, 0, 1, 15];
        p.extend(&whole);
        p
    })]);
    let frames = parse(&through_wrapper(&input).await.unwrap());
    let types: Vec<_> = frames.iter().map(|f| f.frame_type).collect();
    assert_eq!(types, [SETTINGS, HEADERS, CONTINUATION]);
    assert!(frames.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(frames[1].payload.len(), 16_384);
    assert_eq!(frames[1].flags, PRIORITY);
    assert_eq!(frames[2].flags, END_HEADERS);
    assert_eq!(frames[2].stream, 3);
    let headers = server_view(&frames);
    assert_eq!(headers[0].len(), 4 + 200);
    assert_eq!(header(&headers[0], ":authority"), Some("localhost"));
    assert!(
        headers[0][4..]
            .iter()
            .all(|(n, v)| n == "x-long" && v.len() == 120)
    );
}

#[tokio::test]
async fn malformed_input_is_an_error() {
    let cases: Vec<(&str, Vec<u8>, io::ErrorKind)> = vec![
        (
            "index past the tables",
            connection(&[request(1, 0, &[0x80 | 0x7f, 0x10])]),
            io::ErrorKind::InvalidData,
        ),
        (
            "string longer than the block",
            connection(&[request(1, 0, &[0x01, 0x20, b'a'])]),
            io::ErrorKind::InvalidData,
        ),
        (
            "table size update above the limit",
            connection(&[request(1, 0, &[0x3f, 0xe1, 0xff, 0x03, 0x82])]),
            io::ErrorKind::InvalidData,
        ),
        (
            "block interrupted by DATA",
            connection(&[
                frame(HEADERS, 0, 1, &GET_HTTP_ROOT),
                frame(DATA, 0, 1, b"x"),
            ]),
            io::ErrorKind::InvalidData,
        ),
        (
            "padding longer than the frame",
            connection(&[frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82])]),
            io::ErrorKind::InvalidData,
        ),
        (
            "priority missing",
            connection(&[frame(HEADERS, PRIORITY | END_HEADERS, 1, &[0, 0])]),
            io::ErrorKind::InvalidData,
        ),
        (
            "connection closed inside a frame",
            connection(&[frame(DATA, 0, 1, b"abc")[..10].to_vec()]),
            io::ErrorKind::UnexpectedEof,
        ),
        (
            "connection closed inside a header block",
            connection(&[frame(HEADERS, 0, 1, &GET_HTTP_ROOT)]),
            io::ErrorKind::UnexpectedEof,
        ),
    ];
    for (what, input, kind) in cases {
        let err = through_wrapper(&input).await.expect_err(what);
        assert_eq!(err.kind(), kind, "{what}: {err}");
    }
}

#[tokio::test]
async fn random_bytes_never_panic() {
    // A small xorshift: the same bytes every run.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let len = (next() % 300) as usize;
        let mut input = connection(&[]);
        // Keep the frame lengths small so the HPACK decoder, not just the framing, sees garbage.
        input.extend([0, 0, (next() % 64) as u8, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        input.extend((0..len).map(|_| next() as u8));
        let _ = through_wrapper(&input).await;
    }
}

#[tokio::test]
async fn a_stream_that_is_not_http2_passes_as_is() {
    let input = b"GET / HTTP/1.1\r\nHost: /run/berth.sock\r\n\r\n".to_vec();
    assert_eq!(through_wrapper(&input).await.unwrap(), input);
}

/// What the server answered a raw request on stream 1.
#[derive(Debug, PartialEq)]
enum Answer {
    Status(String),
    Reset(u32),
}

/// Sends one GET with `authority` to an h2 server on the other end of a duplex pipe, served
/// through the wrapper or not, and reads until stream 1 is answered or reset.
async fn ask_h2_server(authority_value: &[u8], wrapped: bool) -> Answer {
    let (mut client, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let serve = |io| async move {
            let mut conn = h2::server::handshake(io).await?;
            while let Some(request) = conn.accept().await {
                let (_, mut respond) = request?;
                let response = http::Response::builder().status(204).body(()).unwrap();
                respond.send_response(response, true)?;
            }
            Ok::<_, h2::Error>(())
        };
        if wrapped {
            serve(Box::new(AuthorityFix::new(server_io)) as Box<dyn Io>).await
        } else {
            serve(Box::new(server_io) as Box<dyn Io>).await
        }
    });

    let mut out = connection(&[request(
        1,
        END_STREAM,
        &block(&[&GET_HTTP_ROOT, &authority(authority_value, false)]),
    )]);
    out.extend(frame(SETTINGS, 0x1, 0, &[]));
    client.write_all(&out).await.unwrap();

    let mut decoder = loona_hpack::Decoder::new();
    let answer = loop {
        let mut head = [0u8; 9];
        client.read_exact(&mut head).await.unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
        match (head[3], stream) {
            (HEADERS, 1) => {
                let headers = decoder.decode(&payload).unwrap();
                let status = headers
                    .into_iter()
                    .find(|(n, _)| n == b":status")
                    .map(|(_, v)| String::from_utf8(v).unwrap())
                    .unwrap();
                break Answer::Status(status);
            }
            (RST_STREAM, 1) => {
                break Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
            }
            _ => {}
        }
    };
    drop(client);
    let _ = server.await;
    answer
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[tokio::test]
async fn h2_server_answers_a_path_authority_only_through_the_wrapper() {
    const PROTOCOL_ERROR: u32 = 0x1;
    assert_eq!(
        ask_h2_server(SOCKET, false).await,
        Answer::Reset(PROTOCOL_ERROR)
    );
    assert_eq!(
        ask_h2_server(b"", false).await,
        Answer::Reset(PROTOCOL_ERROR)
    );
    assert_eq!(
        ask_h2_server(SOCKET, true).await,
        Answer::Status("204".into())
    );
    assert_eq!(ask_h2_server(b"", true).await, Answer::Status("204".into()));
    assert_eq!(
        ask_h2_server(b"localhost", true).await,
        Answer::Status("204".into())
    );
}
