//! Pulling an image: endpoints in order, the manifest for this platform, blobs into the content
//! store, layers checked against the config's diff ids, then the record.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_store::ImageRecord;
use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::token_cache::RegistryToken;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::content::{ContentStore, Ingest, hex, sha256_digest};
use super::gc::Lease;
use super::layers::{StagedLayer, import_chain};
use super::limits::{
    BodyError, Budget, CountingReader, LayerLimits, MAX_CONFIG_BYTES, MAX_LAYERS,
    MAX_MANIFEST_BYTES, MAX_SMALL_BODY_BYTES, read_body,
};
use super::platform::Platform;
use super::reference::ImageRef;
use super::registry::{self, Credentials, Endpoint, Scheme};
use super::transport;
use super::{ImageError, Images};

const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED_MANIFESTS: &[&str] = &[
    MEDIA_OCI_INDEX,
    MEDIA_DOCKER_LIST,
    MEDIA_OCI_MANIFEST,
    MEDIA_DOCKER_MANIFEST,
];
/// Layers downloaded at once per pull.
const PARALLEL_LAYERS: usize = 3;
/// How often a layer's progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    media_type: String,
    pub(super) digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

/// An image manifest or an index, told apart by which fields are present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ManifestDoc {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    pub(super) config: Option<Descriptor>,
    #[serde(default)]
    pub(super) layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub(super) manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ConfigDoc {
    pub(super) rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
pub(super) struct RootFs {
    pub(super) diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

fn compression(media_type: &str, blob: &str) -> Result<Compression, ImageError> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Compression::Zstd),
        other => Err(ImageError::Unsupported(format!(
            "layer {blob} has unsupported media type {other:?}"
        ))),
    }
}

/// What one endpoint attempt needs.
struct Ctx {
    reference: ImageRef,
    endpoint: Endpoint,
    /// The repository at this endpoint (a mirror's host and prefix applied).
    oref: Reference,
    auth: RegistryAuth,
    timeout: Duration,
    layer_limits: LayerLimits,
    http: reqwest::Client,
    /// What every request carries, from [`Ctx::authorize`]; renewed when the registry
    /// answers 401 (a token that expired during a long pull).
    authorization: Mutex<Option<reqwest::header::HeaderValue>>,
}

impl Ctx {
    fn stalled(&self, what: &str) -> ImageError {
        ImageError::Stalled {
            reference: self.reference.to_string(),
            what: what.to_string(),
            secs: self.timeout.as_secs(),
        }
    }

    fn map_err(&self, e: OciDistributionError) -> ImageError {
        map_oci_error(e, &self.reference, &self.endpoint)
    }

