//! Per-pod shims: starting `berth-shim` detached, talking to it over ttrpc, and stopping it.
//!
//! A shim is started in its own session with stdin on /dev/null, so that neither a signal to
//! berthd's process group nor berthd's death reaches it. It prints its address on stdout once
//! it serves (see `shim/src/main.rs`); its stderr goes to `<shim dir>/stderr`, which is quoted
//! when start-up fails.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_proto::shim::api::ShutdownRequest;
use berth_proto::shim::shim_async::{Client, TaskClient};
use berth_proto::shim::ttrpc::context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::runtime::Handle;

use crate::cgroups::{CgroupFs, SHIM_CGROUP};
use crate::sandbox::service::{ShimError, ShimLauncher, ShimProcess};

/// How long a shim may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ttrpc call to a shim may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a shim may take to exit after Shutdown before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The name of the shim binary.
pub const SHIM_BINARY: &str = "berth-shim";

/// Finds `berth-shim`: next to berthd's own executable first, then in `PATH`.
pub fn locate_shim() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(SHIM_BINARY)));
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    beside
        .into_iter()
        .chain(std::env::split_paths(&path_var).map(|d| d.join(SHIM_BINARY)))
        .find(|p| p.is_file())
}

/// How many leading characters of the pod id name its shim's directory: the socket path in it
/// must fit a unix socket address (107 bytes), and 128 random bits are as unique as 256.
const SHIM_DIR_ID_LEN: usize = 32;

/// The shim directory of pod `id`: `<state>/shims/<first 32 characters of id>`.
pub fn shim_dir(state: &Path, id: &str) -> PathBuf {
    let short = id.get(..SHIM_DIR_ID_LEN).unwrap_or(id);
    state.join("shims").join(short)
}

/// The file in a shim's directory where it writes its PID namespace holder's pid.
const PID_HOLDER_FILE: &str = "pid-holder";
/// The process name the holder gives itself (shim/src/pidns.rs).
const HOLDER_NAME: &str = "berth-pidns";

/// The file in a shim's directory naming the OCI runtime binary it drives.
const RUNTIME_FILE: &str = "runtime";
/// How long the OCI runtime may take to force-delete a container whose shim is gone.
const ORPHAN_DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shims of berthd's pods. Its methods block (the sandbox service is synchronous) and run
/// the async ttrpc client and process handling on berthd's runtime through `runtime`; call them
/// from blocking threads (`spawn_blocking`), never from a runtime worker.
pub struct ProcessShims {
    binary: PathBuf,
    /// Shims are moved to [`SHIM_CGROUP`] so that they (and the runtimes they run) are not
    /// charged to berthd and survive whatever happens to berthd's cgroup.
    cgroups: CgroupFs,
    /// `<state>`: shims live in `<state>/shims/`, runc keeps state in `<state>/runc`.
    state: PathBuf,
    runtime: Handle,
    spawner: Spawner,
    clients: Mutex<HashMap<String, TaskClient>>,
    /// Runtime binaries whose shims run them without the hybrid host's cgroup2 mount.
    hide_unified_cgroup: BTreeSet<PathBuf>,
}

/// Where shims are forked: a thread of its own with a current-thread runtime, placed once in
/// [`SHIM_CGROUP`] of every cgroup v1 hierarchy, so that each shim is born there. Moving a
/// process afterwards costs a few milliseconds per hierarchy (ten of them on a v1 host), on
/// the RunPodSandbox path. Only the cgroup2 hierarchy, which takes whole processes, still
/// needs a move per shim.
struct Spawner {
    handle: Handle,
    /// Whether the thread made it into every v1 hierarchy; otherwise shims are moved in all.
    in_v1_cgroup: bool,
}

impl Spawner {
    fn start(cgroups: &CgroupFs, fallback: &Handle) -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel();
        let cg = cgroups.clone();
        let thread = std::thread::Builder::new()
            .name("shim-spawner".into())
            .spawn(move || {
                let tid = u32::try_from(nix::unistd::gettid().as_raw()).unwrap_or(0);
                let problems = cg.enter_thread_v1(SHIM_CGROUP, tid);
                for problem in &problems {
                    tracing::warn!(%problem, "placing the shim spawner thread");
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::warn!(error = %e, "shim spawner runtime");
                        return;
                    }
                };
                if tx.send((rt.handle().clone(), problems.is_empty())).is_ok() {
                    rt.block_on(std::future::pending::<()>());
                }
            });
        match thread.ok().and_then(|_| rx.recv().ok()) {
            Some((handle, in_v1_cgroup)) => Spawner {
                handle,
                in_v1_cgroup,
            },
            None => Spawner {
                handle: fallback.clone(),
                in_v1_cgroup: false,
            },
        }
    }
}

