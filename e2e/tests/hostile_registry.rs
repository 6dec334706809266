//! A registry is untrusted: what it answers cannot make berthd hang, fill its memory or its
//! disk. Each case pulls from a stand-in registry this test serves on 127.0.0.1 (crafted
//! answers: oversized and endless manifests, stalls, a decompression bomb, too many layers,
//! malformed JSON); the pull fails with a clear message and code, nothing of it is left under
//! berthd's root, and berthd then pulls an ordinary image.
//! Runs as root; needs the berthd binary and the pinned crictl.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::image::{
    Blob, Compression, Digest, Image, ImageConfig, LayerBuilder, Meta, Platform, media_type,
};
use flate2::write::GzEncoder;

/// The tag of every image the stand-ins serve.
const TAG: &str = "v1";
/// Short, so that the stall cases end quickly.
const PROGRESS_TIMEOUT_SECS: u64 = 3;

/// What the stand-in answers on one path.
#[derive(Clone)]
enum Answer {
    /// 200 with a Content-Length (and the body's digest as Docker-Content-Digest).
    Full {
        content_type: String,
        body: Arc<[u8]>,
    },
    /// 200 with no length, and `byte` for as long as the client reads.
    Endless(u8),
    /// 500 with no length, and an error text for as long as the client reads.
    EndlessError,
    /// 200 and one byte of body, then nothing until the client leaves.
    Stall,
    /// 401 with this `WWW-Authenticate` challenge.
    Challenge(String),
    /// The inner answer to a request with this `Authorization`, 401 to any other.
    Authorized(String, Box<Answer>),
}

impl Answer {
    fn json(content_type: &str, body: Vec<u8>) -> Answer {
        Answer::Full {
            content_type: content_type.to_string(),
            body: body.into(),
        }
    }
}

/// A registry stand-in on 127.0.0.1: answers by path (the query ignored), 404 elsewhere.
/// Stops and joins its threads on drop.
struct StandIn {
    host: String,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl StandIn {
    fn start(routes: HashMap<String, Answer>) -> Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let host = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(routes);
        let stopping = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let routes = Arc::clone(&routes);
                let stopping = Arc::clone(&stopping);
                std::thread::spawn(move || {
                    let _ = serve(conn, &routes, &stopping);
                });
            }
        });
        Ok(StandIn {
            host,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(&self.host);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(mut conn: TcpStream, routes: &HashMap<String, Answer>, stop: &AtomicBool) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if stop.load(Ordering::SeqCst) || head.len() > 64 << 10 {
            return Ok(());
        }
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let mut answer = routes
        .get(&path)
        .cloned()
        .or_else(|| (path == "/v2/").then(|| Answer::json("application/json", b"{}".to_vec())));
    if let Some(Answer::Authorized(wanted, inner)) = answer {
        let sent = line.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().to_string())
        });
        answer = Some(if sent.as_deref() == Some(wanted.as_str()) {
            *inner
        } else {
            Answer::Challenge("Bearer realm=\"unauthorized\"".into())
        });
    }
    match answer {
        Some(Answer::Authorized(..)) => bail!("nested authorization"),
        None => {
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
        Some(Answer::Full { content_type, body }) => {
            let digest = Digest::sha256(&body);
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Docker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                body.len(),
                digest.as_str()
            )?;
            conn.write_all(&body)?;
        }
        Some(Answer::Challenge(challenge)) => {
            write!(
                conn,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
        }
        Some(answer @ (Answer::Endless(_) | Answer::EndlessError)) => {
            let (status, byte) = match answer {
                Answer::Endless(byte) => ("200 OK", byte),
                _ => ("500 Internal Server Error", b'!'),
            };
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
            )?;
            let chunk = [byte; 64 << 10];
            // Until berthd hangs up.
            while !stop.load(Ordering::SeqCst) {
                conn.write_all(&chunk)?;
            }
        }
        Some(Answer::Stall) => {
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                  Content-Length: 100\r\nConnection: close\r\n\r\n{",
            )?;
            // Until berthd hangs up (a read of 0) or the stand-in stops.
            while !stop.load(Ordering::SeqCst) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

fn manifest_path(repo: &str, tag: &str) -> String {
    format!("/v2/{repo}/manifests/{tag}")
}

fn blob_path(repo: &str, digest: &Digest) -> String {
    format!("/v2/{repo}/blobs/{}", digest.as_str())
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap_or_default()
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": digest.as_str(), "size": size})
}

fn manifest_json(config: serde_json::Value, layers: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }))
    .unwrap_or_default()
}

