//! Where a repository is fetched from (mirrors, then the origin) and with which credentials.

use base64::Engine as _;

use super::ImageError;
use super::reference::{DOCKER_HUB, ImageRef};
use super::transport::is_local_host;
use crate::config::RegistryConfig;

/// Docker Hub's API host: `docker.io` names the registry, this host serves it.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// One place to fetch a repository from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host` or `host:port`, as requests address it, followed by the path under which the
    /// registry API (`/v2/`) is served when that is not the root (`host/path`).
    pub host: String,
    /// Prepended to the repository (`<prefix>/<repository>`): a mirror that serves another
    /// registry's images under a path of its own (a proxy-cache project).
    pub repo_prefix: String,
    /// How the protocol is chosen.
    pub scheme: Scheme,
    /// Plain http instead of https: as `scheme` says, or for [`Scheme::Local`] as found out.
    pub plain_http: bool,
    /// A mirror rather than the registry the reference names.
    pub mirror: bool,
}

/// Why an endpoint is reached over https or plain HTTP, which also says what to change when
/// the registry speaks the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// https only: every registry not on this machine and not listed as insecure.
    Https,
    /// Plain HTTP: the host is listed as insecure.
    Insecure,
    /// Plain HTTP: the mirror's URL says `http://`.
    HttpUrl,
    /// A registry on this machine: https or plain HTTP, whichever it answers (see
    /// [`super::transport`]).
    Local,
}

impl Scheme {
    fn of(config: &RegistryConfig, http_url: bool, hosts: &[&str]) -> Scheme {
        if http_url {
            Scheme::HttpUrl
        } else if hosts.iter().any(|h| is_insecure(config, h)) {
            Scheme::Insecure
        } else if hosts.iter().any(|h| is_local_host(h)) {
            Scheme::Local
        } else {
            Scheme::Https
        }
    }
}

impl Endpoint {
    pub fn url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// The endpoints to try for `reference`, in order: the configured mirrors of its domain, then
/// the domain itself unless a mirror is configured without fallback.
pub fn endpoints(config: &RegistryConfig, reference: &ImageRef) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let mirror = config.mirrors.get(&reference.domain);
    if let Some(mirror) = mirror {
        for url in &mirror.endpoints {
            let (http_url, rest) = match url.strip_prefix("http://") {
                Some(rest) => (true, rest),
                None => (false, url.strip_prefix("https://").unwrap_or(url)),
            };
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let path = path.trim_matches('/');
            // As containerd reads a mirror URL: `/v2/<prefix>` names the API root itself, so
            // the rest prefixes repositories; any other path is where `/v2/` lives.
            let (api_path, repo_prefix) = match path.strip_prefix("v2") {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    ("", rest.trim_start_matches('/'))
                }
                _ => (path, ""),
            };
            let scheme = Scheme::of(config, http_url, &[host]);
            out.push(Endpoint {
                host: if api_path.is_empty() {
                    host.to_string()
                } else {
                    format!("{host}/{api_path}")
                },
                repo_prefix: repo_prefix.to_string(),
                scheme,
                plain_http: matches!(scheme, Scheme::HttpUrl | Scheme::Insecure),
                mirror: true,
            });
        }
    }
    if mirror.is_none_or(|m| m.fallback_to_origin) {
        let host = if reference.domain == DOCKER_HUB {
            DOCKER_HUB_API.to_string()
        } else {
            reference.domain.clone()
        };
        let scheme = Scheme::of(config, false, &[&reference.domain, &host]);
        out.push(Endpoint {
            scheme,
            plain_http: scheme == Scheme::Insecure,
            host,
            repo_prefix: String::new(),
            mirror: false,
        });
    }
    out
}

fn is_insecure(config: &RegistryConfig, host: &str) -> bool {
    config.insecure.iter().any(|h| h == host)
}

