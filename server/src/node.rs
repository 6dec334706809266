//! Facts about this node that berthd probes once at start: the cgroup version, the lowest
//! oom_score_adj it may give a process, where each runtime handler's binary is, and AppArmor
//! (berth's default profile is loaded here when the kernel lacks it).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apparmor::{AppArmor, LinuxAppArmor};
use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    /// Legacy or hybrid hierarchy: controllers are mounted as cgroup v1.
    #[serde(rename = "v1")]
    V1,
    /// The unified hierarchy at /sys/fs/cgroup.
    #[serde(rename = "v2")]
    V2,
}

impl CgroupVersion {
    /// Reads how /sys/fs/cgroup is mounted. On a hybrid host a cgroup2 mount exists below
    /// /sys/fs/cgroup (at `unified`) but holds no controllers, so resource limits go through v1.
    pub fn detect(mountinfo: &str) -> CgroupVersion {
        for line in mountinfo.lines() {
            // Fields: id parent major:minor root mount-point options ... - fstype source opts
            let mut fields = line.split_whitespace();
            let mount_point = fields.nth(4);
            let fstype = line
                .split_once(" - ")
                .and_then(|(_, tail)| tail.split_whitespace().next());
            if mount_point == Some("/sys/fs/cgroup") && fstype == Some("cgroup2") {
                return CgroupVersion::V2;
            }
        }
        CgroupVersion::V1
    }
}

/// Where a hybrid host mounts cgroup2 next to its v1 controllers.
const UNIFIED_MOUNT: &str = "/sys/fs/cgroup/unified";

/// Whether `mountinfo` shows a hybrid host: a cgroup2 mount at [`UNIFIED_MOUNT`].
pub fn is_hybrid(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mount_point = line.split_whitespace().nth(4);
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, tail)| tail.split_whitespace().next());
        mount_point == Some(UNIFIED_MOUNT) && fstype == Some("cgroup2")
    })
}

/// A resolved OCI runtime handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeBinary {
    pub path: PathBuf,
    pub features: RuntimeFeatures,
    /// The host is hybrid and the handler runs without its cgroup2 mount
    /// ([`crate::config::RuntimeHandler::hide_unified_cgroup`]).
    pub hide_unified_cgroup: bool,
}

/// What a runtime handler can do, as kubelet asks through Status. Read from the runtime's
/// `features` command (OCI runtime-spec features.md); a runtime without it supports neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeFeatures {
    /// The runtime accepts the `rro` mount option (recursive read-only, mount_setattr(2)).
    pub recursive_read_only_mounts: bool,
    /// The runtime can give a container its own user namespace with id-mapped mounts.
    pub user_namespaces: bool,
}

impl RuntimeFeatures {
    /// Parses the JSON a runtime prints for `<runtime> features`.
    pub fn parse(json: &[u8]) -> RuntimeFeatures {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            return RuntimeFeatures::default();
        };
        let rro = v["mountOptions"]
            .as_array()
            .is_some_and(|opts| opts.iter().any(|o| o == "rro"));
        let userns = v["linux"]["namespaces"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n == "user"))
            && v["linux"]["mountExtensions"]["idmap"]["enabled"] == true;
        RuntimeFeatures {
            recursive_read_only_mounts: rro,
            user_namespaces: userns,
        }
    }

    pub fn probe(binary: &Path) -> RuntimeFeatures {
        match std::process::Command::new(binary)
            .arg("features")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => RuntimeFeatures::parse(&out.stdout),
            _ => RuntimeFeatures::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub cgroup_version: CgroupVersion,
    /// berthd's own oom_score_adj. Without CAP_SYS_RESOURCE no child may go below it, so
    /// requested values are clamped to it (containerd's `restrict_oom_score_adj`).
    pub oom_score_adj_floor: i32,
    pub runtimes: BTreeMap<String, RuntimeBinary>,
    /// AppArmor in the kernel, and whether berth's default profile is loaded.
    pub apparmor: AppArmor,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "OCI runtime {handler:?}: binary {path} not found{searched} (install it or fix runtimes.{handler}.path / --runtime {handler}=PATH)"
    )]
    RuntimeMissing {
        handler: String,
        path: PathBuf,
        searched: String,
    },
    #[error("OCI runtime {handler:?}: {path} is not an executable file")]
    RuntimeNotExecutable { handler: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
}

impl NodeInfo {
    pub fn probe(config: &Config) -> Result<NodeInfo, NodeError> {
        let mountinfo = read("/proc/self/mountinfo")?;
        let oom = read("/proc/self/oom_score_adj")?;
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let hybrid = is_hybrid(&mountinfo);
        let mut runtimes = BTreeMap::new();
        for (name, handler) in &config.runtimes {
            let path = resolve_binary(name, &handler.path, &path_var)?;
            let features = RuntimeFeatures::probe(&path);
            let hide_unified_cgroup = hybrid && hides_unified_cgroup(handler, &path);
            runtimes.insert(
                name.clone(),
                RuntimeBinary {
                    path,
                    features,
                    hide_unified_cgroup,
                },
            );
        }
        Ok(NodeInfo {
            cgroup_version: CgroupVersion::detect(&mountinfo),
            oom_score_adj_floor: oom.trim().parse().unwrap_or(0),
            runtimes,
            apparmor: crate::apparmor::prepare(&LinuxAppArmor),
        })
    }
}

