//! berthd answers clients that send the socket path (plain or percent-encoded) or nothing as the
//! HTTP/2 `:authority`, on every service of its socket: Python's grpcio, a hand-written HTTP/2
//! client, and the grpc-go of kubelet 1.27 (e2e/oldgrpc). hyper's h2 alone resets such requests
//! with PROTOCOL_ERROR; berth-authority rewrites them. Runs as root; needs berthd, the pinned
//! crictl (for the harness), Debian's python3-grpcio and Go.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use berth_authority::hpack::{Decoder, encode_literal};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};

/// The log line berth-authority writes, once per connection, when it replaces an authority.
const REWRITE_LOG: &str = "HTTP/2 :authority is not host[:port]";
/// `VersionResponse.runtime_name = "berth"` as protobuf bytes (field 2, length 5).
const RUNTIME_NAME_BERTH: &[u8] = b"\x12\x05berth";
const PYTHON: &str = "/usr/bin/python3";

fn start_berthd() -> Result<Berthd> {
    berthd_binary()?;
    Berthd::start(BerthdOptions::default().env("BERTH_LOG", "info,berth_authority=debug"))
}

fn socket_text(berthd: &Berthd) -> Result<String> {
    berthd
        .paths()
        .socket
        .to_str()
        .map(str::to_owned)
        .context("socket path is not UTF-8")
}

