//! The runtime side of CNI: executing a plugin chain for a pod's network namespace as the CNI
//! specification (1.0/1.1) describes, and caching each ADD result so that DEL can hand the
//! plugins what ADD produced even after berthd restarts.
//!
//! Plugins are found in the configured bin dirs, run with the `CNI_*` environment and the
//! network configuration on stdin. ADD runs the chain in order, each plugin receiving the
//! previous one's result as `prevResult`; DEL runs it in reverse with the cached ADD result.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Map, Value, json};

use crate::conf::NetworkConfigList;

/// What the runtime tells the plugins about one attachment.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the network namespace, e.g. `/run/berth/netns/<pod id>`.
    pub netns: PathBuf,
    pub if_name: String,
    /// `CNI_ARGS`, e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `dns`, `bandwidth`, `ipRanges`), each given only to
    /// plugins that declare the capability.
    pub capability_args: BTreeMap<String, Value>,
}

/// One attachment of a network: a container (berthd: a pod) and its interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub if_name: String,
}

/// What a [`CniRunner::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Cached attachments that were not valid and were deleted.
    pub deleted: Vec<Attachment>,
    /// Whether the plugins were asked to GC (CNI 1.1 chains only).
    pub collected: bool,
}

struct CacheEntry {
    network: String,
    attachment: Attachment,
    netns: PathBuf,
    args: Vec<(String, String)>,
    capability_args: BTreeMap<String, Value>,
    /// The network configuration ADD ran with, when the entry records it.
    config: Option<NetworkConfigList>,
}

/// Whether a chain's `cniVersion` has STATUS and GC (CNI 1.1 and later).
pub fn supports_status_and_gc(cni_version: &str) -> bool {
    let mut parts = cni_version
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (1, 1)
}

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin:?} not found in {searched}")]
    PluginNotFound { plugin: String, searched: String },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("running CNI plugin {plugin}: {source}")]
    Exec {
        plugin: String,
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} returned invalid JSON: {message}")]
    BadOutput {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("CNI plugin {plugin} does not support cniVersion {version} (it supports {supported})")]
    Incompatible {
        plugin: String,
        version: String,
        supported: String,
    },
    #[error("CNI result cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs CNI plugin chains. Cheap to clone; holds no open resources.
#[derive(Debug, Clone)]
pub struct CniRunner {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
}

impl CniRunner {
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> CniRunner {
        CniRunner {
            bin_dirs,
            cache_dir,
        }
    }

    /// Attaches the namespace to the network: ADD through the whole chain. The final result is
    /// cached before it is returned. On failure the plugins that already ran are not undone
    /// here: the caller runs [`CniRunner::del`], which every plugin must tolerate.
    pub fn add(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for plugin in &list.plugins {
            let conf = plugin_conf(list, plugin, prev.as_ref(), rt);
            let result = self.exec(plugin, "ADD", &conf, rt)?;
            prev = Some(result.unwrap_or_else(|| json!({"cniVersion": list.cni_version})));
        }
        let result = prev.unwrap_or(Value::Null);
        self.write_cache(list, rt, &result)?;
        Ok(result)
    }