/// A gzip layer of one 1 GiB file of zeros, about 1 MiB compressed: one gzip member for the
/// tar header, then 64 identical members of 16 MiB of zeros (a layer is a multi-member gzip
/// stream as any gzip reader takes it). Built in memory, never stored.
fn bomb() -> Result<Vec<u8>> {
    let gzip = |data: &[u8]| -> Result<Vec<u8>> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data)?;
        Ok(enc.finish()?)
    };
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros")?;
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    let mut blob = gzip(header.as_bytes())?;
    let zeros = gzip(&vec![0u8; 16 << 20])?;
    for _ in 0..64 {
        blob.extend_from_slice(&zeros);
    }
    Ok(blob)
}

/// One hostile case: the repository to pull, what the pull must fail with.
struct Case {
    name: &'static str,
    reference: String,
    code: &'static str,
    message: String,
}

/// Blobs a failed pull may keep for its retry: after a stall or an error answer (a network
/// failure, not a refused image) the verified manifest and config stay until the next sweep.
fn kept_after_stall(manifest: &[u8], config: &Blob) -> Vec<String> {
    vec![
        Digest::sha256(manifest).hex().to_string(),
        config.digest().hex().to_string(),
    ]
}

fn snapshot_entries(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let snapshots = root.join("snapshots");
    for entry in std::fs::read_dir(&snapshots)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "staging" || name == "tmp" {
            for inner in std::fs::read_dir(entry.path())? {
                out.push(format!("{name}/{}", inner?.file_name().to_string_lossy()));
            }
        } else {
            out.push(name);
        }
    }
    Ok(out)
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        out.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Nothing of a refused pull under berthd's root: no snapshot, no staging or temp dir, no
/// partial download, no blob (but `kept`). Staging directories of the other layers of a
/// refused pull go as their unpacking notices the end: waited for.
fn assert_nothing_left(berthd: &Berthd, case: &str, kept: &[String]) -> Result<()> {
    let root = &berthd.paths().root;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshots = snapshot_entries(root)?;
        let ingest = dir_names(&root.join("content/ingest"))?;
        let blobs: Vec<String> = dir_names(&root.join("content/blobs/sha256"))?
            .into_iter()
            .filter(|b| !kept.contains(b))
            .collect();
        if snapshots.is_empty() && ingest.is_empty() && blobs.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{case}: left behind: snapshots {snapshots:?}, ingest {ingest:?}, blobs {blobs:?}\n{}",
                berthd.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_hostile_registry_gets_a_clear_refusal_and_leaves_nothing_behind() -> Result<()> {
    berthd_binary()?;
    let mut routes = HashMap::new();
    let mut cases = Vec::new();

    // An ordinary image, pulled last.
    let mut layer = LayerBuilder::new();
    layer.file("hello", Meta::mode(0o644), b"hello\n".to_vec());
    let ok = Image::build(
        Platform::linux_amd64(),
        &ImageConfig::default(),
        vec![layer.build(Compression::Gzip)?],
    )?;
    let serve_blob = |routes: &mut HashMap<String, Answer>, repo: &str, blob: &Blob| {
        routes.insert(
            blob_path(repo, blob.digest()),
            Answer::json(blob.media_type(), blob.data().to_vec()),
        );
    };
    routes.insert(
        manifest_path("ok", TAG),
        Answer::json(media_type::OCI_MANIFEST, ok.manifest.data().to_vec()),
    );
    serve_blob(&mut routes, "ok", &ok.config);
    serve_blob(&mut routes, "ok", &ok.layers[0].blob);

    // A manifest of 5 MiB, announced as such.
    let mut big = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST});
    big["annotations"] = serde_json::json!({"padding": "x".repeat(5 << 20)});
    routes.insert(
        manifest_path("big-manifest", TAG),
        Answer::json(media_type::OCI_MANIFEST, serde_json::to_vec(&big)?),
    );
    cases.push((
        "big-manifest",
        "FailedPrecondition",
        "is larger than 4194304 bytes".to_string(),
        "an oversized manifest",
    ));

    routes.insert(
        manifest_path("endless-manifest", TAG),
        Answer::Endless(b' '),
    );
    cases.push((
        "endless-manifest",
        "FailedPrecondition",
        "is larger than 4194304 bytes".to_string(),
        "an endless manifest",
    ));

    routes.insert(manifest_path("stalled-manifest", TAG), Answer::Stall);
    cases.push((
        "stalled-manifest",
        "DeadlineExceeded",
        format!(
            "no progress for {PROGRESS_TIMEOUT_SECS} s while fetching the manifest of the reference"
        ),
        "a stalled manifest",
    ));

    routes.insert(
        manifest_path("malformed", TAG),
        Answer::json(
            media_type::OCI_MANIFEST,
            br#"{"schemaVersion":2,"layers":["#.to_vec(),
        ),
    );
    cases.push((
        "malformed",
        "FailedPrecondition",
        "EOF while parsing".to_string(),
        "malformed JSON",
    ));

    // 501 layers: one more than overlayfs stacks.
    let config = Blob::new(media_type::OCI_CONFIG, config_json(&[]));
    let layers = (0..501)
        .map(|i| {
            descriptor(
                media_type::OCI_LAYER_GZIP,
                &Digest::sha256(format!("{i}").as_bytes()),
                100,
            )
        })
        .collect();
    routes.insert(
        manifest_path("many-layers", TAG),
        Answer::json(
            media_type::OCI_MANIFEST,
            manifest_json(
                descriptor(media_type::OCI_CONFIG, config.digest(), config.size()),
                layers,
            ),
        ),
    );
    cases.push((
        "many-layers",
        "FailedPrecondition",
        "has 501 layers, more than the 500".to_string(),
        "too many layers",
    ));

    // A config whose descriptor says 5 MiB.
    let fake = Digest::sha256(b"a config of 5 MiB");
    routes.insert(
        manifest_path("big-config", TAG),
        Answer::json(
            media_type::OCI_MANIFEST,
            manifest_json(descriptor(media_type::OCI_CONFIG, &fake, 5 << 20), vec![]),
        ),
    );
    cases.push((
        "big-config",
        "FailedPrecondition",
        format!(
            "image config {} is 5242880 bytes, more than 4194304",
            fake.as_str()
        ),
        "an oversized config",
    ));

    // A layer whose body never ends, though its descriptor says 1000 bytes.
    let endless_layer = Digest::sha256(b"an endless layer");
    let config = Blob::new(
        media_type::OCI_CONFIG,
        config_json(&[endless_layer.as_str().to_string()]),
    );
    routes.insert(
        manifest_path("endless-layer", TAG),
        Answer::json(
            media_type::OCI_MANIFEST,
            manifest_json(
                descriptor(media_type::OCI_CONFIG, config.digest(), config.size()),
                vec![descriptor(media_type::OCI_LAYER_GZIP, &endless_layer, 1000)],
            ),
        ),
    );
    serve_blob(&mut routes, "endless-layer", &config);
    routes.insert(
        blob_path("endless-layer", &endless_layer),
        Answer::Endless(0),
    );
    cases.push((
        "endless-layer",
        "FailedPrecondition",
        format!(
            "sent more of layer {} than the 1000 bytes its descriptor gives",
            endless_layer.as_str()
        ),
        "an endless layer",
    ));

    // An error answer that never ends, for a layer.
    let error_layer = Digest::sha256(b"a layer with an endless error");
    let config = Blob::new(
        media_type::OCI_CONFIG,
        config_json(&[error_layer.as_str().to_string()]),
    );
    let manifest = manifest_json(
        descriptor(media_type::OCI_CONFIG, config.digest(), config.size()),
        vec![descriptor(media_type::OCI_LAYER_GZIP, &error_layer, 1000)],
    );
    let mut kept = kept_after_stall(&manifest, &config);
    routes.insert(
        manifest_path("endless-error", TAG),
        Answer::json(media_type::OCI_MANIFEST, manifest),
    );
    serve_blob(&mut routes, "endless-error", &config);
    routes.insert(
        blob_path("endless-error", &error_layer),
        Answer::EndlessError,
    );
    cases.push((
        "endless-error",
        "Unavailable",
        "code: 500".to_string(),
        "an endless error answer",
    ));

    // A layer that stalls after its first byte.
    let stalled_layer = Digest::sha256(b"a stalled layer");
    let config = Blob::new(
        media_type::OCI_CONFIG,
        config_json(&[stalled_layer.as_str().to_string()]),
    );
    let manifest = manifest_json(
        descriptor(media_type::OCI_CONFIG, config.digest(), config.size()),
        vec![descriptor(media_type::OCI_LAYER_GZIP, &stalled_layer, 100)],
    );
    kept.extend(kept_after_stall(&manifest, &config));
    routes.insert(
        manifest_path("stalled-layer", TAG),
        Answer::json(media_type::OCI_MANIFEST, manifest),
    );
    serve_blob(&mut routes, "stalled-layer", &config);
    routes.insert(blob_path("stalled-layer", &stalled_layer), Answer::Stall);
    cases.push((
        "stalled-layer",
        "DeadlineExceeded",
        format!(
            "no progress for {PROGRESS_TIMEOUT_SECS} s while fetching layer {}",
            stalled_layer.as_str()
        ),
        "a stalled layer",
    ));

    // The bomb: 1 GiB of zeros from about 1 MiB.
    let bomb = Blob::new(media_type::OCI_LAYER_GZIP, bomb()?);
    ensure!(bomb.size() < 2 << 20, "the bomb is {} bytes", bomb.size());
    // Never checked: the bomb is stopped before its end.
    let diff_id = Digest::sha256(b"not computed");
    let config = Blob::new(
        media_type::OCI_CONFIG,
        config_json(&[diff_id.as_str().to_string()]),
    );
    routes.insert(
        manifest_path("bomb", TAG),
        Answer::json(
            media_type::OCI_MANIFEST,
            manifest_json(
                descriptor(media_type::OCI_CONFIG, config.digest(), config.size()),
                vec![descriptor(
                    media_type::OCI_LAYER_GZIP,
                    bomb.digest(),
                    bomb.size(),
                )],
            ),
        ),
    );
    serve_blob(&mut routes, "bomb", &config);
    serve_blob(&mut routes, "bomb", &bomb);
    cases.push((
        "bomb",
        "FailedPrecondition",
        format!(
            "layer {} decompresses to more than {} bytes (100 times its compressed size of {} bytes, registry.max_layer_expansion_ratio); refused as a decompression bomb",
            bomb.digest().as_str(),
            100 * bomb.size(),
            bomb.size()
        ),
        "a decompression bomb",
    ));

    // A registry behind a token server: the token berthd gets must reach every request.
    let token = "stand-in-token";
    let tokens = StandIn::start(HashMap::from([
        (
            "/token".to_string(),
            Answer::json(
                "application/json",
                format!(r#"{{"token":"{token}"}}"#).into_bytes(),
            ),
        ),
        // An answer of 2 MiB.
        (
            "/big-token".to_string(),
            Answer::json(
                "application/json",
                format!(r#"{{"token":"{}"}}"#, "t".repeat(2 << 20)).into_bytes(),
            ),
        ),
    ]))?;
    let authorized =
        |answer: Answer| Answer::Authorized(format!("Bearer {token}"), Box::new(answer));
    let mut bearer_routes = HashMap::from([
        (
            "/v2/".to_string(),
            Answer::Challenge(format!(
                "Bearer realm=\"http://{}/token\",service=\"stand-in\"",
                tokens.host
            )),
        ),
        (
            manifest_path("ok", TAG),
            authorized(Answer::json(
                media_type::OCI_MANIFEST,
                ok.manifest.data().to_vec(),
            )),
        ),
    ]);
    for blob in [&ok.config, &ok.layers[0].blob] {
        bearer_routes.insert(
            blob_path("ok", blob.digest()),
            authorized(Answer::json(blob.media_type(), blob.data().to_vec())),
        );
    }
    let bearer_registry = StandIn::start(bearer_routes)?;
    let big_token_registry = StandIn::start(HashMap::from([(
        "/v2/".to_string(),
        Answer::Challenge(format!("Bearer realm=\"http://{}/big-token\"", tokens.host)),
    )]))?;

    let stand_in = StandIn::start(routes)?;
    // A registry whose token server stalls: every pull from it waits on the token first.
    let token_server = StandIn::start(HashMap::from([("/token".to_string(), Answer::Stall)]))?;
    let token_registry = StandIn::start(HashMap::from([(
        "/v2/".to_string(),
        Answer::Challenge(format!(
            "Bearer realm=\"http://{}/token\",service=\"stand-in\"",
            token_server.host
        )),
    )]))?;

    let berthd = Berthd::start(
        BerthdOptions::default()
            .insecure_registry(&stand_in.host)
            .insecure_registry(&token_registry.host)
            .insecure_registry(&bearer_registry.host)
            .insecure_registry(&big_token_registry.host)
            .arg("--pull-progress-timeout-secs")
            .arg(PROGRESS_TIMEOUT_SECS.to_string()),
    )?;

    let mut all: Vec<Case> = cases
        .into_iter()
        .map(|(repo, code, message, name)| Case {
            name,
            reference: format!("{}/{repo}:{TAG}", stand_in.host),
            code,
            message,
        })
        .collect();
    all.push(Case {
        name: "a stalled token server",
        reference: format!("{}/any:{TAG}", token_registry.host),
        code: "DeadlineExceeded",
        message: format!(
            "no progress for {PROGRESS_TIMEOUT_SECS} s while fetching the registry's authentication challenge or token"
        ),
    });
    all.push(Case {
        name: "an oversized token answer",
        reference: format!("{}/any:{TAG}", big_token_registry.host),
        code: "FailedPrecondition",
        message: format!(
            "the answer of token server http://{}/big-token is larger than 1048576 bytes",
            tokens.host
        ),
    });
    let long = format!("{}/{}:{TAG}", stand_in.host, "a".repeat(300));
    all.push(Case {
        name: "an absurdly long reference",
        message: "more than 255".to_string(),
        reference: long,
        code: "InvalidArgument",
    });

    let mut failures = Vec::new();
    let mut may_stay: Vec<String> = Vec::new();
    for case in &all {
        if case.name == "an endless error answer" {
            may_stay.extend(kept.iter().cloned());
        }
        let out = berthd.crictl(&["pull", &case.reference])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want_code = format!("code = {}", case.code);
        if out.status.success() || !stderr.contains(&want_code) || !stderr.contains(&case.message) {
            failures.push(format!(
                "{}: want {want_code} and {:?}; crictl exited {} with {stderr}",
                case.name, case.message, out.status
            ));
            continue;
        }
        if let Err(e) = assert_nothing_left(&berthd, case.name, &may_stay) {
            failures.push(e.to_string());
        }
    }
    drop(token_server);
    ensure!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        berthd.log_tail()
    );

    // Still serving, and pulling.
    let reference = format!("{}/ok:{TAG}", stand_in.host);
    let out = berthd.crictl_ok(&["pull", &reference])?;
    ensure!(out.contains(ok.id().as_str()), "crictl pull printed {out}");
    berthd.crictl_ok(&["rmi", &reference])?;
    // And through a token server, whose token every request of the pull carries.
    let reference = format!("{}/ok:{TAG}", bearer_registry.host);
    let out = berthd.crictl_ok(&["pull", &reference])?;
    ensure!(out.contains(ok.id().as_str()), "crictl pull printed {out}");
    Ok(())
}
