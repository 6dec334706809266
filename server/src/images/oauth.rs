//! The OAuth2 refresh-token exchange of the registry token protocol, for identity tokens.
//!
//! An identity token (what `docker login` stores for registries that issue one) is a refresh
//! token: it is never sent to the registry itself. The registry's `/v2/` answers 401 with a
//! `WWW-Authenticate: Bearer realm=...,service=...` challenge; the token is POSTed to the realm
//! (`grant_type=refresh_token`, the service and a pull scope for the repository) and the
//! access token that comes back is what the pull sends as its bearer token, as containerd
//! does.

use std::time::Duration;

use super::limits::{BodyError, MAX_SMALL_BODY_BYTES, read_body};

/// Who berth says it is to token servers.
const CLIENT_ID: &str = "berth";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    #[error("{0}")]
    Http(String),
    #[error("the registry's challenge {0:?} names no bearer realm")]
    NoRealm(String),
    #[error("token server {realm} refused the identity token: {status}: {body}")]
    Refused {
        realm: String,
        status: u16,
        body: String,
    },
    #[error("token server {realm} answered without an access token")]
    NoToken { realm: String },
}

/// The access token for pulling `repository` from the registry API at `api` (`scheme://host`
/// with any path before `/v2/`), or `None` when the registry asks for no authentication. A
/// request that makes no progress for `timeout` fails, as does an answer past 1 MiB.
pub async fn exchange(
    api: &str,
    repository: &str,
    refresh_token: &str,
    timeout: Duration,
) -> Result<Option<String>, OAuthError> {
    let client = reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| OAuthError::Http(format!("building an HTTP client: {e}")))?;
    let ping = format!("{api}/v2/");
    let resp = tokio::time::timeout(timeout, client.get(&ping).send())
        .await
        .map_err(|_| {
            OAuthError::Http(format!("GET {ping}: no answer for {} s", timeout.as_secs()))
        })?
        .map_err(|e| OAuthError::Http(format!("GET {ping}: {e}")))?;
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let params = bearer_params(&challenge).ok_or_else(|| OAuthError::NoRealm(challenge.clone()))?;
    let realm = params
        .iter()
        .find(|(k, _)| k == "realm")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| OAuthError::NoRealm(challenge.clone()))?;
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("service", service),
        ("scope", &format!("repository:{repository}:pull")),
        ("client_id", CLIENT_ID),
    ]);
    let post = client
        .post(&realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send();
    let resp = tokio::time::timeout(timeout, post)
        .await
        .map_err(|_| {
            OAuthError::Http(format!(
                "POST {realm}: no answer for {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| OAuthError::Http(format!("POST {realm}: {e}")))?;
    let status = resp.status();
    let text = match read_body(resp, MAX_SMALL_BODY_BYTES, timeout).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(BodyError::TooLarge) => {
            return Err(OAuthError::Http(format!(
                "the answer of {realm} is larger than {MAX_SMALL_BODY_BYTES} bytes"
            )));
        }
        Err(BodyError::Stalled) => {
            return Err(OAuthError::Http(format!(
                "the answer of {realm} made no progress for {} s",
                timeout.as_secs()
            )));
        }
        Err(BodyError::Http(e)) => {
            return Err(OAuthError::Http(format!(
                "reading the answer of {realm}: {e}"
            )));
        }
    };
    if !status.is_success() {
        return Err(OAuthError::Refused {
            realm,
            status: status.as_u16(),
            body: text.chars().take(200).collect(),
        });
    }
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    ["access_token", "token"]
        .iter()
        .find_map(|k| doc[k].as_str().filter(|t| !t.is_empty()))
        .map(|t| Some(t.to_string()))
        .ok_or(OAuthError::NoToken { realm })
}

/// The parameters of a `Bearer` challenge (`Bearer realm="...",service="..."`).
pub(super) fn bearer_params(challenge: &str) -> Option<Vec<(String, String)>> {
    let rest = challenge.trim();
    let (scheme, rest) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        out.push((key.trim().to_ascii_lowercase(), value));
    }
    Some(out)
}

/// `application/x-www-form-urlencoded` of `pairs`.
fn form(pairs: &[(&str, &str)]) -> String {
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn challenges_parse_with_quotes_and_commas() {
        let p = bearer_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "registry.example".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert!(bearer_params(r#"Basic realm="x""#).is_none());
    }

    #[test]
    fn forms_are_url_encoded() {
        assert_eq!(
            form(&[("scope", "repository:a/b:pull"), ("t", "x y&z")]),
            "scope=repository%3Aa%2Fb%3Apull&t=x+y%26z"
        );
    }

    /// A registry and token server in one: `/v2/` challenges, `/token` wants the refresh
    /// token `good` and returns the access token `access-1`. Returns the base URL and the
    /// request bodies it saw.
    async fn token_server() -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let realm = format!("{base}/token");
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Read until the end of the headers and the announced body.
                loop {
                    n += sock.read(&mut buf[n..]).await.unwrap();
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if n >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if text.starts_with("GET /v2/") {
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"test-registry\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    let body = text
                        .split("\r\n\r\n")
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    seen.push(body.clone());
                    if body.contains("refresh_token=good") {
                        let json = r#"{"access_token":"access-1"}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                            json.len()
                        )
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nConnection: close\r\n\r\ninvalid_grant".to_string()
                    }
                };
                sock.write_all(reply.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
            seen
        });
        (base, handle)
    }

    #[tokio::test]
    async fn a_refresh_token_is_exchanged_for_an_access_token() {
        let (base, server) = token_server().await;
        let token = exchange(&base, "team/app", "good", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(token.as_deref(), Some("access-1"));
        let bodies = server.await.unwrap();
        let body = &bodies[0];
        for part in [
            "grant_type=refresh_token",
            "refresh_token=good",
            "service=test-registry",
            "scope=repository%3Ateam%2Fapp%3Apull",
            "client_id=berth",
        ] {
            assert!(body.contains(part), "{part} missing from {body}");
        }
    }

    #[tokio::test]
    async fn a_refused_refresh_token_says_so() {
        let (base, server) = token_server().await;
        let err = exchange(&base, "team/app", "stale", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OAuthError::Refused { status: 401, body, .. } if body == "invalid_grant"),
            "{err}"
        );
        server.await.unwrap();
    }
}