    /// Detaches: DEL through the chain in reverse, with the cached ADD result as `prevResult`.
    /// Idempotent: deleting an attachment that does not exist (or whose namespace is gone)
    /// succeeds as long as the plugins do, as the spec requires of them.
    pub fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        let cached = self.read_cache(list, rt)?;
        for plugin in list.plugins.iter().rev() {
            let conf = plugin_conf(list, plugin, cached.as_ref(), rt);
            self.exec(plugin, "DEL", &conf, rt)?;
        }
        let path = self.cache_path(list, rt);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }

    /// DEL of `rt`'s attachments with the network configuration their ADD ran with, as the
    /// result cache records it (whatever the conf dir holds now). Returns how many cached
    /// attachments of the container and interface were deleted; 0 when the cache knows none
    /// (the caller then runs [`CniRunner::del`] with the current configuration).
    pub fn del_cached(&self, rt: &RuntimeConf) -> Result<usize, CniError> {
        let mut deleted = 0;
        for entry in self.cache_entries()? {
            if entry.attachment.container_id != rt.container_id
                || entry.attachment.if_name != rt.if_name
            {
                continue;
            }
            let Some(list) = entry.config else { continue };
            self.del(&list, rt)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Asks every plugin to verify the attachment against the cached ADD result.
    pub fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        let cached = self.read_cache(list, rt)?;
        for plugin in &list.plugins {
            let conf = plugin_conf(list, plugin, cached.as_ref(), rt);
            self.exec(plugin, "CHECK", &conf, rt)?;
        }
        Ok(())
    }

    /// The cached ADD result of an attachment, if any.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, CniError> {
        self.read_cache(list, rt)
    }

    /// Fails naming the first plugin of the chain that no bin dir holds.
    pub fn find_plugins(&self, list: &NetworkConfigList) -> Result<(), CniError> {
        list.plugin_types
            .iter()
            .try_for_each(|t| self.find(t).map(|_| ()))
    }

    /// The binaries of the chain's plugins, in chain order.
    pub fn plugin_paths(&self, list: &NetworkConfigList) -> Result<Vec<PathBuf>, CniError> {
        list.plugin_types.iter().map(|t| self.find(t)).collect()
    }

    /// CNI VERSION: the spec versions plugin `plugin_type` supports.
    pub fn versions(&self, plugin_type: &str, cni_version: &str) -> Result<Vec<String>, CniError> {
        let plugin = json!({"type": plugin_type});
        let conf = json!({"cniVersion": cni_version});
        let out = self.exec_env(&plugin, "VERSION", &conf, &[])?;
        // A plugin that answers VERSION with nothing says nothing against the version.
        if out.is_none() {
            return Ok(vec![cni_version.to_string()]);
        }
        let supported = out
            .as_ref()
            .and_then(|v| v.get("supportedVersions"))
            .and_then(Value::as_array)
            .ok_or_else(|| CniError::BadOutput {
                plugin: plugin_type.to_string(),
                command: "VERSION",
                message: "no supportedVersions".into(),
            })?;
        Ok(supported
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect())
    }

    /// Every plugin of the chain supports its `cniVersion` (VERSION of each, as libcni's
    /// ValidateNetworkList asks).
    pub fn validate(&self, list: &NetworkConfigList) -> Result<(), CniError> {
        let mut asked = std::collections::BTreeSet::new();
        for plugin_type in &list.plugin_types {
            if !asked.insert(plugin_type) {
                continue;
            }
            let supported = self.versions(plugin_type, &list.cni_version)?;
            if !supported.contains(&list.cni_version) {
                return Err(CniError::Incompatible {
                    plugin: plugin_type.clone(),
                    version: list.cni_version.clone(),
                    supported: supported.join(", "),
                });
            }
        }
        Ok(())
    }

    /// CNI STATUS (1.1): whether every plugin of the chain is ready for ADD. A chain whose
    /// `cniVersion` predates STATUS is taken as ready, as libcni does.
    pub fn status(&self, list: &NetworkConfigList) -> Result<(), CniError> {
        if !supports_status_and_gc(&list.cni_version) {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = plugin_conf(list, plugin, None, &RuntimeConf::default());
            self.exec_env(plugin, "STATUS", &conf, &[])?;
        }
        Ok(())
    }

    /// Garbage collection of the attachments that are not in `valid`, as libcni does it: a DEL
    /// for each cached attachment that is not valid (with the chain and arguments its ADD ran
    /// with, so also those of a network the conf dir no longer holds), then, for a `list` of
    /// CNI 1.1 or later, GC through every plugin with the valid attachments, so that plugins
    /// also drop what no cache entry remembers. Every step runs; the errors are returned
    /// together.
    pub fn gc(
        &self,
        list: &NetworkConfigList,
        valid: &[Attachment],
    ) -> Result<GcReport, Vec<CniError>> {
        let mut errors = Vec::new();
        let mut report = GcReport::default();
        let entries = match self.cache_entries() {
            Ok(entries) => entries,
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        };
        for entry in entries {
            if valid.contains(&entry.attachment) {
                continue;
            }
            // The chain the ADD ran; an older entry without it only for the current network.
            let config = match entry.config {
                Some(config) => config,
                None if entry.network == list.name => list.clone(),
                None => continue,
            };
            let rt = RuntimeConf {
                container_id: entry.attachment.container_id.clone(),
                netns: entry.netns,
                if_name: entry.attachment.if_name.clone(),
                args: entry.args,
                capability_args: entry.capability_args,
            };
            match self.del(&config, &rt) {
                Ok(()) => report.deleted.push(entry.attachment),
                Err(e) => errors.push(e),
            }
        }
        if supports_status_and_gc(&list.cni_version) {
            let attachments: Vec<Value> = valid
                .iter()
                .map(|a| json!({"containerID": a.container_id, "ifname": a.if_name}))
                .collect();
            for plugin in &list.plugins {
                let mut conf = plugin_conf(list, plugin, None, &RuntimeConf::default());
                conf["cni.dev/valid-attachments"] = Value::Array(attachments.clone());
                match self.exec_env(plugin, "GC", &conf, &[]) {
                    Ok(_) => report.collected = true,
                    Err(e) => errors.push(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(report)
        } else {
            Err(errors)
        }
    }

    /// Every readable entry of the result cache; unreadable or foreign files are skipped.
    fn cache_entries(&self) -> Result<Vec<CacheEntry>, CniError> {
        let dir = self.cache_dir.join("results");
        let read = match std::fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CniError::Cache { path: dir, source }),
        };
        let mut entries = Vec::new();
        for file in read.flatten() {
            let path = file.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                continue;
            }
            let Some(v) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            else {
                continue;
            };
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
            let (Some(network), Some(container_id), Some(if_name)) =
                (text("networkName"), text("containerId"), text("ifName"))
            else {
                continue;
            };
            let args = v
                .get("args")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            Some((
                                p.get(0)?.as_str()?.to_string(),
                                p.get(1)?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let capability_args = v
                .get("capabilityArgs")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            entries.push(CacheEntry {
                network,
                attachment: Attachment {
                    container_id,
                    if_name,
                },
                netns: text("netns").map(PathBuf::from).unwrap_or_default(),
                args,
                capability_args,
                config: v.get("config").and_then(|c| cached_config(c, &path)),
            });
        }
        Ok(entries)
    }

    fn find(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        // A type is a file name, never a path: "../x" must not escape the bin dirs.
        if !plugin_type.contains('/') {
            for dir in &self.bin_dirs {
                let candidate = dir.join(plugin_type);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin_type.to_string(),
            searched: self
                .bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Runs one plugin for one attachment; `Ok(None)` when it printed nothing (as DEL and
    /// CHECK do).
    fn exec(
        &self,
        plugin: &Value,
        command: &'static str,
        conf: &Value,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, CniError> {
        // Plugins reject CNI_ARGS keys they do not know unless told otherwise, and the
        // Kubernetes keys are unknown to most of them (containerd and CRI-O do the same).
        let args = std::iter::once("IgnoreUnknown=1".to_string())
            .chain(rt.args.iter().map(|(k, v)| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(";");
        let env = [
            ("CNI_CONTAINERID", OsString::from(&rt.container_id)),
            ("CNI_NETNS", rt.netns.clone().into_os_string()),
            ("CNI_IFNAME", OsString::from(&rt.if_name)),
            ("CNI_ARGS", OsString::from(args)),
        ];
        self.exec_env(plugin, command, conf, &env)
    }

    /// Runs one plugin with `CNI_COMMAND`, `CNI_PATH`, `PATH` and `env`.
    fn exec_env(
        &self,
        plugin: &Value,
        command: &'static str,
        conf: &Value,
        env: &[(&str, OsString)],
    ) -> Result<Option<Value>, CniError> {
        let plugin_type = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let path = self.find(plugin_type)?;
        let exec_err = |source| CniError::Exec {
            plugin: plugin_type.to_string(),
            source,
        };
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| exec_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CNI_PATH", cni_path)
            // Plugins such as portmap run iptables, which needs a PATH.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A plugin binary being replaced, or just written while another thread forks, fails
        // with ETXTBSY for a moment; libcni retries too.
        let mut attempt = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 10 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
                }
                r => break r.map_err(exec_err)?,
            }
        };
        let input = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin may exit without reading its input: its exit status tells.
            match stdin.write_all(&input) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(exec_err(e)),
                _ => {}
            }
        }
        let out = child.wait_with_output().map_err(exec_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(CniError::Plugin {
                plugin: plugin_type.to_string(),
                command,
                message: error_message(&stdout, &String::from_utf8_lossy(&out.stderr), out.status),
            });
        }
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|e| CniError::BadOutput {
                plugin: plugin_type.to_string(),
                command,
                message: e.to_string(),
            })
    }

    fn cache_path(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> PathBuf {
        self.cache_dir.join("results").join(format!(
            "{}-{}-{}",
            sanitize(&list.name),
            sanitize(&rt.container_id),
            sanitize(&rt.if_name)
        ))
    }

    fn write_cache(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        result: &Value,
    ) -> Result<(), CniError> {
        let path = self.cache_path(list, rt);
        let cache_err = |source| CniError::Cache {
            path: path.clone(),
            source,
        };
        let entry = json!({
            "kind": "cniCacheV1",
            "containerId": rt.container_id,
            "ifName": rt.if_name,
            "networkName": list.name,
            "netns": rt.netns,
            "args": rt.args,
            "capabilityArgs": rt.capability_args,
            // So that DEL runs the chain ADD ran, even after the conf dir changed.
            "config": {
                "name": list.name,
                "cniVersion": list.cni_version,
                "plugins": list.plugins,
            },
            "result": result,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(cache_err)?;
        }
        // Written then renamed, so a crash never leaves a torn entry for DEL to trip on.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&entry).unwrap_or_default()).map_err(cache_err)?;
        std::fs::rename(&tmp, &path).map_err(cache_err)
    }

    fn read_cache(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<Value>, CniError> {
        let path = self.cache_path(list, rt);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|mut v| v.get_mut("result").map(Value::take))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::Cache { path, source }),
        }
    }
}

/// The configuration list a cache entry recorded, validated like a conf file.
fn cached_config(config: &Value, path: &std::path::Path) -> Option<NetworkConfigList> {
    let plugins: Vec<Value> = config.get("plugins")?.as_array()?.clone();
    let plugin_types = plugins
        .iter()
        .map(|p| p.get("type").and_then(Value::as_str).map(String::from))
        .collect::<Option<Vec<_>>>()?;
    Some(NetworkConfigList {
        name: config.get("name")?.as_str()?.to_string(),
        cni_version: config.get("cniVersion")?.as_str()?.to_string(),
        plugin_types,
        plugins,
        source: path.to_path_buf(),
    })
}

/// The configuration one plugin of the chain receives on stdin.
fn plugin_conf(
    list: &NetworkConfigList,
    plugin: &Value,
    prev: Option<&Value>,
    rt: &RuntimeConf,
) -> Value {
    let mut conf = match plugin {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let capabilities = plugin.get("capabilities").and_then(Value::as_object);
    let runtime_config: Map<String, Value> = rt
        .capability_args
        .iter()
        .filter(|(name, _)| {
            capabilities
                .and_then(|c| c.get(name.as_str()))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(conf)
}

/// The message of a failed plugin: its CNI error JSON (`msg`, `details`) when it printed one,
/// else its stderr, else its exit status.
fn error_message(stdout: &str, stderr: &str, status: std::process::ExitStatus) -> String {
    if let Ok(err) = serde_json::from_str::<Value>(stdout) {
        let msg = err.get("msg").and_then(Value::as_str).unwrap_or("");
        let details = err.get("details").and_then(Value::as_str).unwrap_or("");
        let code = err.get("code").and_then(Value::as_u64);
        if !msg.is_empty() {
            let mut m = msg.to_string();
            if !details.is_empty() {
                m.push_str(": ");
                m.push_str(details);
            }
            if let Some(code) = code {
                m.push_str(&format!(" (CNI error code {code})"));
            }
            return m;
        }
    }
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        return stderr.to_string();
    }
    format!("exited with {status}")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The IP addresses (without prefix length) of a CNI result, from its `ips` list.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .filter_map(|a| a.split('/').next().and_then(|a| a.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// What berthd makes of bytes a plugin printed or a cache file held: a result's addresses,
    /// a failed plugin's message, a cached configuration list.
    pub fn plugin_output(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let _ = error_message(&text, &text, std::process::ExitStatus::from_raw(1 << 8));
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            let _ = result_ips(&value);
            if let Some(config) = value.get("config") {
                let _ = cached_config(config, std::path::Path::new("fuzz"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(plugins: Value) -> NetworkConfigList {
        let plugins: Vec<Value> = plugins.as_array().cloned().unwrap_or_default();
        NetworkConfigList {
            name: "net".into(),
            cni_version: "1.0.0".into(),
            plugin_types: plugins
                .iter()
                .map(|p| p["type"].as_str().unwrap_or("").to_string())
                .collect(),
            plugins,
            source: PathBuf::from("/x.conflist"),
        }
    }

    #[test]
    fn plugin_conf_carries_name_version_prev_result_and_declared_capabilities() {
        let l = list(json!([
            {"type": "bridge"},
            {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}
        ]));
        let mut rt = RuntimeConf::default();
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        rt.capability_args.insert("bandwidth".into(), json!({}));
        let prev = json!({"ips": [{"address": "10.1.0.2/24"}]});

        let first = plugin_conf(&l, &l.plugins[0], None, &rt);
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(
            first.get("runtimeConfig").is_none(),
            "bridge declared no capability"
        );

        let second = plugin_conf(&l, &l.plugins[1], Some(&prev), &rt);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(
            second["runtimeConfig"].get("bandwidth").is_none(),
            "a capability set to false is not passed"
        );
    }

    #[test]
    fn missing_plugin_names_the_dirs_searched() {
        let runner = CniRunner::new(
            vec!["/nonexistent/a".into(), "/nonexistent/b".into()],
            "/tmp".into(),
        );
        let err = runner.find("nosuch").unwrap_err().to_string();
        assert!(
            err.contains("nosuch") && err.contains("/nonexistent/a, /nonexistent/b"),
            "{err}"
        );
        assert!(
            runner.find("../../bin/sh").is_err(),
            "a type is never a path"
        );
    }

    #[test]
    fn failed_plugin_reports_its_cni_error() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":7,\"msg\":\"bad config\",\"details\":\"no subnet\"}'\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = CniRunner::new(vec![dir.path().into()], dir.path().join("cache"));
        let err = runner
            .add(&list(json!([{"type": "failing"}])), &RuntimeConf::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("failing ADD failed: bad config: no subnet (CNI error code 7)"),
            "{err}"
        );
        assert!(
            !dir.path().join("cache/results").exists(),
            "nothing is cached for a failed ADD"
        );
    }

    #[test]
    fn add_chains_results_and_del_gets_the_cached_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A fake plugin that logs what it was given and answers with an IP on ADD.
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_ARGS $in\" >> {log}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.0.0\",\"ips\":[{{\"address\":\"10.9.0.5/16\"}}]}}'\nexit 0\n",
            log = log.display()
        );
        let plugin = dir.path().join("fake");
        std::fs::write(&plugin, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runner = CniRunner::new(vec![dir.path().into()], dir.path().join("cache"));
        let l = list(json!([{"type": "fake", "n": 1}, {"type": "fake", "n": 2}]));
        let rt = RuntimeConf {
            container_id: "pod1".into(),
            netns: "/run/netns/x".into(),
            if_name: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: BTreeMap::new(),
        };

        let result = runner.add(&l, &rt).unwrap();
        assert_eq!(
            result_ips(&result),
            vec!["10.9.0.5".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(runner.cached_result(&l, &rt).unwrap(), Some(result));

        runner.del(&l, &rt).unwrap();
        assert_eq!(runner.cached_result(&l, &rt).unwrap(), None);
        runner.del(&l, &rt).unwrap();

        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines[0].starts_with("ADD pod1 eth0 IgnoreUnknown=1;K8S_POD_NAME=p "));
        assert!(!lines[0].contains("prevResult") && lines[0].contains("\"n\":1"));
        assert!(lines[1].contains("prevResult") && lines[1].contains("\"n\":2"));
        assert!(
            lines[2].starts_with("DEL") && lines[2].contains("\"n\":2"),
            "DEL runs in reverse"
        );
        assert!(
            lines[2].contains("10.9.0.5"),
            "DEL gets the cached ADD result"
        );
        assert!(
            lines[4].starts_with("DEL") && !lines[4].contains("prevResult"),
            "second DEL has no cache"
        );
    }

    /// A fake plugin that logs each call (command, container id, stdin) and answers ADD.
    fn logging_plugin(dir: &std::path::Path) -> PathBuf {
        let log = dir.join("log");
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND [$CNI_CONTAINERID] $in\" >> {log}\n\
             [ \"$CNI_COMMAND\" = ADD ] && echo '{{\"cniVersion\":\"1.1.0\",\"ips\":[{{\"address\":\"10.9.0.5/16\"}}]}}'\nexit 0\n",
            log = log.display()
        );
        let plugin = dir.join("fake");
        std::fs::write(&plugin, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        log
    }

    fn pod(id: &str) -> RuntimeConf {
        let mut rt = RuntimeConf {
            container_id: id.into(),
            netns: format!("/run/netns/{id}").into(),
            if_name: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), id.into())],
            ..Default::default()
        };
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 80}]));
        rt
    }

    #[test]
    fn a_plugin_that_does_not_support_the_chains_version_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = VERSION ] && echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}'\nexit 0\n";
        let path = bin.join("old");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let runner = CniRunner::new(vec![bin], dir.path().join("cache"));
        let list = |v: &str| NetworkConfigList {
            cni_version: v.into(),
            ..list(json!([{"type": "old"}]))
        };
        assert_eq!(runner.versions("old", "1.0.0").unwrap(), ["0.4.0", "1.0.0"]);
        runner.validate(&list("1.0.0")).unwrap();
        let err = runner.validate(&list("1.1.0")).unwrap_err().to_string();
        assert!(
            err.contains("old") && err.contains("1.1.0") && err.contains("0.4.0, 1.0.0"),
            "{err}"
        );
    }

    #[test]
    fn status_runs_only_for_cni_1_1_chains_without_attachment_env() {
        let dir = tempfile::tempdir().unwrap();
        let log = logging_plugin(dir.path());
        let runner = CniRunner::new(vec![dir.path().into()], dir.path().join("cache"));
        let mut l = list(json!([{"type": "fake"}]));
        runner.status(&l).unwrap();
        assert!(!log.exists(), "1.0.0 chains are not asked");
        l.cni_version = "1.1.0".into();
        runner.status(&l).unwrap();
        let lines = std::fs::read_to_string(&log).unwrap();
        assert!(lines.starts_with("STATUS [] {"), "{lines}");
        assert!(lines.contains("\"cniVersion\":\"1.1.0\""), "{lines}");
        assert!(supports_status_and_gc("1.1.0") && supports_status_and_gc("2.0.0"));
        assert!(!supports_status_and_gc("1.0.0") && !supports_status_and_gc("0.4.0"));
    }

    #[test]
    fn gc_deletes_stale_cached_attachments_then_asks_plugins_with_the_valid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = logging_plugin(dir.path());
        let runner = CniRunner::new(vec![dir.path().into()], dir.path().join("cache"));
        let mut l = list(json!([{"type": "fake", "capabilities": {"portMappings": true}}]));
        l.cni_version = "1.1.0".into();
        let mut other = l.clone();
        other.name = "other".into();
        other.plugins[0]["net"] = json!("older");
        runner.add(&l, &pod("kept")).unwrap();
        runner.add(&l, &pod("stale")).unwrap();
        runner.add(&other, &pod("elsewhere")).unwrap();
        std::fs::remove_file(&log).unwrap();

        let kept = Attachment {
            container_id: "kept".into(),
            if_name: "eth0".into(),
        };
        let report = runner.gc(&l, std::slice::from_ref(&kept)).unwrap();
        let mut deleted: Vec<&str> = report
            .deleted
            .iter()
            .map(|a| a.container_id.as_str())
            .collect();
        deleted.sort();
        assert_eq!(deleted, ["elsewhere", "stale"]);
        assert!(report.collected);
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let stale = lines.iter().find(|l| l.starts_with("DEL [stale]")).unwrap();
        assert!(
            stale.contains("10.9.0.5") && stale.contains("\"hostPort\":80"),
            "the stale DEL gets the cached result and capability args: {stale}"
        );
        let elsewhere = lines
            .iter()
            .find(|l| l.starts_with("DEL [elsewhere]"))
            .unwrap();
        assert!(
            elsewhere.contains("\"net\":\"older\"") && elsewhere.contains("\"name\":\"other\""),
            "an attachment of an older network is deleted with its own chain: {elsewhere}"
        );
        assert!(lines[2].starts_with("GC [] "), "{lines:#?}");
        assert!(
            lines[2].contains(
                r#""cni.dev/valid-attachments":[{"containerID":"kept","ifname":"eth0"}]"#
            ),
            "{}",
            lines[2]
        );
        assert!(runner.cached_result(&l, &pod("kept")).unwrap().is_some());
        assert!(runner.cached_result(&l, &pod("stale")).unwrap().is_none());
        assert!(
            runner
                .cached_result(&other, &pod("elsewhere"))
                .unwrap()
                .is_none()
        );

        // Before CNI 1.1: the stale DELs only.
        runner.add(&other, &pod("again")).unwrap();
        std::fs::remove_file(&log).unwrap();
        let mut old = other.clone();
        old.cni_version = "1.0.0".into();
        let report = runner.gc(&old, std::slice::from_ref(&kept)).unwrap();
        assert!(!report.collected && report.deleted.len() == 1);
        let lines = std::fs::read_to_string(&log).unwrap();
        assert!(
            lines.starts_with("DEL [again]") && !lines.contains("GC"),
            "{lines}"
        );
    }

    #[test]
    fn del_cached_runs_the_chain_add_ran_after_the_config_changed() {
        let dir = tempfile::tempdir().unwrap();
        let log = logging_plugin(dir.path());
        let runner = CniRunner::new(vec![dir.path().into()], dir.path().join("cache"));
        let old = list(json!([{"type": "fake", "generation": "old"}]));
        runner.add(&old, &pod("p1")).unwrap();
        std::fs::remove_file(&log).unwrap();

        assert_eq!(runner.del_cached(&pod("p1")).unwrap(), 1);
        let lines = std::fs::read_to_string(&log).unwrap();
        assert!(
            lines.starts_with("DEL [p1]") && lines.contains("\"generation\":\"old\""),
            "{lines}"
        );
        assert_eq!(runner.cached_result(&old, &pod("p1")).unwrap(), None);
        assert_eq!(
            runner.del_cached(&pod("p1")).unwrap(),
            0,
            "nothing cached any more"
        );
    }

    #[test]
    fn result_ips_reads_addresses() {
        let r = json!({"ips": [{"address": "10.0.0.2/24"}, {"address": "fd00::2/64"}]});
        let ips = result_ips(&r);
        assert_eq!(ips.len(), 2);
        assert!(ips[1].is_ipv6());
        assert!(result_ips(&json!({})).is_empty());
    }
}