    /// Asks the registry how to authenticate: a token from its token server, basic
    /// credentials, or nothing. Once per endpoint, and again when a request is refused.
    async fn authorize(&self) -> Result<(), ImageError> {
        let value = match &self.auth {
            RegistryAuth::Bearer(token) => Some(format!("Bearer {token}")),
            _ => self.answer_challenge().await?,
        };
        let value = value
            .map(|v| {
                let mut v = reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
                    ImageError::AuthFailed {
                        reference: self.reference.to_string(),
                        registry: self.endpoint.url(),
                        detail: "the token server answered a token that is no header value".into(),
                    }
                })?;
                v.set_sensitive(true);
                Ok::<_, ImageError>(v)
            })
            .transpose()?;
        if let Ok(mut authorization) = self.authorization.lock() {
            *authorization = value;
        }
        Ok(())
    }

    fn authorization(&self) -> Option<reqwest::header::HeaderValue> {
        self.authorization.lock().ok().and_then(|a| a.clone())
    }

    /// `<scheme>://<registry>/v2/<repository>/<kind>/<locator>`, as the endpoint serves it.
    fn url(&self, kind: &str, locator: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{locator}{}",
            if self.endpoint.plain_http {
                "http"
            } else {
                "https"
            },
            self.oref.resolve_registry(),
            self.oref.repository(),
            self.oref
                .namespace()
                .map(|ns| format!("?ns={ns}"))
                .unwrap_or_default(),
        )
    }

    /// GETs `url` with the pull's authorization, the answer's headers within the progress
    /// timeout. A 401 gets one new authorization and one retry; an error answer is read
    /// within limits and reported as the registry meant it.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let mut renewed = false;
        loop {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(reqwest::header::ACCEPT, accept);
            }
            if let Some(authorization) = self.authorization() {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            let resp = tokio::time::timeout(self.timeout, request.send())
                .await
                .map_err(|_| self.stalled(what))?
                .map_err(|e| self.map_err(OciDistributionError::RequestError(e)))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                self.authorize().await?;
                continue;
            }
            let body = read_body(resp, MAX_SMALL_BODY_BYTES, self.timeout)
                .await
                .unwrap_or_default();
            return Err(self.map_err(status_error(status, &body, url)));
        }
    }

    /// The `Authorization` the registry's `/v2/` challenge asks for, as docker and containerd
    /// answer it, with the token server's answer read within the limits.
    async fn answer_challenge(&self) -> Result<Option<String>, ImageError> {
        const WHAT: &str = "the registry's authentication challenge or token";
        let scheme = if self.endpoint.plain_http {
            "http"
        } else {
            "https"
        };
        let ping = format!("{scheme}://{}/v2/", self.oref.resolve_registry());
        let resp = tokio::time::timeout(self.timeout, self.http.get(&ping).send())
            .await
            .map_err(|_| self.stalled(WHAT))?
            .map_err(|e| self.map_err(OciDistributionError::RequestError(e)))?;
        let Some(header) = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .cloned()
        else {
            return Ok(None);
        };
        drop(resp);
        let params = header
            .to_str()
            .ok()
            .and_then(super::oauth::bearer_params)
            .unwrap_or_default();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(realm) = param("realm") else {
            return Ok(match &self.auth {
                RegistryAuth::Basic(user, password) => Some(basic(user, password)),
                _ => None,
            });
        };
        let scope = format!("repository:{}:pull", self.oref.repository());
        let mut request = self.http.get(realm).query(&[("scope", scope.as_str())]);
        if let Some(service) = param("service") {
            request = request.query(&[("service", service)]);
        }
        if let RegistryAuth::Basic(user, password) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let resp = tokio::time::timeout(self.timeout, request.send())
            .await
            .map_err(|_| self.stalled(WHAT))?
            .map_err(|e| self.map_err(OciDistributionError::RequestError(e)))?;
        let status = resp.status();
        let body = match read_body(resp, MAX_SMALL_BODY_BYTES, self.timeout).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Err(ImageError::Limit(format!(
                    "pulling {}: the answer of token server {} is larger than \
                     {MAX_SMALL_BODY_BYTES} bytes",
                    self.reference, realm
                )));
            }
            Err(BodyError::Stalled) => return Err(self.stalled(WHAT)),
            Err(BodyError::Http(e)) => {
                return Err(self.map_err(OciDistributionError::RequestError(e)));
            }
        };
        if status != reqwest::StatusCode::OK {
            return Err(self.map_err(OciDistributionError::AuthenticationFailure(
                String::from_utf8_lossy(&body).chars().take(1000).collect(),
            )));
        }
        let token: RegistryToken = serde_json::from_slice(&body).map_err(|e| {
            self.map_err(OciDistributionError::RegistryTokenDecodeError(
                e.to_string(),
            ))
        })?;
        Ok(Some(token.bearer_token()))
    }

    /// Fetches a manifest (by the reference, or by `digest`) with its digest, reading at most
    /// [`MAX_MANIFEST_BYTES`] of it.
    async fn manifest(&self, digest: Option<&str>) -> Result<(Vec<u8>, String), ImageError> {
        let oref = match digest {
            Some(d) => self.oref.clone_with_digest(d.to_string()),
            None => self.oref.clone(),
        };
        let what = format!("the manifest {}", digest.unwrap_or("of the reference"));
        let locator = oref.digest().or(oref.tag()).unwrap_or("latest");
        let resp = self
            .get(
                &self.url("manifests", locator),
                Some(&ACCEPTED_MANIFESTS.join(", ")),
                &what,
            )
            .await?;
        let announced = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_string);
        let body = match read_body(resp, MAX_MANIFEST_BYTES, self.timeout).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Err(ImageError::Limit(format!(
                    "pulling {}: {what} is larger than {MAX_MANIFEST_BYTES} bytes",
                    self.reference
                )));
            }
            Err(BodyError::Stalled) => return Err(self.stalled(&what)),
            Err(BodyError::Http(e)) => {
                return Err(self.map_err(OciDistributionError::RequestError(e)));
            }
        };
        let actual = sha256_digest(&body);
        for expected in digest.map(str::to_string).into_iter().chain(announced) {
            if expected != actual {
                return Err(ImageError::DigestMismatch {
                    blob: expected,
                    actual,
                });
            }
        }
        Ok((body, actual))
    }

    /// Fetches the image config, at most [`MAX_CONFIG_BYTES`] and never more than its
    /// descriptor says.
    async fn config_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        if desc.size > MAX_CONFIG_BYTES {
            return Err(ImageError::Limit(format!(
                "pulling {}: image config {} is {} bytes, more than {MAX_CONFIG_BYTES}",
                self.reference, desc.digest, desc.size
            )));
        }
        let what = format!("blob {}", desc.digest);
        let resp = self
            .get(&self.url("blobs", &desc.digest), None, &what)
            .await?;
        // The digest is checked as the config enters the content store.
        match read_body(resp, desc.size, self.timeout).await {
            Ok(body) => Ok(body),
            Err(BodyError::TooLarge) => Err(self.longer_than_descriptor("image config", desc)),
            Err(BodyError::Stalled) => Err(self.stalled(&what)),
            Err(BodyError::Http(e)) => Err(self.map_err(OciDistributionError::RequestError(e))),
        }
    }

    fn longer_than_descriptor(&self, what: &str, desc: &Descriptor) -> ImageError {
        ImageError::Limit(format!(
            "pulling {}: the registry sent more of {what} {} than the {} bytes its descriptor \
             gives",
            self.reference, desc.digest, desc.size
        ))
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// What a registry's error answer means, as the registry client reports it.
fn status_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    let url = url.to_string();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url };
    }
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError { envelope, url };
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url,
        message: String::from_utf8_lossy(body).chars().take(1000).collect(),
    }
}

