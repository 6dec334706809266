//! A small blocking client for the OCI distribution HTTP API, plain HTTP only: enough to push
//! the images the tests build and to read back what a registry serves.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use crate::image::{Artifact, Blob, Digest, Image, ImageIndex, media_type};

/// Every manifest type a registry may hold for our content. distribution 2.8 refuses to return
/// an OCI manifest or index to a client that does not list its media type.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// A manifest or index as a registry returned it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    pub media_type: String,
    /// The `Docker-Content-Digest` header, checked against the body.
    pub digest: Digest,
    pub body: Vec<u8>,
}

impl FetchedManifest {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("parse manifest JSON")
    }
}

/// Client for one registry (`host:port`), optionally with basic auth.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for RegistryClient {
    // Hand-written so the basic-auth header never lands in a test log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl RegistryClient {
    /// A client for `http://<host>`; `host` is `127.0.0.1:PORT`.
    pub fn new(host: &str) -> Self {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                // Registry errors (401, 404) are answers to inspect, not transport failures.
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build(),
        );
        RegistryClient {
            agent,
            base: format!("http://{host}"),
            authorization: None,
        }
    }

    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// The status of `GET /v2/`: 200 when open, 401 when credentials are required and missing.
    pub fn ping(&self) -> Result<u16> {
        let resp = self
            .request(self.agent.get(format!("{}/v2/", self.base)))
            .call();
        Ok(resp.context("GET /v2/")?.status().as_u16())
    }

    pub fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let resp = self
            .request(self.agent.head(&url))
            .call()
            .with_context(|| format!("HEAD {url}"))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!("HEAD {url}: unexpected status {status}"),
        }
    }

    /// Uploads a blob in one request (POST then PUT), unless the registry already has it.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        if self.blob_exists(repo, blob.digest())? {
            return Ok(());
        }
        let url = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let mut resp = self
            .request(self.agent.post(&url))
            .send_empty()
            .with_context(|| format!("POST {url}"))?;
        if resp.status().as_u16() != 202 {
            bail!(
                "POST {url}: status {}: {}",
                resp.status(),
                body_text(&mut resp)
            );
        }
        let location =
            header(&resp, "Location").with_context(|| format!("POST {url}: no Location"))?;
        // The location may be relative and already carries the upload state as a query.
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={}", blob.digest());
        let mut resp = self
            .request(self.agent.put(&put_url))
            .header("Content-Type", "application/octet-stream")
            .send(blob.data())
            .with_context(|| format!("PUT blob {} to {repo}", blob.digest()))?;
        if resp.status().as_u16() != 201 {
            bail!(
                "PUT blob {} to {repo}: status {}: {}",
                blob.digest(),
                resp.status(),
                body_text(&mut resp)
            );
        }
        Ok(())
    }

    /// Stores a manifest or index under `reference` (a tag or a digest).
    pub fn put_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<Digest> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut resp = self
            .request(self.agent.put(&url))
            .header("Content-Type", manifest.media_type())
            .send(manifest.data())
            .with_context(|| format!("PUT {url}"))?;
        if resp.status().as_u16() != 201 {
            bail!(
                "PUT {url}: status {}: {}",
                resp.status(),
                body_text(&mut resp)
            );
        }
        if let Some(got) = header(&resp, "Docker-Content-Digest")
            && got != manifest.digest().as_str()
        {
            bail!(
                "PUT {url}: registry computed digest {got}, expected {}",
                manifest.digest()
            );
        }
        Ok(manifest.digest().clone())
    }

    /// Pushes an image's blobs, then its manifest under `tag`. Returns the manifest digest.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) -> Result<Digest> {
        self.push_image_blobs(repo, image)?;
        self.put_manifest(repo, tag, &image.manifest)
    }

    /// Pushes every image of the index by digest (registries refuse an index whose manifests
    /// they do not have), then the index under `tag`. Returns the index digest.
    pub fn push_index(&self, repo: &str, tag: &str, index: &ImageIndex) -> Result<Digest> {
        for image in &index.images {
            self.push_image_blobs(repo, image)?;
            self.put_manifest(repo, image.digest().as_str(), &image.manifest)?;
        }
        self.put_manifest(repo, tag, &index.index)
    }

    pub fn push(&self, repo: &str, tag: &str, artifact: &Artifact) -> Result<Digest> {
        match artifact {
            Artifact::Image(image) => self.push_image(repo, tag, image),
            Artifact::Index(index) => self.push_index(repo, tag, index),
        }
    }

    fn push_image_blobs(&self, repo: &str, image: &Image) -> Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, &layer.blob)?;
        }
        self.push_blob(repo, &image.config)
    }

    /// `GET /v2/<repo>/manifests/<reference>`, with the digest header checked against the body.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let mut resp = self
            .request(self.agent.get(&url))
            .header("Accept", MANIFEST_ACCEPT)
            .call()
            .with_context(|| format!("GET {url}"))?;
        if resp.status().as_u16() != 200 {
            bail!(
                "GET {url}: status {}: {}",
                resp.status(),
                body_text(&mut resp)
            );
        }
        let media_type = header(&resp, "Content-Type").unwrap_or_default();
        let header_digest = header(&resp, "Docker-Content-Digest");
        let body = read_body(&mut resp).with_context(|| format!("GET {url}"))?;
        let digest = Digest::sha256(&body);
        if let Some(h) = header_digest
            && h != digest.as_str()
        {
            bail!("GET {url}: Docker-Content-Digest {h} does not match the body ({digest})");
        }
        Ok(FetchedManifest {
            media_type,
            digest,
            body,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`, verified against the digest.
    pub fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Vec<u8>> {
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let mut resp = self
            .request(self.agent.get(&url))
            .call()
            .with_context(|| format!("GET {url}"))?;
        if resp.status().as_u16() != 200 {
            bail!(
                "GET {url}: status {}: {}",
                resp.status(),
                body_text(&mut resp)
            );
        }
        let body = read_body(&mut resp).with_context(|| format!("GET {url}"))?;
        let got = Digest::sha256(&body);
        if &got != digest {
            bail!("GET {url}: content has digest {got}");
        }
        Ok(body)
    }

    fn request<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => req.header("Authorization", value),
            None => req,
        }
    }
}

/// Whether a manifest media type is an index (or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == media_type::OCI_INDEX
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn read_body(resp: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>> {
    // ureq caps bodies at 10 MB by default; layers can be larger.
    Ok(resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()?)
}

fn body_text(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    resp.body_mut()
        .read_to_string()
        .unwrap_or_else(|e| format!("<unreadable body: {e}>"))
}
