//! https or plain HTTP: which one a registry on this machine speaks, and what to tell the user
//! when berth and a registry disagree about TLS.
//!
//! As containerd treats localhost, a registry whose host is `localhost`, an address in
//! 127.0.0.0/8 or `::1` needs no `--insecure-registry`: it is asked over https first and over
//! plain HTTP when https cannot connect (a plain-HTTP server answers a TLS handshake with an HTTP
//! error). The answer is kept per `host:port` for the daemon's lifetime, so pulls do not repeat a
//! failed handshake, and forgotten when a pull from that host fails, so a registry restarted with
//! the other protocol is asked again. Certificates are verified as for any registry: the
//! client that carries them also sends credentials to token servers and follows blob
//! redirects, which need not be on this machine.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use oci_client::errors::OciDistributionError;

use super::pull::error_chain;
use super::registry::{Endpoint, Scheme};

/// What TLS servers answer a plain-HTTP request with (Go's net/http, nginx).
const TLS_SERVER_ANSWERS: &[&str] = &[
    "HTTP request to an HTTPS server",
    "plain HTTP request was sent to HTTPS port",
];

/// Whether `host` (`name`, `name:port`, an IPv6 address bare or in brackets with a port) is this
/// machine's loopback: `localhost`, 127.0.0.0/8 or `::1`. Names are not resolved.
pub fn is_local_host(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok && inside.parse::<Ipv6Addr>().is_ok_and(is_loopback_v6);
    }
    if let Ok(ip) = host.parse::<Ipv6Addr>() {
        return is_loopback_v6(ip);
    }
    let name = match host.split_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_v6(ip: Ipv6Addr) -> bool {
    IpAddr::V6(ip).to_canonical().is_loopback()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

/// `host[:port]` of an endpoint host that may carry an API path (`host:port/path`).
pub fn authority(host: &str) -> &str {
    host.split_once('/')
        .map_or(host, |(authority, _)| authority)
}

/// berth and the registry disagree about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// berth started a TLS handshake and the registry answered something that is not TLS.
    PlainAnswerToTls,
    /// berth spoke plain HTTP and the registry answered as a TLS server does.
    TlsAnswerToPlain,
}

/// Recognises a failed request as a TLS mismatch: over https, rustls finding no TLS record in
/// the answer (`InvalidContentType`: an HTTP status line); over plain HTTP, a TLS server's 400
/// answer or a response that does not parse as HTTP (a TLS alert).
pub fn mismatch(e: &OciDistributionError, plain_http: bool) -> Option<Mismatch> {
    match e {
        OciDistributionError::ServerError {
            code: 400, message, ..
        } if plain_http && TLS_SERVER_ANSWERS.iter().any(|a| message.contains(a)) => {
            Some(Mismatch::TlsAnswerToPlain)
        }
        OciDistributionError::RequestError(e) => {
            let causes = causes(e);
            if plain_http {
                causes
                    .iter()
                    .any(|c| {
                        c.downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_parse)
                    })
                    .then_some(Mismatch::TlsAnswerToPlain)
            } else {
                causes
                    .iter()
                    .any(|c| {
                        matches!(
                            c.downcast_ref::<rustls::Error>(),
                            Some(rustls::Error::InvalidMessage(
                                rustls::InvalidMessage::InvalidContentType
                            ))
                        )
                    })
                    .then_some(Mismatch::PlainAnswerToTls)
            }
        }
        _ => None,
    }
}

/// `e` and its sources, with what an `io::Error` wraps (its `source()` skips it).
fn causes<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        out.push(err);
        // io::Errors nest (hyper-util wraps the TLS stream's).
        let mut wrapped = err;
        while let Some(inner) = wrapped
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            out.push(inner);
            wrapped = inner;
        }
        next = err.source();
    }
    out
}