impl ProcessShims {
    pub fn new(
        binary: PathBuf,
        cgroups: CgroupFs,
        state: PathBuf,
        runtime: Handle,
    ) -> ProcessShims {
        let spawner = Spawner::start(&cgroups, &runtime);
        ProcessShims {
            binary,
            cgroups,
            state,
            runtime,
            spawner,
            clients: Mutex::new(HashMap::new()),
            hide_unified_cgroup: BTreeSet::new(),
        }
    }

    /// Shims of pods on these runtime binaries run them without /sys/fs/cgroup/unified
    /// ([`crate::node::RuntimeBinary::hide_unified_cgroup`]).
    pub fn hiding_unified_cgroup_for(
        mut self,
        runtimes: impl IntoIterator<Item = PathBuf>,
    ) -> Self {
        self.hide_unified_cgroup = runtimes.into_iter().collect();
        self
    }

    fn dir(&self, id: &str) -> PathBuf {
        shim_dir(&self.state, id)
    }

    /// The task client of pod `id`'s shim, while berthd is connected to it.
    pub fn client(&self, id: &str) -> Option<TaskClient> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Deletes container `container` of pod `id` with the pod's OCI runtime directly
    /// (`delete --force`: kills its processes, removes its cgroup and runtime state), for when
    /// the pod's shim is gone and cannot do it. A container the runtime does not know is fine.
    pub fn delete_orphan(&self, id: &str, container: &str) -> Result<(), String> {
        let runtime_file = self.dir(id).join(RUNTIME_FILE);
        let runtime = match std::fs::read(&runtime_file) {
            Ok(bytes) => PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()),
            // No shim was ever started for the pod, so no container either.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("reading {}: {e}", runtime_file.display())),
        };
        let root = self.state.join("runc");
        let mut cmd = Command::new(&runtime);
        cmd.arg("--root")
            .arg(&root)
            .args(["delete", "--force", container])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = self
            .runtime
            .block_on(async { tokio::time::timeout(ORPHAN_DELETE_TIMEOUT, cmd.output()).await });
        let output = match output {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(format!("running {}: {e}", runtime.display())),
            Err(_) => {
                return Err(format!(
                    "{} delete {container} took more than {ORPHAN_DELETE_TIMEOUT:?}",
                    runtime.display()
                ));
            }
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || stderr.contains("does not exist") {
            return Ok(());
        }
        Err(format!(
            "{} delete --force {container}: {}",
            runtime.display(),
            stderr.trim()
        ))
    }

    fn connect(&self, id: &str, address: &str) -> Result<(), ShimError> {
        let client = self.runtime.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, Client::connect(address))
                .await
                .unwrap_or_else(|_| {
                    Err(berth_proto::shim::ttrpc::Error::Others("timed out".into()))
                })
        });
        let client = client.map_err(|e| ShimError::Connect {
            id: id.to_string(),
            address: address.to_string(),
            message: e.to_string(),
        })?;
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string(), TaskClient::new(client));
        Ok(())
    }
}

/// Moves a process the spawner forked (or a child of one) into [`SHIM_CGROUP`] in the
/// hierarchies where it was not born there.
fn enter_shim_cgroup(cgroups: &CgroupFs, in_v1_cgroup: bool, pid: u32) -> Vec<String> {
    if in_v1_cgroup {
        cgroups.enter_unified(SHIM_CGROUP, pid)
    } else {
        cgroups.enter(SHIM_CGROUP, pid)
    }
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether `pid` is the live PID namespace holder of pod `id`: the shim binary run as
/// `berth-pidns --id <pod id>` (shim/src/pidns.rs).
fn is_holder_of(pid: u32, id: &str) -> bool {
    is_shim_of(pid, id)
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == HOLDER_NAME)
}

