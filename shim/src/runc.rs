//! The OCI runtime driver: runc's command line, one invocation per call.
//!
//! Every invocation runs with `--log <tmp> --log-format json` and its stdout and stderr in
//! unnamed temp files under the state dir (no pipes to drain while it runs). The exit status comes
//! from the [`Reaper`] (the shim reaps all children, so `Child::wait` cannot be used). A failure
//! keeps the exit status and runc's message (its stderr, else the error lines of its log).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use async_trait::async_trait;

use crate::reaper::Reaper;

#[derive(Debug, thiserror::Error)]
#[error("{command} failed{}: {message}", status.map(|s| format!(" (exit status {s})")).unwrap_or_default())]
pub struct RuncError {
    /// The runtime's name and verb, as in `runc create`.
    pub command: String,
    pub status: Option<u32>,
    pub message: String,
}

/// Where an invocation's stdout and stderr go.
pub enum Stdio2 {
    /// Captured; stdout is returned, stderr kept for errors.
    Capture,
    /// Handed to runc and so to the container process (`create`, `exec --detach`).
    Process { stdout: OwnedFd, stderr: OwnedFd },
}

/// The OCI runtime as the service uses it: runc's verbs. A test implementation stands in for runc
/// in the service's unit tests.
#[async_trait]
pub trait OciRuntime: Send + Sync {
    /// `create --bundle <bundle> --pid-file <pid_file> <id>`, the container's stdio on the fds.
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), RuncError>;
    /// `exec --detach --process <process_json> --pid-file <pid_file> <id>`.
    async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), RuncError>;
    async fn start(&self, id: &str) -> Result<(), RuncError>;
    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError>;
    async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError>;
    async fn pause(&self, id: &str) -> Result<(), RuncError>;
    async fn resume(&self, id: &str) -> Result<(), RuncError>;
    /// `update --resources <resources_json> <id>`.
    async fn update(&self, id: &str, resources_json: &Path) -> Result<(), RuncError>;
    /// The pids of every process in the container.
    async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError>;
}

#[derive(Clone)]
pub struct Runc {
    path: PathBuf,
    root: PathBuf,
    scratch: PathBuf,
    reaper: Reaper,
    hide_unified_cgroup: bool,
}

impl Runc {
    /// With `hide_unified_cgroup`, every invocation runs in a mount namespace without the
    /// hybrid host's cgroup2 mount (see [`hide_unified_cgroup`]).
    pub fn new(
        path: PathBuf,
        root: PathBuf,
        scratch: PathBuf,
        reaper: Reaper,
        hide_unified_cgroup: bool,
    ) -> Runc {
        Runc {
            path,
            root,
            scratch,
            reaper,
            hide_unified_cgroup,
        }
    }

    /// The runtime's file name, for messages: `runc`, `crun`.
    fn name(&self) -> std::borrow::Cow<'_, str> {
        self.path
            .file_name()
            .unwrap_or(self.path.as_os_str())
            .to_string_lossy()
    }

    async fn simple(&self, args: &[&str]) -> Result<(), RuncError> {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        self.run(&args, Stdio2::Capture).await.map(drop)
    }

    async fn run(&self, args: &[&OsStr], stdio: Stdio2) -> Result<Vec<u8>, RuncError> {
        let verb = args
            .first()
            .map(|a| a.to_string_lossy())
            .unwrap_or_default();
        let command = format!("{} {verb}", self.name());
        let fail = |message: String| RuncError {
            command: command.clone(),
            status: None,
            message,
        };
        let io = |what: &str, e: std::io::Error| fail(format!("{what}: {e}"));
        let log = tempfile::NamedTempFile::new_in(&self.scratch)
            .map_err(|e| io("creating runc log file", e))?;
        let mut err =
            tempfile::tempfile_in(&self.scratch).map_err(|e| io("creating stderr file", e))?;
        let mut out =
            tempfile::tempfile_in(&self.scratch).map_err(|e| io("creating stdout file", e))?;

        let mut cmd = Command::new(&self.path);
        let mut global: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        global.extend([
            "--log".into(),
            log.path().into(),
            "--log-format".into(),
            "json".into(),
        ]);
        cmd.args(global).args(args).stdin(Stdio::null());
        if self.hide_unified_cgroup {
            // SAFETY: the closure only makes raw syscalls (unshare, mount, umount2) on static
            // paths; nix passes them from a stack buffer, so nothing allocates after fork.
            unsafe {
                cmd.pre_exec(hide_unified_cgroup);
            }
        }
        match stdio {
            Stdio2::Capture => {
                cmd.stdout(clone(&out).map_err(|e| io("stdout file", e))?);
                cmd.stderr(clone(&err).map_err(|e| io("stderr file", e))?);
            }
            Stdio2::Process { stdout, stderr } => {
                cmd.stdout(stdout).stderr(stderr);
            }
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| io(&format!("running {}", self.path.display()), e))?;
        let exit_rx = self.reaper.subscribe(child_pid(&child), started);
        // The Command holds the container's pipe ends: drop them now, so the reader sees EOF
        // once the container closes its copies.
        drop(cmd);
        drop(child);
        let exit = exit_rx.await.map_err(|_| fail("reaper stopped".into()))?;

        let stdout = read_all(&mut out).map_err(|e| io("reading stdout", e))?;
        if exit.status == 0 {
            return Ok(stdout);
        }
        let stderr = read_all(&mut err).map_err(|e| io("reading stderr", e))?;
        let mut message = String::from_utf8_lossy(&stderr).trim().to_string();
        if message.is_empty() {
            message = log_errors(&std::fs::read(log.path()).unwrap_or_default());
        }
        Err(RuncError {
            command,
            status: Some(exit.status),
            message,
        })
    }
}

