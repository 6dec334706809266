//! Seccomp profiles: berth's RuntimeDefault profile and Localhost profile files, in the
//! profile format of containerd and Docker (an OCI `linux.seccomp` plus `archMap`, `name`, and
//! `includes`/`excludes` by capability and architecture), turned into the OCI form for one
//! container: its architecture and its bounding capabilities decide which rules apply.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// berth's default profile (containerd's and moby's in effect): see the file's `comment`.
const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("seccomp profile {path}: cannot read it: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("seccomp profile {path}: not a seccomp profile: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

/// The libseccomp name of the architecture berthd runs on.
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "SCMP_ARCH_X86",
        "arm" => "SCMP_ARCH_ARM",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "s390x" => "SCMP_ARCH_S390X",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        _ => "SCMP_ARCH_X86_64",
    }
}

impl Profile {
    /// The OCI `linux.seccomp` for a container on `arch` with bounding set `caps`
    /// (kernel names, `CAP_...`).
    fn to_oci(&self, arch: &str, caps: &[String]) -> Value {
        let architectures: Vec<String> = if self.arch_map.is_empty() {
            self.architectures.clone()
        } else {
            self.arch_map
                .iter()
                .filter(|m| m.architecture == arch)
                .flat_map(|m| {
                    std::iter::once(m.architecture.clone()).chain(m.sub_architectures.clone())
                })
                .collect()
        };
        let has = |c: &String| caps.contains(c);
        let syscalls: Vec<Value> = self
            .syscalls
            .iter()
            .filter(|r| {
                r.includes.caps.iter().all(has)
                    && (r.includes.arches.is_empty() || r.includes.arches.iter().any(|a| a == arch))
                    && !r.excludes.caps.iter().any(has)
                    && !r.excludes.arches.iter().any(|a| a == arch)
            })
            .map(|r| {
                let names: Vec<&String> = r.name.iter().chain(r.names.iter()).collect();
                let mut v = serde_json::json!({ "names": names, "action": r.action });
                if let Some(e) = r.errno_ret {
                    v["errnoRet"] = e.into();
                }
                if !r.args.is_empty() {
                    v["args"] = Value::Array(r.args.clone());
                }
                v
            })
            .collect();
        let mut out = serde_json::json!({
            "defaultAction": self.default_action,
            "syscalls": syscalls,
        });
        if let Some(e) = self.default_errno_ret {
            out["defaultErrnoRet"] = e.into();
        }
        if !architectures.is_empty() {
            out["architectures"] = serde_json::json!(architectures);
        }
        if !self.flags.is_empty() {
            out["flags"] = serde_json::json!(self.flags);
        }
        out
    }
}

fn parse(text: &str, path: PathBuf) -> Result<Profile, SeccompError> {
    serde_json::from_str(text).map_err(|e| SeccompError::Invalid {
        path,
        reason: e.to_string(),
    })
}

/// berth's RuntimeDefault profile for a container with bounding set `caps`.
pub fn default_profile(arch: &str, caps: &[String]) -> Value {
    match parse(DEFAULT_PROFILE, PathBuf::from("<built-in>")) {
        Ok(p) => p.to_oci(arch, caps),
        // The embedded file is checked by a unit test; this cannot happen in a built berthd.
        Err(_) => serde_json::json!({ "defaultAction": "SCMP_ACT_KILL_PROCESS" }),
    }
}

/// A Localhost profile, given the file's text (or the error reading it).
pub fn localhost_profile(
    path: PathBuf,
    text: std::io::Result<String>,
    arch: &str,
    caps: &[String],
) -> Result<Value, SeccompError> {
    let text = text.map_err(|e| SeccompError::Unreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(parse(&text, path)?.to_oci(arch, caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(profile: &Value) -> Vec<String> {
        profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["names"].as_array().unwrap().clone())
            .map(|n| n.as_str().unwrap().to_string())
            .collect()
    }

    fn allowed_unconditionally(profile: &Value, name: &str) -> bool {
        profile["syscalls"].as_array().unwrap().iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r.get("args").is_none()
                && r["names"].as_array().unwrap().iter().any(|n| n == name)
        })
    }

    #[test]
    fn default_profile_denies_by_default_and_guards_syscalls_by_capability() {
        let caps = vec!["CAP_CHOWN".to_string(), "CAP_NET_RAW".to_string()];
        let p = default_profile("SCMP_ARCH_X86_64", &caps);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], 1);
        assert_eq!(
            p["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        assert!(allowed_unconditionally(&p, "read"));
        assert!(allowed_unconditionally(&p, "arch_prctl"));
        assert!(!names(&p).contains(&"set_tls".to_string()), "arm only");
        for denied in [
            "mount",
            "sethostname",
            "unshare",
            "reboot",
            "init_module",
            "kexec_load",
        ] {
            assert!(!allowed_unconditionally(&p, denied), "{denied}");
        }
        // clone is allowed only without namespace flags, clone3 answers ENOSYS.
        assert!(names(&p).contains(&"clone".to_string()));
        assert!(!allowed_unconditionally(&p, "clone"));

        let admin = vec!["CAP_SYS_ADMIN".to_string()];
        let p = default_profile("SCMP_ARCH_X86_64", &admin);
        for allowed in ["mount", "sethostname", "unshare", "clone", "clone3"] {
            assert!(allowed_unconditionally(&p, allowed), "{allowed}");
        }
        let p = default_profile("SCMP_ARCH_AARCH64", &[]);
        assert_eq!(
            p["architectures"],
            serde_json::json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        assert!(allowed_unconditionally(&p, "set_tls"));
        // Every rule deserializes as OCI.
        let oci: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(p).unwrap();
        assert!(!oci.syscalls().as_ref().unwrap().is_empty());
    }

    #[test]
    fn localhost_profiles_in_oci_or_docker_form() {
        let text = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"},{"name":"sethostname","action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;
        let p = localhost_profile(
            PathBuf::from("/p.json"),
            Ok(text.into()),
            "SCMP_ARCH_X86_64",
            &[],
        )
        .unwrap();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(names(&p), vec!["chmod", "fchmodat", "sethostname"]);
        assert!(p.get("architectures").is_none());

        let err = localhost_profile(
            PathBuf::from("/gone.json"),
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            "SCMP_ARCH_X86_64",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("/gone.json"), "{err}");
        let err = localhost_profile(
            PathBuf::from("/bad.json"),
            Ok("{".into()),
            "SCMP_ARCH_X86_64",
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, SeccompError::Invalid { .. }), "{err}");
    }
}