/// Whether a handler runs without the hybrid host's cgroup2 mount: as configured, else only
/// crun, which refuses hybrid hosts whose cgroup2 hierarchy holds a controller.
fn hides_unified_cgroup(handler: &crate::config::RuntimeHandler, binary: &Path) -> bool {
    handler
        .hide_unified_cgroup
        .unwrap_or_else(|| binary.file_name().is_some_and(|n| n == "crun"))
}

/// The oom_score_adj a process may actually be given when `requested` is asked for, with
/// berthd's own value as `floor` ([`NodeInfo::oom_score_adj_floor`]).
pub fn clamp_oom_score_adj(requested: i32, floor: i32) -> i32 {
    requested.clamp(floor, 1000)
}

fn read(path: &'static str) -> Result<String, NodeError> {
    std::fs::read_to_string(path).map_err(|source| NodeError::Read { path, source })
}

/// Finds a runtime binary: an absolute or relative path is taken as is, a bare name is looked
/// up in `path_var` like a shell would.
pub fn resolve_binary(
    handler: &str,
    configured: &Path,
    path_var: &std::ffi::OsStr,
) -> Result<PathBuf, NodeError> {
    let candidates: Vec<PathBuf> = if configured.components().count() > 1 {
        vec![configured.to_path_buf()]
    } else {
        std::env::split_paths(path_var)
            .map(|dir| dir.join(configured))
            .collect()
    };
    for candidate in &candidates {
        if let Ok(meta) = std::fs::metadata(candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate.clone());
            }
            if candidates.len() == 1 {
                return Err(NodeError::RuntimeNotExecutable {
                    handler: handler.to_string(),
                    path: candidate.clone(),
                });
            }
        }
    }
    let searched = if candidates.len() > 1 {
        format!(" in PATH ({})", path_var.to_string_lossy())
    } else {
        String::new()
    };
    Err(NodeError::RuntimeMissing {
        handler: handler.to_string(),
        path: configured.to_path_buf(),
        searched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";
    const UNIFIED: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hierarchy_is_v1() {
        assert_eq!(CgroupVersion::detect(HYBRID), CgroupVersion::V1);
    }

    #[test]
    fn unified_hierarchy_is_v2() {
        assert_eq!(CgroupVersion::detect(UNIFIED), CgroupVersion::V2);
    }

    #[test]
    fn only_a_cgroup2_mount_at_unified_makes_a_host_hybrid() {
        assert!(is_hybrid(HYBRID));
        assert!(!is_hybrid(UNIFIED));
        let legacy: String = HYBRID.lines().filter(|l| !l.contains("unified")).collect();
        assert!(!is_hybrid(&legacy));
    }

    #[test]
    fn crun_hides_the_unified_cgroup_unless_configured_otherwise() {
        use crate::config::RuntimeHandler;
        let handler = |hide| RuntimeHandler {
            path: PathBuf::from("x"),
            hide_unified_cgroup: hide,
        };
        assert!(hides_unified_cgroup(
            &handler(None),
            Path::new("/usr/bin/crun")
        ));
        assert!(!hides_unified_cgroup(
            &handler(None),
            Path::new("/usr/sbin/runc")
        ));
        assert!(!hides_unified_cgroup(
            &handler(Some(false)),
            Path::new("/usr/bin/crun")
        ));
        assert!(hides_unified_cgroup(
            &handler(Some(true)),
            Path::new("/opt/runc")
        ));
    }

    #[test]
    fn runtime_features_come_from_the_features_command() {
        let runc_1_1 = br#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","bind"],
            "linux":{"namespaces":["mount","user"]}}"#;
        assert_eq!(
            RuntimeFeatures::parse(runc_1_1),
            RuntimeFeatures {
                recursive_read_only_mounts: true,
                user_namespaces: false,
            }
        );
        let runc_1_2 = br#"{"mountOptions":["ro"],"linux":{"namespaces":["user"],
            "mountExtensions":{"idmap":{"enabled":true}}}}"#;
        assert_eq!(
            RuntimeFeatures::parse(runc_1_2),
            RuntimeFeatures {
                recursive_read_only_mounts: false,
                user_namespaces: true,
            }
        );
        assert_eq!(
            RuntimeFeatures::parse(b"unknown command features"),
            RuntimeFeatures::default()
        );
    }

    #[test]
    fn oom_score_adj_is_clamped_to_own_value() {
        assert_eq!(clamp_oom_score_adj(-998, -500), -500);
        assert_eq!(clamp_oom_score_adj(-100, -500), -100);
        assert_eq!(clamp_oom_score_adj(1500, -500), 1000);
    }

    #[test]
    fn binary_found_in_path_or_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("myrunc");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path_var =
            std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();

        let found = resolve_binary("runc", Path::new("myrunc"), &path_var).unwrap();
        assert_eq!(found, exe);
        assert_eq!(resolve_binary("runc", &exe, &path_var).unwrap(), exe);

        let err = resolve_binary("crun", Path::new("nocrun"), &path_var).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("crun") && msg.contains("nocrun") && msg.contains("PATH"),
            "{msg}"
        );

        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_binary("runc", &plain, &path_var).unwrap_err();
        assert!(
            matches!(err, NodeError::RuntimeNotExecutable { .. }),
            "{err}"
        );
    }
}
