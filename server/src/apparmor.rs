//! AppArmor on this node: whether the kernel enforces it, and berth's default profile
//! ([`DEFAULT_PROFILE`]), which a container gets on an AppArmor host when its security context
//! asks for RuntimeDefault or names no profile (as containerd gives its own). berthd loads the
//! profile once at start with `apparmor_parser` when the kernel does not have it yet; the
//! kernel and the parser sit behind [`AppArmorSys`] so the decisions are unit-tested here, on a
//! host without AppArmor.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

/// The name berth's default profile is loaded under.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// The kernel's list of loaded profiles, one `name (mode)` per line.
pub const PROFILES_FILE: &str = "/sys/kernel/security/apparmor/profiles";

const ENABLED_FILE: &str = "/sys/module/apparmor/parameters/enabled";
const PARSER: &str = "apparmor_parser";

/// AppArmor as containers on this node get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AppArmor {
    /// The kernel does not enforce AppArmor: no profile can be applied.
    Disabled,
    /// It does; `default_profile` is whether [`DEFAULT_PROFILE`] is loaded.
    Enabled { default_profile: bool },
}

impl AppArmor {
    pub fn enabled(self) -> bool {
        matches!(self, AppArmor::Enabled { .. })
    }
}

/// The kernel's AppArmor interface and the profile loader.
pub trait AppArmorSys {
    /// The kernel enforces AppArmor.
    fn kernel_enabled(&self) -> bool;
    /// The loaded profiles ([`PROFILES_FILE`]).
    fn loaded_profiles(&self) -> std::io::Result<String>;
    /// Loads (or replaces) a profile from its source text.
    fn load(&self, profile: &str) -> Result<(), String>;
}

/// Whether profile `name` is in a [`PROFILES_FILE`] listing.
pub fn profile_loaded(listing: &str, name: &str) -> bool {
    listing.lines().any(|line| {
        // The name may hold spaces; the mode is the last, parenthesised word.
        line.rsplit_once(" (")
            .map_or(line, |(profile, _)| profile)
            .trim()
            == name
    })
}

/// Finds out what AppArmor offers containers, loading [`DEFAULT_PROFILE`] when the kernel
/// enforces AppArmor and does not have it yet. A profile already loaded is kept as it is
/// (containerd does the same), so an administrator's replacement survives berthd restarts.
pub fn prepare(sys: &dyn AppArmorSys) -> AppArmor {
    if !sys.kernel_enabled() {
        return AppArmor::Disabled;
    }
    let loaded = match sys.loaded_profiles() {
        Ok(listing) => profile_loaded(&listing, DEFAULT_PROFILE),
        Err(e) => {
            tracing::warn!(file = PROFILES_FILE, error = %e, "listing AppArmor profiles");
            false
        }
    };
    if loaded {
        return AppArmor::Enabled {
            default_profile: true,
        };
    }
    match sys.load(&default_profile()) {
        Ok(()) => {
            tracing::info!(profile = DEFAULT_PROFILE, "loaded AppArmor profile");
            AppArmor::Enabled {
                default_profile: true,
            }
        }
        Err(e) => {
            tracing::warn!(
                profile = DEFAULT_PROFILE,
                error = %e,
                "loading AppArmor profile; containers that ask for RuntimeDefault will be refused"
            );
            AppArmor::Enabled {
                default_profile: false,
            }
        }
    }
}

/// The source of [`DEFAULT_PROFILE`]. It confines what a container can reach of the host
/// beyond what its capabilities and seccomp already bound: no mounts, no writes to kernel
/// tunables or to sysfs outside the cgroup tree, no access to firmware or the security
/// filesystem, and signals and ptrace only among processes of the same profile (the runtime
/// and kubelet, unconfined, may still signal them).
pub fn default_profile() -> String {
    format!(
        r#"# Written by berthd: the AppArmor profile of containers that ask for RuntimeDefault.
#include <tunables/global>

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  signal (receive) peer=unconfined,
  signal (send, receive) peer={name},
  ptrace (trace, read, tracedby, readby) peer={name},

  # Mounts were made by the runtime before the profile applied.
  deny mount,

  # /proc: the top-level files, every directory that is not a process (first character not
  # a digit) apart from sys, and every tunable in sys but the IPC namespace's kernel/shm*.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/[^0-9s]*/** w,
  deny @{{PROC}}/s[^y]*/** w,
  deny @{{PROC}}/sy[^s]*/** w,
  deny @{{PROC}}/sys?*/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/{{sysrq-trigger,kcore}} rwklx,

  # /sys: read-only but for the cgroup tree; firmware and the security filesystem not at all.
  deny /sys/{{[^f]*,f[^s]*,fs/[^c]*,fs/c[^g]*,fs/cg[^r]*}}/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#,
        name = DEFAULT_PROFILE
    )
}