/// Whether `pid` is a live `berth-shim` serving pod `id` (not a recycled pid, not a zombie).
fn is_shim_of(pid: u32, id: &str) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args
        .windows(2)
        .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    ours && !zombie
}

impl ShimLauncher for ProcessShims {
    fn start(&self, id: &str, runtime: &Path, share_pid: bool) -> Result<ShimProcess, ShimError> {
        let start_err = |message: String| ShimError::Start {
            id: id.to_string(),
            message,
        };
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| start_err(format!("creating {}: {e}", dir.display())))?;
        // Read back when the shim is gone and its containers must be deleted without it.
        let runtime_file = dir.join(RUNTIME_FILE);
        std::fs::write(&runtime_file, runtime.as_os_str().as_encoded_bytes())
            .map_err(|e| start_err(format!("writing {}: {e}", runtime_file.display())))?;
        let stderr_path = dir.join("stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| start_err(format!("creating {}: {e}", stderr_path.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--id")
            .arg(id)
            .arg("--state-dir")
            .arg(&dir)
            .arg("--runtime")
            .arg(runtime)
            .arg("--runtime-root")
            .arg(self.state.join("runc"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent; it is the
        // only thing run between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
        }
        let holder_file = dir.join(PID_HOLDER_FILE);
        if share_pid {
            cmd.arg("--pid-holder").arg(&holder_file);
        }
        if self.hide_unified_cgroup.contains(runtime) {
            cmd.arg("--hide-unified-cgroup");
        }
        let binary = self.binary.clone();
        let cgroups = self.cgroups.clone();
        let in_v1_cgroup = self.spawner.in_v1_cgroup;
        let pod = id.to_string();
        // Runs on the spawner's thread, so that the fork happens there (see `Spawner`).
        let spawned = self.spawner.handle.spawn(async move {
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("running {}: {e}", binary.display()))?;
            let pid = child.id().unwrap_or(0);
            // Before it can start a runtime, so every child it forks is born there.
            for problem in enter_shim_cgroup(&cgroups, in_v1_cgroup, pid) {
                tracing::warn!(pod.id = %pod, %problem, "moving the shim out of berthd's cgroup");
            }
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let mut out = BufReader::new(out);
                let _ = tokio::time::timeout(START_TIMEOUT, out.read_line(&mut line)).await;
            }
            let address = line.trim().to_string();
            if !address.starts_with("unix://") {
                let _ = child.kill().await;
                return Err(format!(
                    "{} printed no address within {START_TIMEOUT:?}",
                    binary.display()
                ));
            }
            // The shim outlives this call; a task reaps it when it exits so no zombie stays.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            Ok((pid, address))
        });
        let (pid, address) = self
            .runtime
            .block_on(spawned)
            .map_err(|e| format!("shim spawner: {e}"))
            .and_then(|r| r)
            .map_err(|message| {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                start_err(format!("{message}: {}", stderr.trim()))
            })?;
        let pid_holder = if share_pid {
            match read_pid(&holder_file) {
                Some(holder) => holder,
                None => {
                    let _ = self.stop(id, Some(pid));
                    return Err(start_err(format!(
                        "the shim wrote no pid namespace holder to {}",
                        holder_file.display()
                    )));
                }
            }
        } else {
            0
        };
        if pid_holder != 0 {
            for problem in enter_shim_cgroup(&self.cgroups, self.spawner.in_v1_cgroup, pid_holder) {
                tracing::warn!(pod.id = %id, %problem, "moving the pid namespace holder");
            }
        }
        if let Err(e) = self.connect(id, &address) {
            let _ = self.stop(id, Some(pid));
            return Err(e);
        }
        Ok(ShimProcess {
            address,
            pid,
            pid_holder,
        })
    }

    fn alive(&self, id: &str, shim: &ShimProcess) -> bool {
        shim.pid != 0 && is_shim_of(shim.pid, id)
    }

    fn reconnect(&self, id: &str, shim: &ShimProcess) -> Result<(), ShimError> {
        self.connect(id, &shim.address)
    }

    fn stop(&self, id: &str, pid: Option<u32>) -> Result<(), ShimError> {
        let client = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let sock = self.dir(id).join("shim.sock");
        let req = ShutdownRequest {
            id: id.to_string(),
            now: true,
            ..Default::default()
        };
        let timeout = i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        self.runtime.block_on(async {
            let client = match client {
                Some(c) => Some(c),
                None if sock.exists() => {
                    let address = format!("unix://{}", sock.display());
                    tokio::time::timeout(CALL_TIMEOUT, Client::connect(&address))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(TaskClient::new)
                }
                None => None,
            };
            if let Some(client) = client {
                // The shim may exit before its answer arrives; whether it went is checked below.
                let call = client.shutdown(context::with_timeout(timeout), &req);
                if let Ok(Err(e)) = tokio::time::timeout(CALL_TIMEOUT, call).await {
                    tracing::debug!(pod.id = %id, error = %e, "shim shutdown call");
                }
            }
        });
        // The pod's PID namespace goes with its shim; killing its init kills whatever is left
        // in it. Checked by name too: the file may outlive the holder, and its pid be reused.
        if let Some(holder) = read_pid(&self.dir(id).join(PID_HOLDER_FILE))
            && is_holder_of(holder, id)
        {
            kill(Pid::from_raw(holder as i32), Signal::SIGKILL).map_err(|e| ShimError::Stop {
                id: id.to_string(),
                message: format!("kill pid namespace holder {holder}: {e}"),
            })?;
        }
        let Some(pid) = pid else {
            return Ok(());
        };
        let deadline = Instant::now() + EXIT_GRACE;
        while is_shim_of(pid, id) {
            if Instant::now() >= deadline {
                tracing::warn!(pod.id = %id, shim.pid = pid, "shim lingers after shutdown; killing it");
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|e| ShimError::Stop {
                    id: id.to_string(),
                    message: format!("kill {pid}: {e}"),
                })?;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn shim_dir_uses_a_short_id() {
        let id = "a".repeat(64);
        let dir = shim_dir(Path::new("/run/berth"), &id);
        assert_eq!(dir, Path::new("/run/berth/shims").join("a".repeat(32)));
        assert_eq!(
            shim_dir(Path::new("/s"), "short"),
            Path::new("/s/shims/short")
        );
    }

    #[test]
    fn a_shim_that_fails_to_start_is_reported_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-shim");
        std::fs::write(&fake, "#!/bin/sh\necho 'boom: cannot bind' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let shims = ProcessShims::new(
            fake,
            CgroupFs::from_mountinfo(""),
            dir.path().into(),
            rt.handle().clone(),
        );
        let err = shims
            .start("pod1", Path::new("/usr/sbin/runc"), false)
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ShimError::Start { .. }), "{msg}");
        assert!(
            msg.contains("pod1") && msg.contains("boom: cannot bind"),
            "{msg}"
        );
        // Nothing to stop, and stopping is idempotent.
        shims.stop("pod1", None).unwrap();
    }

    #[test]
    fn only_runtimes_set_to_hide_the_unified_cgroup_get_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-shim");
        let args_file = dir.path().join("args");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\nexit 1\n",
                args_file.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let shims = ProcessShims::new(
            fake,
            CgroupFs::from_mountinfo(""),
            dir.path().into(),
            rt.handle().clone(),
        )
        .hiding_unified_cgroup_for([PathBuf::from("/usr/bin/crun")]);
        // The fake prints no address, so both starts fail after it ran.
        assert!(
            shims
                .start("pod1", Path::new("/usr/bin/crun"), false)
                .is_err()
        );
        assert!(
            shims
                .start("pod2", Path::new("/usr/sbin/runc"), false)
                .is_err()
        );
        let lines = std::fs::read_to_string(&args_file).unwrap();
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("--id pod1") && lines[0].contains("--hide-unified-cgroup"));
        assert!(lines[1].contains("--id pod2") && !lines[1].contains("--hide-unified-cgroup"));
    }

    #[test]
    fn only_a_live_shim_of_the_pod_counts_as_alive() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let shims = ProcessShims::new(
            "/x".into(),
            CgroupFs::from_mountinfo(""),
            "/tmp".into(),
            rt.handle().clone(),
        );
        let me = ShimProcess {
            address: String::new(),
            pid: std::process::id(),
            pid_holder: 0,
        };
        assert!(!shims.alive("pod1", &me), "the test process is no shim");
        assert!(!shims.alive(
            "pod1",
            &ShimProcess {
                address: String::new(),
                pid: 0,
                pid_holder: 0,
            }
        ));
    }
}