fn map_oci_error(e: OciDistributionError, r: &ImageRef, ep: &Endpoint) -> ImageError {
    let registry = if ep.host == r.domain {
        r.domain.clone()
    } else {
        format!("{} (for {})", ep.url(), r.domain)
    };
    let not_found = |detail: String| ImageError::NotFound {
        reference: r.to_string(),
        detail: format!("{detail} (registry {registry})"),
    };
    let auth = |detail: String| ImageError::AuthFailed {
        reference: r.to_string(),
        registry: registry.clone(),
        detail,
    };
    match e {
        OciDistributionError::AuthenticationFailure(d) => auth(d),
        OciDistributionError::UnauthorizedError { url } => {
            auth(format!("{url} answered 401 Unauthorized"))
        }
        OciDistributionError::ImageManifestNotFoundError(d) => not_found(d),
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = format!("{url}: {envelope}");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(detail)
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                auth(detail)
            } else {
                ImageError::Registry {
                    reference: r.to_string(),
                    registry,
                    detail,
                }
            }
        }
        OciDistributionError::ServerError { code: 404, url, .. } => {
            not_found(format!("{url} answered 404"))
        }
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => auth(format!("{url}: {message}")),
        other => ImageError::Registry {
            reference: r.to_string(),
            detail: match transport::mismatch(&other, ep.plain_http) {
                Some(m) => transport::mismatch_detail(m, ep),
                None => error_chain(&other),
            },
            registry,
        },
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl Images {
    /// Tries every endpoint of the reference's registry in order; a failing mirror hands over
    /// to the next endpoint, the last failure is reported.
    pub(super) async fn pull_uncached(
        &self,
        r: ImageRef,
        credentials: Credentials,
    ) -> Result<String, ImageError> {
        let started = Instant::now();
        let mut last = None;
        // Given back (dropped) only after the image record is committed: see gc.rs.
        let lease = self.leases.begin();
        for mut endpoint in registry::endpoints(&self.registry, &r) {
            let local = endpoint.scheme == Scheme::Local;
            if local {
                endpoint.plain_http = self
                    .local_schemes
                    .plain_http(&endpoint.host, self.progress_timeout)
                    .await;
            }
            let is_mirror = endpoint.mirror;
            let url = endpoint.url();
            let host = endpoint.host.clone();
            let pulled = self.pull_from(&r, endpoint, &credentials, &lease).await;
            if local && matches!(pulled, Err(ImageError::Registry { .. })) {
                // The registry may have been restarted speaking the other protocol.
                self.local_schemes.forget(&host);
            }
            match pulled {
                Ok(id) => {
                    tracing::info!(image = %r, id, from = url, elapsed_ms = started.elapsed().as_millis() as u64, "pulled image");
                    return Ok(id);
                }
                Err(e) if is_mirror => {
                    tracing::warn!(image = %r, mirror = url, error = %e, "mirror failed; trying the next endpoint");
                    last = Some(e);
                }
                // A mirror's "not found" says more than an unreachable origin.
                Err(ImageError::Registry { detail, .. })
                    if matches!(last, Some(ImageError::NotFound { .. })) =>
                {
                    if let Some(ImageError::NotFound {
                        reference,
                        detail: found,
                    }) = last
                    {
                        return Err(ImageError::NotFound {
                            reference,
                            detail: format!("{found}; {url}: {detail}"),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ImageError::NotFound {
            reference: r.to_string(),
            detail: "no endpoint to pull from".into(),
        }))
    }

    async fn pull_from(
        &self,
        r: &ImageRef,
        endpoint: Endpoint,
        credentials: &Credentials,
        lease: &Lease<'_>,
    ) -> Result<String, ImageError> {
        let path = if endpoint.repo_prefix.is_empty() {
            r.path.clone()
        } else {
            format!("{}/{}", endpoint.repo_prefix, r.path)
        };
        let mut oref = match (&r.digest, &r.tag) {
            (Some(d), _) => Reference::with_digest(r.domain.clone(), path, d.clone()),
            (None, tag) => Reference::with_tag(
                r.domain.clone(),
                path,
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        if endpoint.host != r.domain {
            oref.set_mirror_registry(endpoint.host.clone());
        }
        tracing::info!(image = %r, endpoint = endpoint.url(), "pulling image");
        let auth = match credentials {
            Credentials::IdentityToken(refresh) => {
                let api = endpoint.url();
                match super::oauth::exchange(
                    &api,
                    oref.repository(),
                    refresh,
                    self.progress_timeout,
                )
                .await
                {
                    Ok(Some(access)) => oci_client::secrets::RegistryAuth::Bearer(access),
                    Ok(None) => oci_client::secrets::RegistryAuth::Anonymous,
                    Err(e) => {
                        return Err(ImageError::AuthFailed {
                            reference: r.to_string(),
                            registry: api,
                            detail: e.to_string(),
                        });
                    }
                }
            }
            other => other.to_oci(),
        };
        let ctx = Ctx {
            reference: r.clone(),
            endpoint,
            oref,
            auth,
            timeout: self.progress_timeout,
            layer_limits: self.layer_limits,
            http: self.http()?,
            authorization: Mutex::new(None),
        };
        ctx.authorize().await?;

        let (top, top_digest) = ctx.manifest(None).await?;
        if let Some(d) = &r.digest
            && d != &top_digest
        {
            return Err(ImageError::DigestMismatch {
                blob: d.clone(),
                actual: top_digest,
            });
        }
        let doc = parse_manifest(&top, &top_digest)?;
        lease.add([&top_digest]);
        let (manifest, manifest_digest) = if let Some(entries) = &doc.manifests {
            self.content.write_all(&top_digest, &top)?;
            let here = Platform::current();
            let entry = entries
                .iter()
                .find(|e| e.platform.as_ref().is_some_and(|p| here.accepts(p)))
                .ok_or_else(|| ImageError::NotFound {
                    reference: r.to_string(),
                    detail: format!("index {top_digest} has no manifest for platform {here}"),
                })?;
            lease.add([&entry.digest]);
            if entry.size > MAX_MANIFEST_BYTES {
                return Err(ImageError::Limit(format!(
                    "pulling {r}: manifest {} in index {top_digest} is {} bytes, more than \
                     {MAX_MANIFEST_BYTES}",
                    entry.digest, entry.size
                )));
            }
            let child = if self.content.contains(&entry.digest) {
                self.content.read(&entry.digest)?
            } else {
                let (child, digest) = ctx.manifest(Some(&entry.digest)).await?;
                if digest != entry.digest {
                    return Err(ImageError::DigestMismatch {
                        blob: entry.digest.clone(),
                        actual: digest,
                    });
                }
                self.content.write_all(&entry.digest, &child)?;
                child
            };
            let doc = parse_manifest(&child, &entry.digest)?;
            if doc.manifests.is_some() {
                return Err(ImageError::Malformed(format!(
                    "manifest {} in index {top_digest} is itself an index",
                    entry.digest
                )));
            }
            (doc, entry.digest.clone())
        } else {
            self.content.write_all(&top_digest, &top)?;
            (doc, top_digest.clone())
        };
        let (Some(config_desc), Some(layers)) = (&manifest.config, &manifest.layers) else {
            return Err(ImageError::Malformed(format!(
                "manifest {manifest_digest} has no config or no layers"
            )));
        };
        if layers.len() > MAX_LAYERS {
            return Err(ImageError::Limit(format!(
                "pulling {r}: manifest {manifest_digest} has {} layers, more than the \
                 {MAX_LAYERS} overlayfs can stack",
                layers.len()
            )));
        }
        for l in layers {
            compression(&l.media_type, &l.digest)?;
        }
        lease.add(std::iter::once(&config_desc.digest).chain(layers.iter().map(|l| &l.digest)));

        let config = if self.content.contains(&config_desc.digest) {
            self.content.read(&config_desc.digest)?
        } else {
            let data = ctx.config_blob(config_desc).await?;
            self.content.write_all(&config_desc.digest, &data)?;
            data
        };
        let config_doc: ConfigDoc = serde_json::from_slice(&config).map_err(|e| {
            ImageError::Malformed(format!("image config {}: {e}", config_desc.digest))
        })?;
        if config_doc.rootfs.diff_ids.len() != layers.len() {
            return Err(ImageError::Malformed(format!(
                "manifest {manifest_digest} has {} layers but config {} lists {} diff ids",
                layers.len(),
                config_desc.digest,
                config_doc.rootfs.diff_ids.len()
            )));
        }

        let ctx = Arc::new(ctx);
        let diff_ids = &config_doc.rootfs.diff_ids;
        let chain = super::chain_ids(diff_ids);
        lease.add(&chain);
        // With a layer store, a layer is needed when its snapshot is missing (its blob may be
        // here already); without one, when its blob is.
        let needed: Vec<usize> = (0..layers.len())
            .filter(|&i| match &self.layers {
                Some(store) => !store.exists(&chain[i]),
                None => !self.content.contains(&layers[i].digest),
            })
            .collect();
        if !needed.is_empty() {
            tracing::info!(image = %r, layers = layers.len(), needed = needed.len(), "fetching layers");
        }
        let mut jobs = Vec::with_capacity(needed.len());
        for &i in &needed {
            let staged = match &self.layers {
                Some(store) => Some(store.stage()?),
                None => None,
            };
            let job = Layer {
                desc: layers[i].clone(),
                diff_id: diff_ids[i].clone(),
                staged,
            };
            let ctx = Arc::clone(&ctx);
            let content = Arc::clone(&self.content);
            jobs.push(
                async move { Ok::<_, ImageError>((i, unpack_layer(ctx, content, job).await?)) },
            );
        }
        let mut done: Vec<(usize, Option<Box<dyn StagedLayer>>)> = futures_util::stream::iter(jobs)
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect()
            .await?;
        if self.layers.is_some() {
            done.sort_by_key(|(i, _)| *i);
            let mut staged: Vec<Option<Box<dyn StagedLayer>>> =
                (0..layers.len()).map(|_| None).collect();
            for (i, layer) in done {
                staged[i] = layer;
            }
            let diff_ids = diff_ids.clone();
            tokio::task::spawn_blocking(move || import_chain(&chain, &diff_ids, staged))
                .await
                .map_err(|e| ImageError::Io(format!("importing layers: {e}")))??;
        }

        let size = layers
            .iter()
            .fold(config_desc.size, |sum, l| sum.saturating_add(l.size));
        let id = config_desc.digest.clone();
        self.commit_record(r, &id, &r.with_digest(&top_digest), size, config)?;
        Ok(id)
    }

    /// The registry client, shared by pulls for its connections.
    fn http(&self) -> Result<reqwest::Client, ImageError> {
        let build = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(15))
                // Past berth's own no-progress timeout, which gives the clearer error.
                .read_timeout(self.progress_timeout + Duration::from_secs(5))
                .build()
                .map_err(|e| ImageError::Io(format!("building an HTTP client: {e}")))
        };
        let Ok(mut clients) = self.http.lock() else {
            return build();
        };
        if let Some(client) = &*clients {
            return Ok(client.clone());
        }
        let client = build()?;
        *clients = Some(client.clone());
        Ok(client)
    }

    /// Writes the record of a complete image: adds the tag and repo digest, moving the tag
    /// from any image that had it.
    fn commit_record(
        &self,
        r: &ImageRef,
        id: &str,
        repo_digest: &str,
        size: u64,
        config: Vec<u8>,
    ) -> Result<(), ImageError> {
        let _guard = self
            .records
            .lock()
            .map_err(|_| ImageError::Io("record lock poisoned".into()))?;
        let images = self.store.list::<ImageRecord>()?;
        let tag = r.tagged();
        let mut batch = self.store.batch();
        let mut record = images
            .iter()
            .find(|i| i.id == id)
            .cloned()
            .unwrap_or_else(|| ImageRecord {
                id: id.to_string(),
                ..ImageRecord::default()
            });
        if let Some(tag) = &tag {
            for other in images
                .iter()
                .filter(|i| i.id != id && i.repo_tags.contains(tag))
            {
                let mut other = other.clone();
                other.repo_tags.retain(|t| t != tag);
                tracing::info!(tag, from = other.id, to = id, "moving tag");
                batch.put(&other);
            }
            if !record.repo_tags.contains(tag) {
                record.repo_tags.push(tag.clone());
            }
        }
        if !record.repo_digests.iter().any(|d| d == repo_digest) {
            record.repo_digests.push(repo_digest.to_string());
        }
        record.size = size;
        record.config = config;
        batch.put(&record);
        self.store.write(batch)?;
        Ok(())
    }
}

pub(super) fn parse_manifest(body: &[u8], digest: &str) -> Result<ManifestDoc, ImageError> {
    let doc: ManifestDoc = serde_json::from_slice(body)
        .map_err(|e| ImageError::Malformed(format!("manifest {digest}: {e}")))?;
    if doc.schema_version != 2 {
        return Err(ImageError::Unsupported(format!(
            "manifest {digest} has schema version {} (only 2 is supported)",
            doc.schema_version
        )));
    }
    if let Some(mt) = &doc.media_type
        && !ACCEPTED_MANIFESTS.contains(&mt.as_str())
    {
        return Err(ImageError::Unsupported(format!(
            "manifest {digest} has unsupported media type {mt:?}"
        )));
    }
    Ok(doc)
}

/// One layer to fetch or unpack.
struct Layer {
    desc: Descriptor,
    diff_id: String,
    staged: Option<Box<dyn StagedLayer>>,
}

/// Brings one layer in: from the content store when its blob is here, else streamed from the
/// registry into the content store. Either way a blocking task decompresses it, checks its
/// diff id and applies it to its staging directory in the same pass.
async fn unpack_layer(
    ctx: Arc<Ctx>,
    content: Arc<ContentStore>,
    layer: Layer,
) -> Result<Option<Box<dyn StagedLayer>>, ImageError> {
    let started = Instant::now();
    let Layer {
        desc,
        diff_id,
        staged,
    } = layer;
    let digest = desc.digest.clone();
    let compression = compression(&desc.media_type, &digest)?;
    let limits = ctx.layer_limits;
    // A blob at least as long as the cap cannot decompress below it (gzip and zstd add a few
    // bytes to incompressible data, no more).
    if desc.size > limits.max_bytes {
        return Err(ImageError::Limit(format!(
            "pulling {}: layer {digest} is {} bytes compressed, more than the {} bytes any \
             layer may decompress to (registry.max_layer_uncompressed_bytes)",
            ctx.reference, desc.size, limits.max_bytes
        )));
    }
    let budget = limits.budget(desc.size);
    if content.contains(&digest) {
        let path = content.path(&digest)?;
        let staged = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| ImageError::Io(format!("{}: {e}", path.display())))?;
            let reader = std::io::BufReader::with_capacity(256 * 1024, file);
            consume_layer(
                reader,
                None,
                compression,
                &digest,
                &diff_id,
                &budget,
                staged,
            )
        })
        .await
        .map_err(|e| ImageError::Io(format!("layer {}: {e}", desc.digest)))??;
        tracing::info!(
            layer = desc.digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "unpacked layer from the content store"
        );
        return Ok(staged);
    }
    let ingest = content.writer(&digest)?;
    tracing::info!(image = %ctx.reference, layer = digest, size = desc.size, "pulling layer");

    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let consumer = {
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            consume_layer(
                ChannelReader::new(rx),
                Some(ingest),
                compression,
                &digest,
                &diff_id,
                &budget,
                staged,
            )
        })
    };

    let network = async {
        let mut resp = ctx
            .get(&ctx.url("blobs", &digest), None, &format!("layer {digest}"))
            .await?;
        if resp.content_length().is_some_and(|n| n > desc.size) {
            return Err(ctx.longer_than_descriptor("layer", &desc));
        }
        let mut received = 0u64;
        let mut last_log = Instant::now();
        loop {
            let next = tokio::time::timeout(ctx.timeout, resp.chunk())
                .await
                .map_err(|_| ctx.stalled(&format!("layer {digest} after {received} bytes")))?;
            let chunk = next.map_err(|e| ImageError::Registry {
                reference: ctx.reference.to_string(),
                registry: ctx.endpoint.url(),
                detail: format!("layer {digest}: {}", error_chain(&e)),
            })?;
            let Some(chunk) = chunk else { break };
            received += chunk.len() as u64;
            // An endless body ends here, not in the content store.
            if received > desc.size {
                return Err(ctx.longer_than_descriptor("layer", &desc));
            }
            if tx.send(Ok(chunk)).await.is_err() {
                // The consumer stopped early; its error says why.
                break;
            }
            if last_log.elapsed() >= PROGRESS_EVERY {
                last_log = Instant::now();
                tracing::info!(layer = digest, received, size = desc.size, "layer progress");
            }
        }
        Ok::<u64, ImageError>(received)
    };
    let received = network.await;
    if received.is_err() {
        let _ = tx.send(Err(std::io::Error::other("download failed"))).await;
    }
    drop(tx);
    let consumed = consumer
        .await
        .map_err(|e| ImageError::Io(format!("layer {digest}: {e}")))?;
    let received = received?;
    let staged = consumed?;
    tracing::info!(
        layer = digest,
        bytes = received,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pulled layer"
    );
    Ok(staged)
}

