//! Loading the network configuration from a CNI conf dir the way libcni does: the files ending
//! in `.conflist`, `.conf` or `.json`, in lexical order; the first one is the pod network. A
//! single-plugin `.conf` is treated as a list of one.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A validated network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// Plugin types in chain order.
    pub plugin_types: Vec<String>,
    /// The raw plugin configurations, handed to the plugins unchanged.
    pub plugins: Vec<serde_json::Value>,
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("no network config found in {dir} (expected a .conflist, .conf or .json file)")]
    NoConfig { dir: PathBuf },
    #[error("cannot read network config dir {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read network config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid network config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawList {
    cni_version: Option<String>,
    name: Option<String>,
    plugins: Option<Vec<serde_json::Value>>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
}

/// Loads the first network configuration in `dir`.
pub fn load_default(dir: &Path) -> Result<NetworkConfigList, ConfError> {
    let entries = std::fs::read_dir(dir).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfError::NoConfig {
                dir: dir.to_path_buf(),
            }
        } else {
            ConfError::ReadDir {
                dir: dir.to_path_buf(),
                source,
            }
        }
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    files.sort();
    let first = files.first().ok_or_else(|| ConfError::NoConfig {
        dir: dir.to_path_buf(),
    })?;
    load_file(first)
}

/// Loads and validates one configuration file.
pub fn load_file(path: &Path) -> Result<NetworkConfigList, ConfError> {
    let bytes = std::fs::read(path).map_err(|source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(path, &bytes)
}

/// Validates the content of a configuration file; `path`'s extension tells a `.conflist` from
/// a single-plugin config.
pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<NetworkConfigList, ConfError> {
    let invalid = |message: String| ConfError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let raw: RawList = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let is_list = path.extension().and_then(|e| e.to_str()) == Some("conflist");
    let plugins = match (is_list, raw.plugins) {
        (true, Some(plugins)) => plugins,
        (true, None) => return Err(invalid("missing \"plugins\"".into())),
        (false, _) if raw.plugin_type.is_some() => vec![value],
        (false, Some(plugins)) => plugins,
        (false, None) => return Err(invalid("missing \"type\" (or \"plugins\")".into())),
    };
    let name = raw
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("missing \"name\"".into()))?;
    let cni_version = raw
        .cni_version
        .ok_or_else(|| invalid("missing \"cniVersion\"".into()))?;
    if !crate::SUPPORTED_CNI_VERSIONS.contains(&cni_version.as_str()) {
        return Err(invalid(format!(
            "unsupported cniVersion {cni_version:?} (supported: {})",
            crate::SUPPORTED_CNI_VERSIONS.join(", ")
        )));
    }
    if plugins.is_empty() {
        return Err(invalid("\"plugins\" is empty".into()));
    }
    let mut plugin_types = Vec::with_capacity(plugins.len());
    for (i, plugin) in plugins.iter().enumerate() {
        match plugin.get("type").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => plugin_types.push(t.to_string()),
            _ => return Err(invalid(format!("plugin {i} has no \"type\""))),
        }
    }
    Ok(NetworkConfigList {
        name,
        cni_version,
        plugin_types,
        plugins,
        source: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn missing_or_empty_dir_has_no_config() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_default(&dir.path().join("absent")),
            Err(ConfError::NoConfig { .. })
        ));
        write(dir.path(), "README", "not a config");
        let err = load_default(dir.path()).unwrap_err();
        assert!(matches!(err, ConfError::NoConfig { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn first_file_in_lexical_order_wins() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-b.conflist",
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "10-a.conflist",
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        );
        let list = load_default(dir.path()).unwrap();
        assert_eq!(list.name, "a");
        assert_eq!(list.plugin_types, vec!["bridge", "portmap"]);
        assert!(list.source.ends_with("10-a.conflist"));
    }

    #[test]
    fn single_plugin_conf_becomes_a_list() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-x.conf",
            r#"{"cniVersion":"0.4.0","name":"x","type":"bridge","bridge":"cni0"}"#,
        );
        let list = load_default(dir.path()).unwrap();
        assert_eq!(list.plugin_types, vec!["bridge"]);
        assert_eq!(list.plugins[0]["bridge"], "cni0");
    }

    #[test]
    fn invalid_first_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-bad.conflist", "{ not json");
        write(
            dir.path(),
            "20-good.conflist",
            r#"{"cniVersion":"1.0.0","name":"g","plugins":[{"type":"bridge"}]}"#,
        );
        let err = load_default(dir.path()).unwrap_err();
        assert!(err.to_string().contains("10-bad.conflist"), "{err}");

        for (text, needle) in [
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "name",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"b"}]}"#,
                "9.9.9",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "empty"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"mtu":1}]}"#,
                "plugin 0",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "plugins"),
        ] {
            let path = dir.path().join("10-bad.conflist");
            std::fs::write(&path, text).unwrap();
            let err = load_file(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