/// The real kernel and `apparmor_parser` (looked up in `PATH`).
pub struct LinuxAppArmor;

impl AppArmorSys for LinuxAppArmor {
    fn kernel_enabled(&self) -> bool {
        std::fs::read_to_string(ENABLED_FILE).is_ok_and(|s| s.trim() == "Y")
            && Path::new(PROFILES_FILE).exists()
    }

    fn loaded_profiles(&self) -> std::io::Result<String> {
        std::fs::read_to_string(PROFILES_FILE)
    }

    fn load(&self, profile: &str) -> Result<(), String> {
        // -r: load or replace; -K: no binary cache (berthd writes nothing under /etc).
        let mut child = Command::new(PARSER)
            .args(["-r", "-K"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {PARSER} (is the apparmor package installed?): {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(profile.as_bytes())
                .map_err(|e| format!("writing the profile to {PARSER}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {PARSER}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{PARSER} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct FakeSys {
        enabled: bool,
        listing: std::io::Result<String>,
        load_result: Result<(), String>,
        loaded: RefCell<Vec<String>>,
    }

    impl FakeSys {
        fn new(enabled: bool, listing: &str, load_result: Result<(), String>) -> FakeSys {
            FakeSys {
                enabled,
                listing: Ok(listing.to_string()),
                load_result,
                loaded: RefCell::new(Vec::new()),
            }
        }
    }

    impl AppArmorSys for FakeSys {
        fn kernel_enabled(&self) -> bool {
            self.enabled
        }
        fn loaded_profiles(&self) -> std::io::Result<String> {
            match &self.listing {
                Ok(s) => Ok(s.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            }
        }
        fn load(&self, profile: &str) -> Result<(), String> {
            self.loaded.borrow_mut().push(profile.to_string());
            self.load_result.clone()
        }
    }

    const LISTING: &str =
        "docker-default (enforce)\n/usr/bin/man (enforce)\nmy profile (complain)\n";

    #[test]
    fn a_kernel_without_apparmor_loads_nothing() {
        let sys = FakeSys::new(false, "", Ok(()));
        assert_eq!(prepare(&sys), AppArmor::Disabled);
        assert!(sys.loaded.borrow().is_empty());
        assert!(!AppArmor::Disabled.enabled());
    }

    #[test]
    fn the_default_profile_is_loaded_once() {
        let sys = FakeSys::new(true, LISTING, Ok(()));
        assert_eq!(
            prepare(&sys),
            AppArmor::Enabled {
                default_profile: true
            }
        );
        let loaded = sys.loaded.borrow();
        assert_eq!(loaded.len(), 1);
        assert!(loaded[0].contains(&format!("profile {DEFAULT_PROFILE} ")));

        let already = FakeSys::new(true, "berth-default (enforce)\n", Err("no".into()));
        assert_eq!(
            prepare(&already),
            AppArmor::Enabled {
                default_profile: true
            }
        );
        assert!(
            already.loaded.borrow().is_empty(),
            "a loaded profile is kept"
        );
    }

    #[test]
    fn a_failed_load_leaves_apparmor_on_without_the_default() {
        let sys = FakeSys::new(true, LISTING, Err("apparmor_parser: not found".into()));
        assert_eq!(
            prepare(&sys),
            AppArmor::Enabled {
                default_profile: false
            }
        );
        let mut unreadable = FakeSys::new(true, "", Ok(()));
        unreadable.listing = Err(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(
            prepare(&unreadable),
            AppArmor::Enabled {
                default_profile: true
            },
            "an unreadable listing means load (replace) it"
        );
    }

    #[test]
    fn profiles_are_matched_by_whole_name() {
        assert!(profile_loaded(LISTING, "docker-default"));
        assert!(profile_loaded(LISTING, "my profile"));
        assert!(profile_loaded(LISTING, "/usr/bin/man"));
        assert!(!profile_loaded(LISTING, "docker"));
        assert!(!profile_loaded(LISTING, "berth-default"));
        assert!(!profile_loaded("", "x"));
    }

    /// The profile compiles: checked with the real parser (the apparmor package, which
    /// hack/lib.sh installs), without loading it into the kernel.
    #[test]
    fn the_default_profile_compiles() {
        let parser = ["/usr/sbin/apparmor_parser", "/sbin/apparmor_parser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("apparmor_parser is missing: install the apparmor package");
        let mut child = Command::new(parser)
            .args(["--skip-kernel-load", "-K", "-o", "/dev/null"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(default_profile().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}
