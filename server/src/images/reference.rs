//! Image references, normalised the way docker and containerd do: `busybox` is
//! `docker.io/library/busybox:latest`.

use std::fmt;

use super::ImageError;

pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
/// The longest repository name, registry host included, as docker's reference grammar allows.
const MAX_NAME_LEN: usize = 255;
/// Longer than any valid reference (a 255-byte name, a 128-byte tag and a sha256 digest): such
/// input is refused before it is parsed.
const MAX_REFERENCE_LEN: usize = 512;

/// A normalised reference: a domain, a repository path, and a tag, a digest or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `reference`; a reference with neither tag nor digest gets `:latest`.
    pub fn parse(reference: &str) -> Result<ImageRef, ImageError> {
        let invalid = |why: &str| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: why.to_string(),
        };
        if reference.is_empty() {
            return Err(invalid("empty"));
        }
        if reference.len() > MAX_REFERENCE_LEN {
            return Err(ImageError::InvalidReference {
                reference: format!("{}...", truncate(reference, 64)),
                reason: format!(
                    "{} bytes long; a reference has at most {MAX_REFERENCE_LEN}",
                    reference.len()
                ),
            });
        }
        if reference.chars().any(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => {
                check_digest(d).map_err(|why| invalid(&why))?;
                (n, Some(d.to_string()))
            }
            None => (reference, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(tag) = &tag {
            check_tag(tag).map_err(|why| invalid(&why))?;
        }
        let (domain, path) = split_domain(name);
        if domain.is_empty() {
            return Err(invalid("empty registry host"));
        }
        check_domain(&domain).map_err(|why| invalid(&why))?;
        check_path(&path).map_err(|why| invalid(&why))?;
        let name_len = domain.len() + 1 + path.len();
        if name_len > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "repository name {domain}/{path} is {name_len} characters long, more than \
                 {MAX_NAME_LEN}"
            )));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the repository name.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `name:tag`, if the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `name@digest` for a digest of this repository.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// At most the first `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `s` is a full image id: `sha256:<64 hex>` or the 64 hex digits alone.
pub fn as_image_id(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    is_sha256_hex(hex).then(|| format!("sha256:{hex}"))
}

pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn split_domain(name: &str) -> (String, String) {
    let (domain, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB.to_string()
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    (domain, path)
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port in registry host {domain:?}"));
    }
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'[' || b == b']')
        && !host.starts_with('-')
        && !host.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {domain:?}"))
    }
}

/// Repository components: lowercase alphanumerics separated by `.`, `_`, `__` or dashes.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".into());
    }
    for component in path.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "invalid repository path component {component:?} (lowercase letters, digits and separators only)"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), String> {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some(("sha256", hex)) if is_sha256_hex(hex) => Ok(()),
        Some(("sha256", _)) => Err(format!(
            "invalid digest {digest:?}: sha256 needs 64 lowercase hex digits"
        )),
        _ => Err(format!(
            "invalid digest {digest:?}: only sha256 digests are supported"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_are_docker_hub_library_latest() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            norm("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn hosts_with_dots_ports_or_localhost_are_registries() {
        assert_eq!(
            norm("registry.k8s.io/e2e-test-images/busybox:1.29-2"),
            "registry.k8s.io/e2e-test-images/busybox:1.29-2"
        );
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("localhost:5000/x:v1"), "localhost:5000/x:v1");
    }

    #[test]
    fn digests_with_and_without_tag() {
        let r = ImageRef::parse(&format!("busybox@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(&*format!("sha256:{HEX}")));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
        let r = ImageRef::parse(&format!("127.0.0.1:5000/a:v1@sha256:{HEX}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.name(), "127.0.0.1:5000/a");
        assert_eq!(r.with_digest("sha256:x"), "127.0.0.1:5000/a@sha256:x");
        assert_eq!(r.tagged().as_deref(), Some("127.0.0.1:5000/a:v1"));
    }

    #[test]
    fn invalid_references_are_refused_naming_them() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:abc",
            "a//b",
            "a/-b",
            "a b",
            "host:port/x",
            "/busybox",
            "busybox/",
            "a..b",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidReference { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn absurdly_long_references_are_refused() {
        // docker's limit: 255 characters for the whole name, host included.
        let at_limit = format!("registry.example/{}", "a".repeat(255 - 17));
        assert_eq!(ImageRef::parse(&at_limit).unwrap().name().len(), 255);
        let over = format!("registry.example/{}", "a".repeat(256 - 17));
        let err = ImageRef::parse(&over).unwrap_err();
        assert!(
            matches!(&err, ImageError::InvalidReference { reason, .. } if reason.contains("more than 255")),
            "{err}"
        );
        // Normalised: docker.io/library/ counts.
        let err = ImageRef::parse(&"b".repeat(240)).unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
        // A megabyte of input is not echoed back whole.
        let huge = "a".repeat(1 << 20);
        let err = ImageRef::parse(&huge).unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
        assert!(err.to_string().len() < 300, "{err}");
        assert!(err.to_string().contains("1048576 bytes long"), "{err}");
    }

    #[test]
    fn separators_in_components() {
        for ok in ["a_b", "a__b", "a---b", "a.b", "a-b.c_d"] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["a___b", "a._b", "_a", "a-", "A"] {
            assert!(!valid_component(bad), "{bad}");
        }
    }

    #[test]
    fn image_ids_are_recognised() {
        assert_eq!(as_image_id(HEX), Some(format!("sha256:{HEX}")));
        assert_eq!(
            as_image_id(&format!("sha256:{HEX}")),
            Some(format!("sha256:{HEX}"))
        );
        assert_eq!(as_image_id("busybox"), None);
    }
}