/// Reads the compressed layer from `source` (into `ingest` when it comes from the network),
/// decompresses it (at most `budget` bytes), applies it to `staged` and checks its
/// uncompressed digest against `diff_id`, all in one pass; commits the blob only when
/// everything matched.
fn consume_layer(
    source: impl Read,
    ingest: Option<Ingest>,
    compression: Compression,
    digest: &str,
    diff_id: &str,
    budget: &Budget,
    mut staged: Option<Box<dyn StagedLayer>>,
) -> Result<Option<Box<dyn StagedLayer>>, ImageError> {
    let mut tee = Tee {
        inner: source,
        ingest,
    };
    let mut hasher = Sha256::new();
    let decoded = match decode(
        &mut tee,
        compression,
        &mut hasher,
        budget.max,
        staged.as_deref_mut(),
    ) {
        // Returning drops the staging directory and the partial blob: nothing is kept, and
        // the rest of the blob is not fetched.
        Err(DecodeError::OverBudget) => return Err(budget.exceeded(digest)),
        Err(DecodeError::Broken(e)) => Err(e),
        Ok(()) => Ok(()),
    };
    // Whatever follows the compressed stream still belongs to the blob.
    let drained = std::io::copy(&mut tee, &mut std::io::sink());
    let Tee { ingest, .. } = tee;
    if let Err(e) = drained {
        return Err(ImageError::Io(format!("layer {digest}: {e}")));
    }
    if let Err(e) = decoded {
        // Wrong bytes are the most precise explanation of a broken stream.
        if let Some(ingest) = &ingest {
            ingest.check()?;
        }
        return Err(ImageError::Malformed(format!("layer {digest}: {e}")));
    }
    let actual = format!("sha256:{}", hex(&hasher.finalize()));
    if actual != diff_id {
        if let Some(ingest) = &ingest {
            ingest.check()?;
        }
        return Err(ImageError::Malformed(format!(
            "layer {digest}: uncompressed content hashes to {actual}, the image config says {diff_id}"
        )));
    }
    if let Some(ingest) = ingest {
        ingest.commit()?;
    }
    Ok(staged)
}