/// What to say, and what to change, when `endpoint` met `m`.
pub fn mismatch_detail(m: Mismatch, endpoint: &Endpoint) -> String {
    let host = authority(&endpoint.host);
    let what = if endpoint.mirror {
        "mirror"
    } else {
        "registry"
    };
    match (m, endpoint.scheme) {
        (Mismatch::PlainAnswerToTls, Scheme::Local) => format!(
            "{what} {host} answered plain HTTP to a TLS handshake; pull again to have berth try \
             plain HTTP"
        ),
        (Mismatch::PlainAnswerToTls, _) if endpoint.mirror => format!(
            "{what} {host} answered plain HTTP to a TLS handshake; if it serves plain HTTP, \
             write its URL with http:// or list it with --insecure-registry {host}"
        ),
        (Mismatch::PlainAnswerToTls, _) => format!(
            "{what} {host} answered plain HTTP to a TLS handshake; if it serves plain HTTP, \
             list it with --insecure-registry {host}"
        ),
        (Mismatch::TlsAnswerToPlain, Scheme::Local) => format!(
            "{what} {host} speaks TLS, though it answered plain HTTP before; pull again to have \
             berth use https"
        ),
        (Mismatch::TlsAnswerToPlain, Scheme::HttpUrl) => {
            format!("{what} {host} speaks TLS but its URL says http://; write it with https://")
        }
        (Mismatch::TlsAnswerToPlain, _) => format!(
            "{what} {host} is listed with --insecure-registry but speaks TLS; remove it from \
             the insecure registries"
        ),
    }
}

/// Which registries on this machine answer plain HTTP, as far as berth has found out.
#[derive(Debug, Default)]
pub struct LocalSchemes {
    /// By `host:port`: whether the registry answers plain HTTP rather than TLS.
    known: Mutex<HashMap<String, bool>>,
    /// Trusted besides the system's roots (tests).
    extra_roots: Vec<reqwest::Certificate>,
}

impl LocalSchemes {
    #[cfg(test)]
    fn trusting(root: reqwest::Certificate) -> LocalSchemes {
        LocalSchemes {
            extra_roots: vec![root],
            ..LocalSchemes::default()
        }
    }

    /// Whether to reach the registry on this machine at `host` (which may carry an API path)
    /// over plain HTTP: as found before, else as found by asking it now. When neither protocol
    /// gets an answer, https, and nothing is remembered.
    pub async fn plain_http(&self, host: &str, timeout: Duration) -> bool {
        let key = authority(host);
        if let Some(&plain) = self.known.lock().ok().as_ref().and_then(|k| k.get(key)) {
            return plain;
        }
        let Some(plain) = self.probe(host, timeout).await else {
            return false;
        };
        tracing::info!(
            registry = key,
            scheme = if plain { "http" } else { "https" },
            "registry on this machine"
        );
        if let Ok(mut known) = self.known.lock() {
            known.insert(key.to_string(), plain);
        }
        plain
    }

    /// Forgets what was found about `host`: the next pull from it asks again.
    pub fn forget(&self, host: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.remove(authority(host));
        }
    }

    /// `GET /v2/` over https; when that cannot connect, over plain HTTP. Any HTTP answer counts
    /// (401 and 404 included), except a TLS server's complaint about plain HTTP.
    async fn probe(&self, host: &str, timeout: Duration) -> Option<bool> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout);
        if !self.extra_roots.is_empty() {
            builder = builder.tls_certs_merge(self.extra_roots.iter().cloned());
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(registry = host, error = %e, "cannot build an HTTP client to probe the registry");
                return None;
            }
        };
        let https = format!("https://{host}/v2/");
        match client.get(&https).send().await {
            Ok(_) => return Some(false),
            Err(e) if !e.is_connect() => return None,
            Err(e) => {
                tracing::info!(url = https, error = %error_chain(&e), "no TLS connection; trying plain HTTP")
            }
        }
        let resp = client.get(format!("http://{host}/v2/")).send().await.ok()?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST {
            let body = super::limits::read_body(resp, super::limits::MAX_SMALL_BODY_BYTES, timeout)
                .await
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            if TLS_SERVER_ANSWERS.iter().any(|a| body.contains(a)) {
                return None;
            }
        }
        Some(true)
    }
}