/// Where a hybrid host mounts its cgroup2 hierarchy next to the v1 controllers.
const UNIFIED_MOUNT: &str = "/sys/fs/cgroup/unified";

/// Runs in the forked child before the runtime is exec'd: gives it a mount namespace of its
/// own without the hybrid host's cgroup2 mount, so it sees a v1-only host and manages every
/// controller through v1. crun refuses hybrid hosts whose cgroup2 hierarchy holds any
/// controller ("cgroups in hybrid mode not supported"), and the host's mounts are not berth's
/// to change. /sys/fs/cgroup turns private first so that the unmount does not propagate back
/// to the host; every other mount keeps its propagation, so containers' shared mounts still
/// reach the host.
fn hide_unified_cgroup() -> std::io::Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/sys/fs/cgroup",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    umount2(UNIFIED_MOUNT, MntFlags::MNT_DETACH)?;
    Ok(())
}

#[async_trait]
impl OciRuntime for Runc {
    async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), RuncError> {
        let args: [&OsStr; 6] = [
            "create".as_ref(),
            "--bundle".as_ref(),
            bundle.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
        ];
        self.run(&args, Stdio2::Process { stdout, stderr })
            .await
            .map(drop)
    }

    async fn exec(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<(), RuncError> {
        let args: [&OsStr; 7] = [
            "exec".as_ref(),
            "--detach".as_ref(),
            "--process".as_ref(),
            process_json.as_os_str(),
            "--pid-file".as_ref(),
            pid_file.as_os_str(),
            id.as_ref(),
        ];
        self.run(&args, Stdio2::Process { stdout, stderr })
            .await
            .map(drop)
    }

    async fn start(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["start", id]).await
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuncError> {
        let sig = signal.to_string();
        if all {
            self.simple(&["kill", "--all", id, &sig]).await
        } else {
            self.simple(&["kill", id, &sig]).await
        }
    }

    async fn delete(&self, id: &str, force: bool) -> Result<(), RuncError> {
        if force {
            self.simple(&["delete", "--force", id]).await
        } else {
            self.simple(&["delete", id]).await
        }
    }

    async fn pause(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["pause", id]).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuncError> {
        self.simple(&["resume", id]).await
    }

    async fn update(&self, id: &str, resources_json: &Path) -> Result<(), RuncError> {
        let args: [&OsStr; 4] = [
            "update".as_ref(),
            "--resources".as_ref(),
            resources_json.as_os_str(),
            id.as_ref(),
        ];
        self.run(&args, Stdio2::Capture).await.map(drop)
    }

    /// The pids of every process in the container, from `runc ps --format json`.
    async fn ps(&self, id: &str) -> Result<Vec<u32>, RuncError> {
        let args: [&OsStr; 4] = [
            "ps".as_ref(),
            "--format".as_ref(),
            "json".as_ref(),
            id.as_ref(),
        ];
        let out = self.run(&args, Stdio2::Capture).await?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| RuncError {
                command: format!("{} ps", self.name()),
                status: None,
                message: format!("parsing output: {e}"),
            })
    }
}

fn clone(f: &File) -> std::io::Result<File> {
    f.try_clone()
}

fn child_pid(child: &std::process::Child) -> i32 {
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

fn read_all(f: &mut File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// The `msg` of every error-level line of a runc JSON log, joined.
fn log_errors(log: &[u8]) -> String {
    let msgs: Vec<String> = String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    if msgs.is_empty() {
        "no error message from runc".into()
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_keeps_error_lines_only() {
        let log = br#"{"level":"info","msg":"hello","time":"x"}
{"level":"error","msg":"container not running","time":"x"}
not json"#;
        assert_eq!(log_errors(log), "container not running");
        assert_eq!(log_errors(b""), "no error message from runc");
    }

    #[test]
    fn error_message_names_command_and_status() {
        let e = RuncError {
            command: "runc kill".into(),
            status: Some(1),
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "runc kill failed (exit status 1): boom");
    }

    fn mount_points(mountinfo: &str) -> Vec<&str> {
        mountinfo
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect()
    }

    /// On a hybrid host (this test's subject; elsewhere there is nothing to hide), a runtime
    /// started with the hook sees every cgroup v1 mount but not the cgroup2 one, and the host
    /// keeps it.
    #[test]
    fn the_hook_hides_only_the_unified_mount_and_only_from_the_child() {
        let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if !mount_points(&host).contains(&UNIFIED_MOUNT) || !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: not root on a hybrid cgroup host");
            return;
        }
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/mountinfo");
        // SAFETY: as in `Runc::run`.
        unsafe {
            cmd.pre_exec(hide_unified_cgroup);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let child = String::from_utf8(out.stdout).unwrap();
        let child_mounts = mount_points(&child);
        assert!(!child_mounts.contains(&UNIFIED_MOUNT), "{child}");
        let v1_mounts: Vec<&str> = mount_points(&host)
            .into_iter()
            .filter(|m| m.starts_with("/sys/fs/cgroup/") && *m != UNIFIED_MOUNT)
            .collect();
        assert!(!v1_mounts.is_empty(), "{host}");
        for m in v1_mounts {
            assert!(child_mounts.contains(&m), "{m} missing in {child}");
        }
        let after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mount_points(&after).contains(&UNIFIED_MOUNT));
    }
}