enum DecodeError {
    /// The layer decompresses past its budget.
    OverBudget,
    Broken(String),
}

fn decode(
    compressed: &mut dyn Read,
    compression: Compression,
    hasher: &mut Sha256,
    max_uncompressed: u64,
    staged: Option<&mut (dyn StagedLayer + 'static)>,
) -> Result<(), DecodeError> {
    let decoder: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(compressed),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(compressed)
                .map_err(|e| DecodeError::Broken(format!("zstd: {e}")))?,
        ),
    };
    let mut counted = CountingReader::new(decoder, max_uncompressed);
    let mut hashing = HashingReader {
        inner: &mut counted,
        hasher,
    };
    let applied = match staged {
        Some(staged) => staged.apply(&mut hashing).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    // The rest: end-of-archive padding, or everything when nothing is applied.
    let rest = applied.and_then(|()| {
        copy_to_sink(&mut hashing)
            .map(|_| ())
            .map_err(|e| format!("cannot decompress: {e}"))
    });
    match rest {
        Err(_) if counted.exceeded() => Err(DecodeError::OverBudget),
        Err(e) => Err(DecodeError::Broken(e)),
        Ok(()) => Ok(()),
    }
}

/// Hashes every byte read through it.
struct HashingReader<'a, R: ?Sized> {
    inner: &'a mut R,
    hasher: &'a mut Sha256,
}