/// Servers on 127.0.0.1 for tests: one that answers every connection with fixed bytes, as a
/// plain-HTTP server answers a TLS handshake too, and an https one with the test certificate
/// in `testdata/` (signed by `testdata/ca.crt`, valid for localhost and 127.0.0.1 until 2126;
/// the CA's key was thrown away).
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    pub const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    pub const NOT_FOUND: &[u8] =
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    /// What Go's net/http (docker-registry) answers plain HTTP with on a TLS port.
    pub const GO_TLS_SERVER: &[u8] =
        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

    /// Stops serving when dropped.
    pub struct Server {
        pub addr: String,
        /// Connections accepted so far.
        pub connections: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        pub fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub fn test_ca() -> reqwest::Certificate {
        reqwest::Certificate::from_pem(include_bytes!("testdata/ca.crt")).unwrap()
    }

    /// Reads what the client sends first (a request head, or a TLS ClientHello), answers
    /// `answer` and closes.
    pub async fn plain_server(answer: &'static [u8]) -> Server {
        serve(move |conn| async move { respond(conn, answer).await }).await
    }

    /// https with the test certificate; answers `answer` to every request.
    pub async fn tls_server(answer: &'static [u8]) -> Server {
        let certs = CertificateDer::pem_slice_iter(include_bytes!("testdata/localhost.crt"))
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        serve(move |conn| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(tls) = acceptor.accept(conn).await {
                    respond(tls, answer).await;
                }
            }
        })
        .await
    }

    async fn serve<F, Fut>(handle: F) -> Server
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(conn));
            }
        });
        Server {
            addr,
            connections,
            task,
        }
    }

    async fn respond(mut conn: impl AsyncRead + AsyncWrite + Unpin, answer: &[u8]) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        // A request head ends with an empty line; a ClientHello is one read.
        while let Ok(n) = conn.read(&mut buf).await {
            seen.extend_from_slice(&buf[..n]);
            if n == 0 || seen.first() != Some(&b'G') || seen.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let _ = conn.write_all(answer).await;
        let _ = conn.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn local_hosts_are_localhost_127_and_loopback_v6() {
        for host in [
            "localhost",
            "localhost:5000",
            "LocalHost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "127.255.255.254",
            "::1",
            "[::1]",
            "[::1]:5000",
            "[0:0:0:0:0:0:0:1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "localhost.example",
            "localhost.example:5000",
            "127.example",
            "127.0.0.1.example",
            "my-localhost",
            "128.0.0.1:5000",
            "10.0.0.5:5000",
            "0.0.0.0",
            "127.1",
            "localhost:",
            "localhost:http",
            "localhost:99999",
            "127.0.0.1:5000:1",
            "[::1",
            "[::1]5000",
            "[::2]:5000",
            "::2",
            "[localhost]:5000",
            "registry.k8s.io",
            "",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
        assert_eq!(authority("127.0.0.1:5000/v2/cache"), "127.0.0.1:5000");
        assert_eq!(authority("localhost"), "localhost");
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_plain_http_registry_on_this_machine_is_found_once_and_asked_again_when_forgotten() {
        let server = plain_server(OK).await;
        let schemes = LocalSchemes::default();
        assert!(schemes.plain_http(&server.addr, WAIT).await);
        let asked = server.connections();
        assert_eq!(asked, 2, "one https attempt, one plain-HTTP request");
        assert!(
            schemes
                .plain_http(&format!("{}/v2/x", server.addr), WAIT)
                .await
        );
        assert_eq!(server.connections(), asked, "remembered per host:port");
        schemes.forget(&server.addr);
        assert!(schemes.plain_http(&server.addr, WAIT).await);
        assert_eq!(server.connections(), 2 * asked);
    }

    #[tokio::test]
    async fn an_https_registry_on_this_machine_stays_on_https() {
        let server = tls_server(OK).await;
        let schemes = LocalSchemes::trusting(test_ca());
        assert!(!schemes.plain_http(&server.addr, WAIT).await);
        assert_eq!(server.connections(), 1);
        assert!(!schemes.plain_http(&server.addr, WAIT).await);
        assert_eq!(server.connections(), 1, "remembered");
        // Untrusted, the certificate fails the handshake; plain HTTP gets no HTTP answer:
        // https it stays, and nothing is remembered.
        let untrusted = LocalSchemes::default();
        assert!(!untrusted.plain_http(&server.addr, WAIT).await);
        assert!(untrusted.known.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn nothing_listening_means_https_and_nothing_remembered() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let schemes = LocalSchemes::default();
        assert!(!schemes.plain_http(&addr, WAIT).await);
        assert!(schemes.known.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_tls_server_complaining_about_plain_http_is_not_taken_for_plain_http() {
        // Answers plain HTTP as Go's TLS server does.
        let server = plain_server(GO_TLS_SERVER).await;
        let schemes = LocalSchemes::default();
        assert!(!schemes.plain_http(&server.addr, WAIT).await);
        assert!(schemes.known.lock().unwrap().is_empty());
    }
}