fn percent_encoded(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

fn log(berthd: &Berthd) -> Result<String> {
    let path = &berthd.paths().log;
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// How many connections had `authority` replaced so far.
fn rewrites_of(berthd: &Berthd, authority: &str) -> Result<usize> {
    let wanted = format!("authority={authority} ");
    Ok(log(berthd)?
        .lines()
        .filter(|l| l.contains(REWRITE_LOG) && l.contains(&wanted))
        .count())
}

fn rewrites(berthd: &Berthd) -> Result<usize> {
    Ok(log(berthd)?
        .lines()
        .filter(|l| l.contains(REWRITE_LOG))
        .count())
}

/// One RPC on each service through grpcio, with raw protobuf bytes. `authority` is grpcio's
/// `grpc.default_authority` channel option; None keeps grpcio's own choice for a `unix:` target.
const GRPCIO_CLIENT: &str = r#"
import sys, grpc
socket, authority = sys.argv[1], sys.argv[2:]
options = [("grpc.default_authority", authority[0])] if authority else []
channel = grpc.insecure_channel("unix:" + socket, options=options)
raw = lambda b: b
for method in ("/runtime.v1.RuntimeService/Version",
               "/runtime.v1.ImageService/ListImages",
               "/berth.tasks.v1.Tasks/ListShims"):
    reply = channel.unary_unary(method, request_serializer=raw, response_deserializer=raw)(b"", timeout=20)
    print(method, reply.hex())
"#;

fn grpcio(socket: &str, authority: Option<&str>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = Command::new(PYTHON);
    cmd.args(["-c", GRPCIO_CLIENT, socket]).args(authority);
    let out = cmd
        .output()
        .with_context(|| format!("run {PYTHON} (apt-get install python3-grpcio)"))?;
    ensure!(
        out.status.success(),
        "grpcio client with authority {authority:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (method, hex) = line.split_once(' ').unwrap_or((line, ""));
            Ok((method.to_owned(), hex_decode(hex)?))
        })
        .collect()
}

fn hex_decode(hex: &str) -> Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .with_context(|| format!("bad hex {hex}"))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn grpcio_reaches_every_service_with_any_authority() -> Result<()> {
    let berthd = start_berthd()?;
    let socket = socket_text(&berthd)?;
    let percent = percent_encoded(&socket);
    for authority in [None, Some(socket.as_str()), Some(percent.as_str())] {
        let replies = grpcio(&socket, authority)?;
        let methods: Vec<_> = replies.iter().map(|(m, _)| m.as_str()).collect();
        ensure!(
            methods
                == [
                    "/runtime.v1.RuntimeService/Version",
                    "/runtime.v1.ImageService/ListImages",
                    "/berth.tasks.v1.Tasks/ListShims"
                ],
            "grpcio with authority {authority:?} printed {methods:?}"
        );
        ensure!(
            contains(&replies[0].1, RUNTIME_NAME_BERTH),
            "Version reply {:?} has no runtime name berth",
            replies[0].1
        );
    }
    // grpcio's own authority for a unix: target is acceptable as it is (it sends "localhost"); the
    // two explicit ones were replaced, one connection each.
    ensure!(
        rewrites(&berthd)? == 2,
        "expected 2 rewrites:\n{}",
        log(&berthd)?
    );
    ensure!(rewrites_of(&berthd, &socket)? == 1);
    ensure!(rewrites_of(&berthd, &percent)? == 1);
    Ok(())
}

/// What a hand-made HTTP/2 request got back.
#[derive(Debug)]
struct RawReply {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn write_frame(
    out: &mut impl Write,
    frame_type: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> Result<()> {
    let len = u32::try_from(payload.len())?.to_be_bytes();
    out.write_all(&[len[1], len[2], len[3], frame_type, flags])?;
    out.write_all(&stream.to_be_bytes())?;
    out.write_all(payload)?;
    Ok(())
}

/// One unary gRPC call spoken as raw HTTP/2 over the socket, with `authority` as it is.
fn raw_grpc_call(socket: &Path, authority: &[u8], method: &str) -> Result<RawReply> {
    let mut conn =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;

    let mut block = Vec::new();
    encode_literal(&mut block, b":method", b"POST");
    encode_literal(&mut block, b":scheme", b"http");
    encode_literal(&mut block, b":path", method.as_bytes());
    encode_literal(&mut block, b":authority", authority);
    encode_literal(&mut block, b"content-type", b"application/grpc");
    encode_literal(&mut block, b"te", b"trailers");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    write_frame(&mut out, SETTINGS, 0, 0, &[])?;
    write_frame(&mut out, HEADERS, END_HEADERS, 1, &block)?;
    // An empty message: uncompressed, length 0.
    write_frame(&mut out, DATA, END_STREAM, 1, &[0, 0, 0, 0, 0])?;
    conn.write_all(&out)?;

    let mut decoder = Decoder::default();
    let mut reply = RawReply {
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head)
            .context("read a frame header from berthd")?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (frame_type, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        conn.read_exact(&mut payload)?;
        match (frame_type, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => write_frame(&mut conn, SETTINGS, ACK, 0, &[])?,
            (PING, 0) if flags & ACK == 0 => write_frame(&mut conn, PING, ACK, 0, &payload)?,
            (GOAWAY, _) => bail!("berthd sent GOAWAY: {payload:?}"),
            (RST_STREAM, 1) => bail!("berthd reset the stream: error code {payload:?}"),
            (HEADERS, 1) => {
                ensure!(flags & END_HEADERS != 0, "response headers in CONTINUATION");
                decoder
                    .decode(&payload, |n, v| {
                        reply.headers.push((
                            String::from_utf8_lossy(n).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        ))
                    })
                    .context("decode response headers")?;
            }
            (DATA, 1) => reply.body.extend_from_slice(&payload),
            _ => {}
        }
        if stream == 1 && flags & END_STREAM != 0 && matches!(frame_type, HEADERS | DATA) {
            return Ok(reply);
        }
    }
}

#[test]
fn raw_http2_with_a_path_or_empty_authority_is_answered() -> Result<()> {
    let berthd = start_berthd()?;
    let socket = berthd.paths().socket.clone();
    let socket_text = socket_text(&berthd)?;
    let percent = percent_encoded(&socket_text);
    for authority in [socket_text.as_bytes(), b"", percent.as_bytes()] {
        let shown = String::from_utf8_lossy(authority);
        let reply = raw_grpc_call(&socket, authority, "/runtime.v1.RuntimeService/Version")
            .with_context(|| format!("Version with authority {shown:?}"))?;
        ensure!(reply.header(":status") == Some("200"), "{reply:?}");
        ensure!(
            reply.header("grpc-status") == Some("0"),
            "authority {shown:?}: {reply:?}"
        );
        ensure!(
            reply.body.first() == Some(&0) && contains(&reply.body, RUNTIME_NAME_BERTH),
            "authority {shown:?}: Version body {:?}",
            reply.body
        );
        let tasks = raw_grpc_call(&socket, authority, "/berth.tasks.v1.Tasks/ListShims")?;
        ensure!(tasks.header("grpc-status") == Some("0"), "{tasks:?}");
    }
    ensure!(rewrites_of(&berthd, &socket_text)? == 2);
    ensure!(rewrites_of(&berthd, "")? == 2);
    Ok(())
}

/// Builds e2e/oldgrpc through hack/build-oldgrpc.sh (cached by its go.sum).
fn oldgrpc_binary() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/build-oldgrpc.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{}: {}\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(path))
}

#[test]
fn grpc_go_of_kubelet_1_27_dialing_the_socket_path_is_answered() -> Result<()> {
    let oldgrpc = oldgrpc_binary()?;
    let berthd = start_berthd()?;
    let socket = socket_text(&berthd)?;
    let out = Command::new(&oldgrpc)
        .arg(&socket)
        .output()
        .with_context(|| format!("run {}", oldgrpc.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "oldgrpc: {}\n{stdout}{}\nberthd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        berthd.log_tail()
    );
    let lines: Vec<_> = stdout.lines().collect();
    ensure!(
        lines.first() == Some(&"version runtime_name=berth runtime_api_version=v1"),
        "{stdout}"
    );
    ensure!(
        lines.get(1).is_some_and(|l| l.starts_with("images count=")),
        "{stdout}"
    );
    ensure!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("shims reply_bytes=")),
        "{stdout}"
    );
    // This grpc-go sends the dial target, the socket path, as :authority: the rewrite did the work.
    ensure!(
        rewrites_of(&berthd, &socket)? == 1,
        "berthd log:\n{}",
        log(&berthd)?
    );
    Ok(())
}