impl<R: Read + ?Sized> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn copy_to_sink(reader: &mut dyn Read) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
    }
}

/// Every byte read through it also goes to the ingest.
struct Tee<R> {
    inner: R,
    ingest: Option<Ingest>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(ingest) = &mut self.ingest {
            ingest
                .write(&buf[..n])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(n)
    }
}

/// A blocking reader over chunks sent by the async download.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    buf: Bytes,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Self {
        ChannelReader {
            rx,
            buf: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::images::content::sha256_digest;
    use crate::images::layers::fake::Staged;

    fn budget() -> Budget {
        LayerLimits {
            ratio: 100,
            max_bytes: 1 << 30,
        }
        .budget(1 << 20)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn layer_is_committed_when_blob_and_diff_id_match() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let tar = vec![7u8; 100_000];
        let blob = gzip(&tar);
        let digest = sha256_digest(&blob);
        let diff_id = sha256_digest(&tar);
        let ingest = store.writer(&digest).unwrap();
        consume_layer(
            blob.as_slice(),
            Some(ingest),
            Compression::Gzip,
            &digest,
            &diff_id,
            &budget(),
            None,
        )
        .unwrap();
        assert_eq!(store.read(&digest).unwrap(), blob);
    }

    #[test]
    fn wrong_diff_id_or_digest_names_the_blob_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let tar = vec![7u8; 1000];
        let blob = gzip(&tar);
        let digest = sha256_digest(&blob);
        let wrong = sha256_digest(b"other");

        let ingest = store.writer(&digest).unwrap();
        let err = consume_layer(
            blob.as_slice(),
            Some(ingest),
            Compression::Gzip,
            &digest,
            &wrong,
            &budget(),
            None,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains(&digest), "{err}");
        assert!(!store.contains(&digest));

        let ingest = store.writer(&wrong).unwrap();
        let err = consume_layer(
            blob.as_slice(),
            Some(ingest),
            Compression::Gzip,
            &wrong,
            &sha256_digest(&tar),
            &budget(),
            None,
        )
        .err()
        .unwrap();
        assert!(
            matches!(&err, ImageError::DigestMismatch { blob, .. } if blob == &wrong),
            "{err}"
        );
        assert!(!store.contains(&wrong));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn zstd_and_plain_layers_are_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let tar = b"some tar bytes".repeat(1000);
        let blob = zstd::encode_all(tar.as_slice(), 3).unwrap();
        let digest = sha256_digest(&blob);
        let ingest = store.writer(&digest).unwrap();
        consume_layer(
            blob.as_slice(),
            Some(ingest),
            Compression::Zstd,
            &digest,
            &sha256_digest(&tar),
            &budget(),
            None,
        )
        .unwrap();
        let digest = sha256_digest(&tar);
        let ingest = store.writer(&digest).unwrap();
        consume_layer(
            tar.as_slice(),
            Some(ingest),
            Compression::None,
            &digest,
            &digest,
            &budget(),
            None,
        )
        .unwrap();
        assert!(store.contains(&digest));
    }

    #[test]
    fn layer_is_applied_while_it_streams_and_from_the_content_store() {
        let mut builder = tar::Builder::new(Vec::new());
        for name in ["etc/hostname", "bin/sh"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, &b"abc"[..]).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let blob = gzip(&tar);
        let digest = sha256_digest(&blob);
        let diff_id = sha256_digest(&tar);
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();

        let seen = Staged::default();
        let paths = seen.0.clone();
        let staged = consume_layer(
            blob.as_slice(),
            Some(store.writer(&digest).unwrap()),
            Compression::Gzip,
            &digest,
            &diff_id,
            &budget(),
            Some(Box::new(seen)),
        )
        .unwrap();
        assert!(staged.is_some());
        assert_eq!(*paths.lock().unwrap(), ["etc/hostname", "bin/sh"]);
        assert!(store.contains(&digest));

        let file = std::fs::File::open(store.path(&digest).unwrap()).unwrap();
        let again = Staged::default();
        let paths = again.0.clone();
        consume_layer(
            file,
            None,
            Compression::Gzip,
            &digest,
            &diff_id,
            &budget(),
            Some(Box::new(again)),
        )
        .unwrap();
        assert_eq!(paths.lock().unwrap().len(), 2);
    }

    /// A staged layer that records whether it was dropped without import.
    struct DropFlag(Staged, Arc<std::sync::atomic::AtomicBool>);

    impl StagedLayer for DropFlag {
        fn apply(&mut self, tar: &mut dyn Read) -> Result<(), ImageError> {
            self.0.apply(tar)
        }

        fn import(
            self: Box<Self>,
            _: &str,
            _: Option<&str>,
            _: std::collections::BTreeMap<String, String>,
        ) -> Result<(), ImageError> {
            Ok(())
        }
    }

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_decompression_bomb_is_stopped_at_its_budget_and_nothing_is_kept() {
        // 64 MiB of zeros in one tar entry: about 64 KiB of gzip.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(64 << 20);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "zeros", std::io::repeat(0).take(64 << 20))
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let blob = gzip(&tar);
        assert!(blob.len() < 1 << 20);
        let digest = sha256_digest(&blob);
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let staged = DropFlag(Staged::default(), Arc::clone(&dropped));
        let budget = Budget {
            max: 8 << 20,
            why: "test budget".into(),
        };
        // Counts what it hands out: the bomb is not read to its end.
        let mut source = CountingReader::new(blob.as_slice(), u64::MAX);
        let err = consume_layer(
            &mut source,
            Some(store.writer(&digest).unwrap()),
            Compression::Gzip,
            &digest,
            &sha256_digest(&tar),
            &budget,
            Some(Box::new(staged)),
        )
        .err()
        .unwrap();
        assert!(matches!(&err, ImageError::Limit(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&digest) && msg.contains("8388608 bytes") && msg.contains("test budget"),
            "{msg}"
        );
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!store.contains(&digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        let within = consume_layer(
            blob.as_slice(),
            None,
            Compression::Gzip,
            &digest,
            &sha256_digest(&tar),
            &Budget {
                max: tar.len() as u64,
                why: "exact".into(),
            },
            None,
        );
        assert!(within.is_ok(), "a layer of exactly its budget is fine");
        // Uncompressed layers are counted too.
        let err = consume_layer(
            tar.as_slice(),
            None,
            Compression::None,
            &sha256_digest(&tar),
            &sha256_digest(&tar),
            &budget,
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, ImageError::Limit(_)), "{err}");
    }

    #[test]
    fn the_bomb_is_not_read_to_its_end() {
        // About 128 KiB of gzip.
        let blob = gzip(&vec![0u8; 128 << 20]);
        let mut source = CountingReader::new(blob.as_slice(), u64::MAX);
        let budget = Budget {
            max: 1 << 20,
            why: "w".into(),
        };
        let err = consume_layer(
            &mut source,
            None,
            Compression::Gzip,
            "sha256:x",
            "sha256:y",
            &budget,
            None,
        )
        .err()
        .unwrap();
        assert!(matches!(err, ImageError::Limit(_)), "{err}");
        let mut rest = Vec::new();
        source.read_to_end(&mut rest).unwrap();
        assert!(
            rest.len() > blob.len() / 2,
            "stopped early: {} of {} bytes left",
            rest.len(),
            blob.len()
        );
    }

    fn response(body: reqwest::Body) -> reqwest::Response {
        reqwest::Response::from(http::Response::new(body))
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_their_limit_and_no_further() {
        let endless = futures_util::stream::repeat_with(|| {
            Ok::<_, std::io::Error>(Bytes::from_static(&[b'{'; 4096]))
        });
        let err = read_body(
            response(reqwest::Body::wrap_stream(endless)),
            MAX_MANIFEST_BYTES,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::TooLarge), "{err:?}");
        let fine = response(reqwest::Body::from(vec![7u8; 100]));
        assert_eq!(
            read_body(fine, 100, Duration::from_secs(10)).await.unwrap(),
            vec![7u8; 100]
        );
        let stalled =
            futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{")) })
                .chain(futures_util::stream::pending());
        let err = read_body(
            response(reqwest::Body::wrap_stream(stalled)),
            100,
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BodyError::Stalled), "{err:?}");
    }

    #[test]
    fn registry_error_answers_keep_their_meaning() {
        let e = status_error(
            reqwest::StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            "http://r/v2/x/manifests/v1",
        );
        assert!(
            matches!(e, OciDistributionError::RegistryError { .. }),
            "{e}"
        );
        let e = status_error(reqwest::StatusCode::UNAUTHORIZED, b"", "u");
        assert!(matches!(e, OciDistributionError::UnauthorizedError { .. }));
        let e = status_error(reqwest::StatusCode::BAD_GATEWAY, &[b'x'; 5000], "u");
        assert!(
            matches!(&e, OciDistributionError::ServerError { code: 502, message, .. } if message.len() == 1000),
            "{e}"
        );
    }

    /// A registry of one empty image behind a token server that hands out `token-1`,
    /// `token-2`, ...; only the newest token is accepted, as after an expiry. Returns its
    /// address and the tokens issued so far.
    async fn rotating_token_registry() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let issued = Arc::new(AtomicUsize::new(0));
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let config_digest = sha256_digest(&config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
            config.len()
        );
        let counter = Arc::clone(&issued);
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (counter, realm, config, manifest, config_digest) = (
                    Arc::clone(&counter),
                    realm.clone(),
                    config.clone(),
                    manifest.clone(),
                    config_digest.clone(),
                );
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let current = format!("bearer token-{}", counter.load(Ordering::SeqCst));
                    let authorized = head.contains(&format!("authorization: {current}\r\n"));
                    let (status, body) = if path == "/v2/" {
                        ("401 Unauthorized", Vec::new())
                    } else if path.starts_with("/token") {
                        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                        ("200 OK", format!(r#"{{"token":"token-{n}"}}"#).into_bytes())
                    } else if !authorized {
                        ("401 Unauthorized", Vec::new())
                    } else if path.contains("/manifests/") {
                        ("200 OK", manifest.into_bytes())
                    } else if path.ends_with(&config_digest) {
                        ("200 OK", config)
                    } else {
                        ("404 Not Found", Vec::new())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nWWW-Authenticate: Bearer realm=\"{realm}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (addr, issued)
    }

    #[tokio::test]
    async fn a_token_refused_during_a_pull_is_renewed_once() {
        use std::sync::atomic::Ordering;
        let (addr, issued) = rotating_token_registry().await;
        let dir = tempfile::tempdir().unwrap();
        let images = images(dir.path(), &[&addr]);
        let r = ImageRef::parse(&format!("{addr}/some/image:v1")).unwrap();
        let endpoint = registry::endpoints(&images.registry, &r).remove(0);
        let lease = images.leases.begin();
        // A pull that meets no expiry gets one token.
        images
            .pull_from(&r, endpoint.clone(), &Credentials::Anonymous, &lease)
            .await
            .unwrap();
        assert_eq!(issued.load(Ordering::SeqCst), 1);

        // The token handed out first stops working: the next request gets a new one.
        let http = images.http().unwrap();
        let ctx = Ctx {
            reference: r.clone(),
            endpoint,
            oref: Reference::with_tag(addr.clone(), "some/image".into(), "v1".into()),
            auth: RegistryAuth::Anonymous,
            timeout: Duration::from_secs(10),
            layer_limits: images.layer_limits,
            http,
            authorization: Mutex::new(None),
        };
        ctx.authorize().await.unwrap();
        assert_eq!(issued.load(Ordering::SeqCst), 2);
        // Issued behind the context's back: token-2 is now stale.
        let mut stale = reqwest::get(format!("http://{addr}/token")).await.unwrap();
        while stale.chunk().await.unwrap().is_some() {}
        let (body, _) = ctx.manifest(None).await.unwrap();
        assert!(body.starts_with(b"{\"schemaVersion\":2"));
        assert_eq!(issued.load(Ordering::SeqCst), 4, "one renewal");
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_fails_the_pull_with_a_clear_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Accepts connections and never writes a byte.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let registry = crate::config::RegistryConfig {
            insecure: vec![addr.clone()],
            pull_progress_timeout_secs: 1,
            ..Default::default()
        };
        let images =
            Images::open(dir.path(), berth_store::Store::in_memory(), registry, None).unwrap();
        let reference = format!("{addr}/stuck/image:v1");
        // Stalled, not some other error: the progress timeout is what ended the pull.
        let err = images
            .pull(&reference, Credentials::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Stalled { .. }), "{err}");
        assert!(err.to_string().contains(&reference), "{err}");
        assert!(err.to_string().contains("no progress for 1 s"), "{err}");
        silent.abort();
    }

    fn images(dir: &std::path::Path, insecure: &[&str]) -> Arc<Images> {
        let registry = crate::config::RegistryConfig {
            insecure: insecure.iter().map(|h| h.to_string()).collect(),
            pull_progress_timeout_secs: 10,
            ..Default::default()
        };
        Images::open(dir, berth_store::Store::in_memory(), registry, None).unwrap()
    }

    #[tokio::test]
    async fn a_plain_http_registry_met_over_tls_says_to_list_it_as_insecure() {
        use crate::images::transport::testing::*;
        let server = plain_server(OK).await;
        let dir = tempfile::tempdir().unwrap();
        let images = images(dir.path(), &[]);
        let r = ImageRef::parse(&format!("{}/some/image:v1", server.addr)).unwrap();
        // As a registry elsewhere is reached: https only.
        let endpoint = Endpoint {
            host: server.addr.clone(),
            repo_prefix: String::new(),
            scheme: Scheme::Https,
            plain_http: false,
            mirror: false,
        };
        let lease = images.leases.begin();
        let err = images
            .pull_from(&r, endpoint.clone(), &Credentials::Anonymous, &lease)
            .await
            .unwrap_err();
        let want = format!(
            "registry {0} answered plain HTTP to a TLS handshake; if it serves plain HTTP, list \
             it with --insecure-registry {0}",
            server.addr
        );
        assert!(
            matches!(&err, ImageError::Registry { detail, .. } if *detail == want),
            "{err}"
        );
        assert!(err.to_string().contains(&r.to_string()), "{err}");

        let mirror = Endpoint {
            mirror: true,
            ..endpoint
        };
        let err = images
            .pull_from(&r, mirror, &Credentials::Anonymous, &lease)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("write its URL with http://"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_tls_registry_listed_as_insecure_says_to_remove_it() {
        use crate::images::transport::testing::*;
        // What docker-registry answers, and what a TLS server that answers no HTTP at all
        // leaves the client with.
        for server in [plain_server(GO_TLS_SERVER).await, tls_server(OK).await] {
            let dir = tempfile::tempdir().unwrap();
            let images = images(dir.path(), &[&server.addr]);
            let reference = format!("{}/some/image:v1", server.addr);
            let err = images
                .pull(&reference, Credentials::Anonymous)
                .await
                .unwrap_err();
            let want = format!(
                "registry {} is listed with --insecure-registry but speaks TLS; remove it from \
                 the insecure registries",
                server.addr
            );
            assert!(
                matches!(&err, ImageError::Registry { detail, .. } if *detail == want),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_plain_http_registry_on_this_machine_needs_no_flag() {
        use crate::images::transport::testing::*;
        let server = plain_server(NOT_FOUND).await;
        let dir = tempfile::tempdir().unwrap();
        let images = images(dir.path(), &[]);
        for host in [
            server.addr.clone(),
            server.addr.replace("127.0.0.1", "localhost"),
        ] {
            let reference = format!("{host}/some/image:v1");
            let err = images
                .pull(&reference, Credentials::Anonymous)
                .await
                .unwrap_err();
            // The registry's own answer, over plain HTTP: no TLS error.
            assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
            assert!(
                err.to_string().contains(&format!("http://{host}/v2/")),
                "{err}"
            );
        }
    }

    #[test]
    fn manifests_and_media_types_are_checked() {
        assert!(parse_manifest(br#"{"schemaVersion":1}"#, "d").is_err());
        assert!(
            parse_manifest(
                br#"{"schemaVersion":2,"mediaType":"application/x-other"}"#,
                "d"
            )
            .is_err()
        );
        let err = compression("application/x-foo", "sha256:l").unwrap_err();
        assert!(err.to_string().contains("sha256:l"), "{err}");
        assert_eq!(
            compression("application/vnd.docker.image.rootfs.diff.tar.gzip", "x").unwrap(),
            Compression::Gzip
        );
    }
}