/// Credentials for one pull. Its `Debug` never shows a secret.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token used as a bearer token as is.
    Bearer(String),
    /// An identity token: an OAuth2 refresh token, exchanged at the registry's token
    /// endpoint for an access token before each pull (see [`oauth`]).
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// From the CRI `AuthConfig` fields: a registry token wins, then an identity token (an
    /// OAuth2 refresh token), then username and password, then `auth` (base64 of
    /// `user:password`).
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Credentials, ImageError> {
        if !registry_token.is_empty() {
            return Ok(Credentials::Bearer(registry_token.to_string()));
        }
        if !identity_token.is_empty() {
            return Ok(Credentials::IdentityToken(identity_token.to_string()));
        }
        if !username.is_empty() {
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        if !auth.is_empty() {
            let bad = || ImageError::InvalidArgument("auth is not base64 of user:password".into());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            });
        }
        Ok(Credentials::Anonymous)
    }

    pub fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        use oci_client::secrets::RegistryAuth;
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
            // Exchanged before the pull; as is it would be refused (see `oauth`).
            Credentials::IdentityToken(_) => RegistryAuth::Anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Mirror;

    fn config(fallback: bool) -> RegistryConfig {
        let mut mirrors = BTreeMap::new();
        mirrors.insert(
            "registry.k8s.io".to_string(),
            Mirror {
                endpoints: vec![
                    "http://127.0.0.1:5000".into(),
                    "https://mirror.example/".into(),
                ],
                fallback_to_origin: fallback,
            },
        );
        RegistryConfig {
            insecure: vec!["10.0.0.1:5000".into()],
            mirrors,
            ..RegistryConfig::default()
        }
    }

    #[test]
    fn mirrors_come_first_then_the_origin() {
        let r = ImageRef::parse("registry.k8s.io/e2e-test-images/busybox:1.29-2").unwrap();
        let eps = endpoints(&config(true), &r);
        let urls: Vec<_> = eps.iter().map(Endpoint::url).collect();
        assert_eq!(
            urls,
            [
                "http://127.0.0.1:5000",
                "https://mirror.example",
                "https://registry.k8s.io"
            ]
        );
        assert!(eps[0].mirror && eps[1].mirror && !eps[2].mirror);
        let eps = endpoints(&config(false), &r);
        assert_eq!(eps.len(), 2, "no fallback to the origin");
    }

    #[test]
    fn insecure_hosts_use_http_and_docker_hub_its_api_host() {
        let r = ImageRef::parse("10.0.0.1:5000/x").unwrap();
        assert_eq!(
            endpoints(&config(true), &r)[0].url(),
            "http://10.0.0.1:5000"
        );
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(
            endpoints(&config(true), &r),
            [Endpoint {
                host: "registry-1.docker.io".into(),
                repo_prefix: String::new(),
                scheme: Scheme::Https,
                plain_http: false,
                mirror: false
            }]
        );
    }

    #[test]
    fn registries_on_this_machine_try_https_then_http_unless_listed_or_written_http() {
        let mut c = config(true);
        c.insecure.push("127.0.0.1:5001".into());
        c.mirrors.get_mut("registry.k8s.io").unwrap().endpoints = vec![
            "https://localhost:5000".into(),
            "http://localhost:5000".into(),
            "https://[::1]:5000/v2/cache".into(),
            "https://127.0.0.1:5001".into(),
            "https://localhost.example:5000".into(),
        ];
        let r = ImageRef::parse("registry.k8s.io/pause:3.10").unwrap();
        let schemes: Vec<(Scheme, bool)> = endpoints(&c, &r)
            .iter()
            .map(|e| (e.scheme, e.plain_http))
            .collect();
        assert_eq!(
            schemes,
            [
                (Scheme::Local, false),
                (Scheme::HttpUrl, true),
                (Scheme::Local, false),
                (Scheme::Insecure, true),
                (Scheme::Https, false),
                (Scheme::Https, false),
            ]
        );
        for (reference, scheme) in [
            ("127.0.0.1:5000/x", Scheme::Local),
            ("localhost:5000/x", Scheme::Local),
            ("localhost/x", Scheme::Local),
            ("127.0.0.1:5001/x", Scheme::Insecure),
            ("10.0.0.1:5000/x", Scheme::Insecure),
            ("127.example/x", Scheme::Https),
        ] {
            let r = ImageRef::parse(reference).unwrap();
            let eps = endpoints(&c, &r);
            assert_eq!(eps.len(), 1, "{reference}");
            assert_eq!(eps[0].scheme, scheme, "{reference}");
            assert_eq!(eps[0].plain_http, scheme == Scheme::Insecure, "{reference}");
        }
    }

    #[test]
    fn mirror_paths_read_as_containerd_reads_them() {
        let mut c = config(false);
        c.mirrors.get_mut("registry.k8s.io").unwrap().endpoints = vec![
            "http://127.0.0.1:5000/v2/k8s-cache/".into(),
            "https://mirror.example/artifactory/api/docker/remote".into(),
            "https://mirror.example/v2".into(),
            "https://mirror.example/v2x".into(),
        ];
        let r = ImageRef::parse("registry.k8s.io/pause:3.10").unwrap();
        let eps: Vec<(String, String)> = endpoints(&c, &r)
            .into_iter()
            .map(|e| (e.host, e.repo_prefix))
            .collect();
        let want = [
            ("127.0.0.1:5000", "k8s-cache"),
            ("mirror.example/artifactory/api/docker/remote", ""),
            ("mirror.example", ""),
            ("mirror.example/v2x", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .collect();
        assert_eq!(eps, want);
    }

    #[test]
    fn credentials_from_every_auth_config_form() {
        assert_eq!(
            Credentials::from_cri("", "", "", "", "").unwrap(),
            Credentials::Anonymous
        );
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "p:q".into(),
        };
        assert_eq!(
            Credentials::from_cri("u", "p:q", "", "", "").unwrap(),
            basic
        );
        assert_eq!(
            Credentials::from_cri("", "", "dTpwOnE=", "", "").unwrap(),
            basic
        );
        assert_eq!(
            Credentials::from_cri("u", "p", "", "", "tok").unwrap(),
            Credentials::Bearer("tok".into())
        );
        assert_eq!(
            Credentials::from_cri("", "", "", "id", "").unwrap(),
            Credentials::IdentityToken("id".into())
        );
        let shown = format!("{:?}", Credentials::IdentityToken("secret-id".into()));
        assert!(!shown.contains("secret-id"), "{shown}");
        assert!(Credentials::from_cri("", "", "!!", "", "").is_err());
        let shown = format!("{basic:?}");
        assert!(!shown.contains("p:q"), "{shown}");
    }
}
