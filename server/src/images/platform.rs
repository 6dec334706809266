//! This node's platform, and picking its manifest out of an image index.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The running machine's platform, in OCI terms (`x86_64` is `amd64`).
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Whether an index entry for `other` runs here: same os and architecture, and the same
    /// variant when both name one.
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    #[test]
    fn matching_ignores_a_variant_only_one_side_names() {
        let arm = p("linux", "arm64", Some("v8"));
        assert!(arm.accepts(&p("linux", "arm64", None)));
        assert!(!arm.accepts(&p("linux", "arm64", Some("v9"))));
        assert!(!arm.accepts(&p("linux", "amd64", None)));
        assert!(p("linux", "amd64", None).accepts(&p("linux", "amd64", Some("v3"))));
    }

    #[test]
    fn this_machine_is_linux() {
        let here = Platform::current();
        assert_eq!(here.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(here.architecture, "amd64");
        }
    }
}
