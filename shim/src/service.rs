//! The `containerd.task.v3.Task` service: the containers of one pod, driven through runc.
//!
//! # API subset and semantics
//!
//! Every request names a container by `id` (the task id, e.g. the CRI container id; the pod's
//! sandbox holder is a container like any other). `exec_id` empty means the container's init
//! process, otherwise an exec process added with `Exec`. Unknown ids answer NotFound, calls in
//! the wrong state FailedPrecondition, a failed runc command Unknown with runc's message
//! (`<runtime> <command> failed (exit status N): <its stderr or logged error>`).
//!
//! - `Create{id, bundle, stdout, stderr}`: `runc create` on `<bundle>` (berthd prepared
//!   `config.json` and `rootfs/`; `rootfs` mounts, `terminal`, `stdin` and `checkpoint` are
//!   refused with Unimplemented). `process.oomScoreAdj` below the shim's own is raised to it in
//!   `config.json`. `stdout` is the CRI log file path; `stderr` empty or equal means the same file,
//!   another path a second log file; both empty: output goes to /dev/null. Returns the init pid;
//!   the container is CREATED.
//! - `Start{id}`: `runc start`; CREATED to RUNNING. `Start{id, exec_id}`: `runc exec --detach`
//!   of the process added by `Exec`; the container must be RUNNING. Both return the pid.
//! - `Exec{id, exec_id, spec, stdout, stderr}`: records an exec process (not started):
//!   `spec.value` is the OCI process JSON (`type_url` is not checked); `stdout`/`stderr` are paths
//!   the process writes to directly: a FIFO (opened read-write, so the open never waits for the
//!   reader), or a regular file (created, appended); `stderr` empty or equal to `stdout` shares it;
//!   both empty: /dev/null. `terminal` and `stdin` are refused with Unimplemented.
//! - `State{id, exec_id}`: pid, status (CREATED, RUNNING, PAUSED, STOPPED), exit status and time
//!   once stopped, the stdout/stderr paths given at creation. For an init that was OOM-killed the
//!   response carries the extension field [`OOM_KILLED_FIELD`] (unknown field 1000, varint 1):
//!   the task API has no field for it. OOM means the `oom_kill` counter of the container's cgroup
//!   (v1 `memory.oom_control`, v2 `memory.events`) rose between creation and its init's exit.
//! - `Wait{id, exec_id}`: returns once the process has exited and its log copiers have drained
//!   (at most 2 s after the exit): `exit_status` (exit code, or 128 + signal) and `exited_at`.
//! - `Kill{id, exec_id, signal, all}`: init: `runc kill [--all]`; exec: kill(2) on its pid. A
//!   process that already exited answers NotFound ("process ... already finished"), as containerd.
//! - `Delete{id}`: refused (FailedPrecondition) while RUNNING or PAUSED; otherwise
//!   `runc delete --force` (a CREATED init is killed), the container is forgotten and its work dir
//!   removed; returns pid, exit status and time. `Delete{id, exec_id}` forgets a stopped or
//!   never-started exec.
//! - `Pids{id}`: `runc ps` pids (empty once stopped); no per-exec details.
//! - `Pause`/`Resume{id}`: `runc pause`/`runc resume`; RUNNING to PAUSED and back.
//! - `Update{id, resources, annotations}`: with annotation `berth.reopen-log` = `1` (or `true`) the
//!   container's log file(s) are reopened at their path (kubelet renamed the old file when
//!   rotating: ReopenContainerLog). A non-empty `resources.value` (the OCI LinuxResources JSON)
//!   goes to `runc update --resources`. Both may come in one request.
//! - `Stats{id}`: an `Any` holding containerd's metrics message of the host's cgroup version, as
//!   containerd's runc shim answers. cgroup v1 (and hybrid) hosts:
//!   [`METRICS_V1_TYPE_URL`](crate::cgroup::METRICS_V1_TYPE_URL), the v1 `Metrics` with memory
//!   usage/limit/max/failcnt (+ memsw), a few `memory.stat` fields, OOM control, and cpuacct usage
//!   (total, user, kernel, per CPU). cgroup v2 hosts:
//!   [`METRICS_V2_TYPE_URL`](crate::cgroup::METRICS_V2_TYPE_URL), the v2 `Metrics` with pids,
//!   `cpu.stat`, memory (current, max, peak, swap, `memory.stat`), `memory.events` and `io.stat`.
//!   Unimplemented when no cgroup was found.
//! - `Connect{id}`: the shim pid, the init pid and the shim version.
//! - `CloseIO`: accepted, nothing to close (no stdin). `ResizePty`: FailedPrecondition (no
//!   terminal). `Checkpoint`: Unimplemented.
//! - `Shutdown{now}`: exits the shim when no container is left, or right away with `now`
//!   (containers keep running); otherwise ignored, as containerd's shims do.
//!
//! # Implementation
//!
//! State lives in one map behind a mutex that is never held across an `await`; a call checks
//! the state, releases the lock, runs runc, and records the result. Each process (a container's
//! init, or an exec) has an exit watch: a monitor task waits for its exit from the reaper, lets
//! its log copiers drain, and then records the exit, so `Wait` returns only once the log holds
//! everything the process wrote.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, pipe2};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::cgroup::CgroupPaths;
use crate::error::{Error, to_ttrpc};
use crate::logs::{LogFile, Stream, copy_to_log};
use crate::reaper::{Exit, Reaper};
use crate::runc::OciRuntime;
use crate::spec::{clamp_oom_score_adj, has_own_pid_namespace};

/// `UpdateTaskRequest.annotations` key: reopen the container's log file(s) at the same path.
pub const REOPEN_LOG_ANNOTATION: &str = "berth.reopen-log";

/// Unknown-field number on `StateResponse` (varint, 1 = true) set when the container's init was
/// OOM-killed: the task API has no field for it. Read it with
/// `resp.special_fields.unknown_fields().get(OOM_KILLED_FIELD)`.
pub const OOM_KILLED_FIELD: u32 = 1000;

/// How long an exited process's log copiers may take to drain before the exit is recorded anyway
/// (a daemonized child inside the container can keep the pipe open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    Paused,
}

struct Proc {
    pid: u32,
    phase: Phase,
    /// Reaped, with its exit not yet published (the log copiers are draining): not signallable.
    reaped: bool,
    exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    fn new(pid: u32) -> Proc {
        Proc {
            pid,
            phase: Phase::Created,
            reaped: false,
            exit: watch::Sender::new(None),
        }
    }

    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    fn status(&self) -> Status {
        match (self.exited(), self.phase) {
            (Some(_), _) => Status::STOPPED,
            (None, Phase::Created) => Status::CREATED,
            (None, Phase::Running) => Status::RUNNING,
            (None, Phase::Paused) => Status::PAUSED,
        }
    }
}

struct ExecProc {
    proc: Proc,
    spec: Vec<u8>,
    stdout: String,
    stderr: String,
}

struct Container {
    bundle: String,
    stdout: String,
    stderr: String,
    work_dir: PathBuf,
    init: Proc,
    execs: HashMap<String, ExecProc>,
    cgroups: CgroupPaths,
    logs: Vec<Arc<LogFile>>,
    oom_killed: bool,
    /// No pid namespace of its own: on init exit, `runc kill --all` ends the rest (as containerd).
    shared_pid_ns: bool,
}

impl Container {
    /// The init (empty exec id) or the named exec process.
    fn proc_mut(&mut self, exec_id: &str) -> Option<&mut Proc> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id).map(|e| &mut e.proc)
        }
    }
}

/// Fixed facts the service needs from `main`.
pub struct Config {
    pub state_dir: PathBuf,
    pub oom_score_adj_floor: i64,
}

pub struct Service {
    cfg: Config,
    runc: Arc<dyn OciRuntime>,
    reaper: Reaper,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    shutdown: Arc<Notify>,
}

type Result<T> = std::result::Result<T, Error>;

impl Service {
    pub fn new(
        cfg: Config,
        runc: Arc<dyn OciRuntime>,
        reaper: Reaper,
        shutdown: Arc<Notify>,
    ) -> Service {
        Service {
            cfg,
            runc,
            reaper,
            containers: Arc::default(),
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut map = self.lock();
        let c = map
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        f(c)
    }

    /// Runs `f` on the init (empty exec id) or the named exec process.
    fn with_proc<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Proc) -> Result<T>,
    ) -> Result<T> {
        self.with(id, |c| {
            if exec_id.is_empty() {
                return f(&mut c.init);
            }
            let e = c
                .execs
                .get_mut(exec_id)
                .ok_or_else(|| Error::ExecNotFound {
                    id: id.to_string(),
                    exec_id: exec_id.to_string(),
                })?;
            f(&mut e.proc)
        })
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        validate_id(&id)?;
        if req.terminal {
            return Err(Error::Unimplemented(
                "terminal containers are not supported".into(),
            ));
        }
        if !req.stdin.is_empty() {
            return Err(Error::Unimplemented(
                "container stdin is not supported".into(),
            ));
        }
        if !req.rootfs.is_empty() {
            return Err(Error::Unimplemented(
                "rootfs mounts are not supported: prepare <bundle>/rootfs".into(),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "restoring from a checkpoint is not supported".into(),
            ));
        }
        if self.lock().contains_key(&id) {
            return Err(Error::AlreadyExists(format!("container {id}")));
        }
        let bundle = PathBuf::from(&req.bundle);
        let shared_pid_ns = self.prepare_bundle(&bundle)?;
        let work_dir = self.cfg.state_dir.join("containers").join(&id);
        std::fs::create_dir_all(&work_dir)
            .map_err(Error::io(format!("creating {}", work_dir.display())))?;

        let stdout_log = open_log(&req.stdout)?;
        let stderr_log = if req.stderr.is_empty() || req.stderr == req.stdout {
            stdout_log.clone()
        } else {
            open_log(&req.stderr)?
        };
        let mut copiers = Vec::new();
        let out_fd = log_pipe(stdout_log.as_ref(), Stream::Stdout, &mut copiers)?;
        let err_fd = log_pipe(stderr_log.as_ref(), Stream::Stderr, &mut copiers)?;

        let pid_file = work_dir.join("init.pid");
        let started = Instant::now();
        if let Err(e) = self
            .runc
            .create(&id, &bundle, &pid_file, out_fd, err_fd)
            .await
        {
            let _ = self.runc.delete(&id, true).await;
            let _ = std::fs::remove_dir_all(&work_dir);
            return Err(e.into());
        }
        let pid = read_pid(&pid_file)?;
        let exit_rx = self
            .reaper
            .subscribe(i32::try_from(pid).unwrap_or(i32::MAX), started);
        let logs: Vec<Arc<LogFile>> = {
            let mut v: Vec<Arc<LogFile>> = stdout_log.into_iter().collect();
            v.extend(stderr_log.filter(|l| !v.iter().any(|o| Arc::ptr_eq(o, l))));
            v
        };
        let container = Container {
            bundle: req.bundle,
            stdout: req.stdout,
            stderr: req.stderr,
            work_dir,
            init: Proc::new(pid),
            execs: HashMap::new(),
            cgroups: CgroupPaths::of_pid(pid),
            logs,
            oom_killed: false,
            shared_pid_ns,
        };
        self.lock().insert(id.clone(), container);
        self.spawn_monitor(id, String::new(), exit_rx, copiers);
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    /// Clamps `process.oomScoreAdj` in the bundle's config.json; returns whether the container
    /// shares a pid namespace (its processes then outlive its init unless killed).
    fn prepare_bundle(&self, bundle: &Path) -> Result<bool> {
        let path = bundle.join("config.json");
        let text =
            std::fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
        let mut spec: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::InvalidArgument(format!("parsing {}: {e}", path.display())))?;
        if let Some(process) = spec.get_mut("process")
            && clamp_oom_score_adj(process, self.cfg.oom_score_adj_floor)
        {
            tracing::info!(path = %path.display(), floor = self.cfg.oom_score_adj_floor, "raised oomScoreAdj");
            let text =
                serde_json::to_vec(&spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            std::fs::write(&path, text)
                .map_err(Error::io(format!("writing {}", path.display())))?;
        }
        Ok(!has_own_pid_namespace(&spec))
    }

    /// Waits for a process's exit, lets its log copiers drain, then records the exit.
    fn spawn_monitor(
        &self,
        id: String,
        exec_id: String,
        exit_rx: oneshot::Receiver<Exit>,
        copiers: Vec<JoinHandle<()>>,
    ) {
        let containers = self.containers.clone();
        let runtime = self.runc.clone();
        tokio::spawn(async move {
            let Ok(exit) = exit_rx.await else { return };
            let lock = || containers.lock().unwrap_or_else(|e| e.into_inner());
            let mut kill_rest = false;
            if let Some(c) = lock().get_mut(&id) {
                kill_rest = exec_id.is_empty() && c.shared_pid_ns;
                if let Some(p) = c.proc_mut(&exec_id) {
                    p.reaped = true;
                }
            }
            if kill_rest && let Err(e) = runtime.kill(&id, Signal::SIGKILL as u32, true).await {
                tracing::warn!(container.id = %id, error = %e, "killing the rest of the container");
            }
            let drain = async {
                for c in copiers {
                    let _ = c.await;
                }
            };
            if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
                tracing::warn!(container.id = %id, "log copiers still busy after exit; recording exit anyway");
            }
            let mut map = lock();
            let Some(c) = map.get_mut(&id) else { return };
            if exec_id.is_empty() {
                c.oom_killed = c.cgroups.oom_kills() > 0;
            }
            if let Some(p) = c.proc_mut(&exec_id) {
                tracing::info!(container.id = %id, exec.id = %exec_id, pid = p.pid, status = exit.status, "process exited");
                p.exit.send_replace(Some(exit));
            }
        });
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let mut resp = StartResponse::new();
        if req.exec_id.is_empty() {
            let pid = self.with_proc(&req.id, "", |p| match p.status() {
                Status::CREATED => Ok(p.pid),
                s => Err(Error::FailedPrecondition(format!(
                    "container {} is {s:?}, not CREATED",
                    req.id
                ))),
            })?;
            self.runc.start(&req.id).await?;
            self.with_proc(&req.id, "", |p| {
                p.phase = Phase::Running;
                Ok(())
            })?;
            resp.pid = pid;
            return Ok(resp);
        }
        let (spec, stdout, stderr, work_dir) = self.with(&req.id, |c| {
            if c.init.status() != Status::RUNNING {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not running",
                    req.id
                )));
            }
            let e = c
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| Error::ExecNotFound {
                    id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                })?;
            if e.proc.pid != 0 || e.proc.exited().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} was already started",
                    req.exec_id
                )));
            }
            Ok((
                e.spec.clone(),
                e.stdout.clone(),
                e.stderr.clone(),
                c.work_dir.clone(),
            ))
        })?;
        let process_json = work_dir.join(format!("exec-{}.json", req.exec_id));
        std::fs::write(&process_json, &spec)
            .map_err(Error::io(format!("writing {}", process_json.display())))?;
        let out = open_exec_output(&stdout).await?;
        let err = if stderr.is_empty() || stderr == stdout {
            out.try_clone()
                .map_err(Error::io("duplicating exec stdout"))?
        } else {
            open_exec_output(&stderr).await?
        };
        let pid_file = work_dir.join(format!("exec-{}.pid", req.exec_id));
        let started = Instant::now();
        let result = self
            .runc
            .exec(&req.id, &process_json, &pid_file, out.into(), err.into())
            .await;
        let _ = std::fs::remove_file(&process_json);
        result?;
        let pid = read_pid(&pid_file)?;
        let _ = std::fs::remove_file(&pid_file);
        let exit_rx = self
            .reaper
            .subscribe(i32::try_from(pid).unwrap_or(i32::MAX), started);
        self.with_proc(&req.id, &req.exec_id, |p| {
            p.pid = pid;
            p.phase = Phase::Running;
            Ok(())
        })?;
        self.spawn_monitor(req.id, req.exec_id, exit_rx, Vec::new());
        resp.pid = pid;
        Ok(resp)
    }

    fn do_state(&self, req: &StateRequest) -> Result<StateResponse> {
        self.with(&req.id, |c| {
            let mut resp = StateResponse::new();
            resp.id = req.id.clone();
            resp.bundle = c.bundle.clone();
            resp.exec_id = req.exec_id.clone();
            let proc = if req.exec_id.is_empty() {
                resp.stdout = c.stdout.clone();
                resp.stderr = c.stderr.clone();
                if c.oom_killed {
                    resp.special_fields
                        .mut_unknown_fields()
                        .add_varint(OOM_KILLED_FIELD, 1);
                }
                &c.init
            } else {
                let e = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| Error::ExecNotFound {
                        id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                    })?;
                resp.stdout = e.stdout.clone();
                resp.stderr = e.stderr.clone();
                &e.proc
            };
            resp.pid = proc.pid;
            resp.status = proc.status().into();
            if let Some(exit) = proc.exited() {
                resp.exit_status = exit.status;
                resp.exited_at = MessageField::some(Timestamp::from(exit.at));
            }
            Ok(resp)
        })
    }

    async fn do_wait(&self, req: &WaitRequest) -> Result<WaitResponse> {
        let mut rx = self.with_proc(&req.id, &req.exec_id, |p| Ok(p.exit.subscribe()))?;
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|e| *e)
            .ok_or_else(|| Error::NotFound(format!("{} (deleted while waiting)", req.id)))?;
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.status;
        resp.exited_at = MessageField::some(Timestamp::from(exit.at));
        Ok(resp)
    }

    async fn do_kill(&self, req: &KillRequest) -> Result<()> {
        let signal = i32::try_from(req.signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
        let who = if req.exec_id.is_empty() {
            req.id.clone()
        } else {
            format!("{}/{}", req.id, req.exec_id)
        };
        let pid = self.with_proc(&req.id, &req.exec_id, |p| {
            if p.reaped || p.exited().is_some() {
                return Err(Error::Finished(who.clone()));
            }
            Ok(p.pid)
        })?;
        if !req.exec_id.is_empty() {
            if pid == 0 {
                return Err(Error::FailedPrecondition(format!(
                    "exec {who} was not started"
                )));
            }
            let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            return kill(pid, signal).map_err(|e| Error::Finished(format!("{who} ({e})")));
        }
        if let Err(e) = self.runc.kill(&req.id, req.signal, req.all).await {
            // Lost the race with the exit: say so the same way as above.
            let exited = self
                .with_proc(&req.id, "", |p| Ok(p.exited().is_some()))
                .unwrap_or(true);
            return Err(if exited {
                Error::Finished(who)
            } else {
                e.into()
            });
        }
        Ok(())
    }

    async fn do_delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let mut resp = DeleteResponse::new();
        if !req.exec_id.is_empty() {
            return self.with(&req.id, |c| {
                let e = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| Error::ExecNotFound {
                        id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                    })?;
                if e.proc.pid != 0 && e.proc.exited().is_none() {
                    return Err(Error::FailedPrecondition(format!(
                        "exec {} is running",
                        req.exec_id
                    )));
                }
                fill_delete(&mut resp, &e.proc);
                c.execs.remove(&req.exec_id);
                Ok(resp)
            });
        }
        let (status, mut rx) =
            self.with_proc(&req.id, "", |p| Ok((p.status(), p.exit.subscribe())))?;
        if matches!(status, Status::RUNNING | Status::PAUSED) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {status:?}: kill it first",
                req.id
            )));
        }
        if let Err(e) = self.runc.delete(&req.id, true).await {
            // Already gone from runc (deleted by hand, or runc's state dir cleared): forget it too.
            if !e.message.contains("does not exist") {
                return Err(e.into());
            }
            tracing::warn!(container.id = %req.id, error = %e, "runc no longer knows the container");
        }
        if status == Status::CREATED {
            // runc delete --force killed the init: record its exit before answering.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, rx.wait_for(Option::is_some)).await;
        }
        let c = self
            .lock()
            .remove(&req.id)
            .ok_or_else(|| Error::NotFound(req.id.clone()))?;
        let _ = std::fs::remove_dir_all(&c.work_dir);
        fill_delete(&mut resp, &c.init);
        Ok(resp)
    }

    fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec_id is required".into()));
        }
        validate_id(&req.exec_id)?;
        if req.terminal {
            return Err(Error::Unimplemented(
                "terminal exec is not supported".into(),
            ));
        }
        if !req.stdin.is_empty() {
            return Err(Error::Unimplemented("exec stdin is not supported".into()));
        }
        let mut process: serde_json::Value =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                Error::InvalidArgument(format!("exec spec is not an OCI process JSON: {e}"))
            })?;
        clamp_oom_score_adj(&mut process, self.cfg.oom_score_adj_floor);
        let spec =
            serde_json::to_vec(&process).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.with(&req.id, |c| {
            if c.init.exited().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not running",
                    req.id
                )));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "exec {} of container {}",
                    req.exec_id, req.id
                )));
            }
            let e = ExecProc {
                proc: Proc::new(0),
                spec,
                stdout: req.stdout,
                stderr: req.stderr,
            };
            c.execs.insert(req.exec_id, e);
            Ok(())
        })
    }

    async fn do_pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let stopped = self.with_proc(&req.id, "", |p| Ok(p.exited().is_some()))?;
        let mut resp = PidsResponse::new();
        if stopped {
            return Ok(resp);
        }
        for pid in self.runc.ps(&req.id).await? {
            let mut info = ProcessInfo::new();
            info.pid = pid;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<()> {
        let (from, to) = if pause {
            (Status::RUNNING, Phase::Paused)
        } else {
            (Status::PAUSED, Phase::Running)
        };
        self.with_proc(id, "", |p| match p.status() {
            s if s == from => Ok(()),
            s => Err(Error::FailedPrecondition(format!(
                "container {id} is {s:?}, not {from:?}"
            ))),
        })?;
        if pause {
            self.runc.pause(id).await?;
        } else {
            self.runc.resume(id).await?;
        }
        self.with_proc(id, "", |p| {
            p.phase = to;
            Ok(())
        })
    }

    async fn do_update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let (logs, work_dir) = self.with(&req.id, |c| Ok((c.logs.clone(), c.work_dir.clone())))?;
        if req
            .annotations
            .get(REOPEN_LOG_ANNOTATION)
            .is_some_and(|v| v == "1" || v == "true")
        {
            for log in &logs {
                log.reopen()
                    .map_err(Error::io(format!("reopening {}", log.path().display())))?;
            }
            tracing::info!(container.id = %req.id, "reopened container log");
        }
        let Some(resources) = req.resources.as_ref().filter(|r| !r.value.is_empty()) else {
            return Ok(());
        };
        let path = work_dir.join("update.json");
        std::fs::write(&path, &resources.value)
            .map_err(Error::io(format!("writing {}", path.display())))?;
        let result = self.runc.update(&req.id, &path).await;
        let _ = std::fs::remove_file(&path);
        Ok(result?)
    }

    fn do_shutdown(&self, req: &ShutdownRequest) {
        let left = self.lock().len();
        if left == 0 || req.now {
            tracing::info!(containers = left, now = req.now, "shutting down");
            self.shutdown.notify_one();
        } else {
            tracing::info!(containers = left, "shutdown ignored: containers remain");
        }
    }

    fn do_stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let cgroups = self.with(&req.id, |c| Ok(c.cgroups.clone()))?;
        let metrics = cgroups.metrics().ok_or_else(|| {
            Error::Unimplemented(format!(
                "no cgroup known for container {} (no v1 memory or cpuacct, no v2 unified cgroup)",
                req.id
            ))
        })?;
        let mut any = Any::new();
        any.type_url = metrics.type_url().to_string();
        any.value = metrics.write_to_bytes().map_err(|e| Error::Io {
            context: "encoding metrics".into(),
            source: std::io::Error::other(e),
        })?;
        let mut resp = StatsResponse::new();
        resp.stats = MessageField::some(any);
        Ok(resp)
    }
}

fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("invalid id {id:?}")))
    }
}

fn open_log(path: &str) -> Result<Option<Arc<LogFile>>> {
    if path.is_empty() {
        return Ok(None);
    }
    LogFile::open(Path::new(path))
        .map(Some)
        .map_err(Error::io(format!("opening log file {path}")))
}

/// The fd to give the container for one stream: a pipe feeding the log, or /dev/null.
fn log_pipe(
    log: Option<&Arc<LogFile>>,
    stream: Stream,
    copiers: &mut Vec<JoinHandle<()>>,
) -> Result<OwnedFd> {
    let Some(log) = log else {
        return dev_null();
    };
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::io("creating pipe")(e.into()))?;
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
        .map_err(Error::io("registering pipe"))?;
    copiers.push(tokio::spawn(copy_to_log(reader, stream, log.clone())));
    Ok(w)
}

fn dev_null() -> Result<OwnedFd> {
    File::options()
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(Error::io("opening /dev/null"))
}

/// Opens an exec's stdout or stderr target: a FIFO the daemon reads (opened read-write, so the
/// open never blocks on a reader), a regular file (created, appended), or /dev/null when empty.
async fn open_exec_output(path: &str) -> Result<File> {
    if path.is_empty() {
        return dev_null().map(File::from);
    }
    let p = PathBuf::from(path);
    let opened = tokio::task::spawn_blocking(move || {
        let is_fifo = std::fs::metadata(&p)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        if is_fifo {
            OpenOptions::new().read(true).write(true).open(&p)
        } else {
            OpenOptions::new().create(true).append(true).open(&p)
        }
    })
    .await
    .map_err(|e| Error::io(format!("opening {path}"))(std::io::Error::other(e)))?;
    opened.map_err(Error::io(format!("opening exec output {path}")))
}

fn read_pid(path: &Path) -> Result<u32> {
    let text =
        std::fs::read_to_string(path).map_err(Error::io(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|e| Error::Io {
        context: format!("parsing {}", path.display()),
        source: std::io::Error::other(e),
    })
}

fn fill_delete(resp: &mut DeleteResponse, p: &Proc) {
    resp.pid = p.pid;
    if let Some(exit) = p.exited() {
        resp.exit_status = exit.status;
        resp.exited_at = MessageField::some(Timestamp::from(exit.at));
    }
}

fn span(method: &'static str, id: &str, exec_id: &str) -> tracing::Span {
    tracing::info_span!("rpc", method, container.id = %id, exec.id = %exec_id)
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let span = span("Create", &req.id, "");
        self.do_create(req).instrument(span).await.map_err(to_ttrpc)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let span = span("Start", &req.id, &req.exec_id);
        self.do_start(req).instrument(span).await.map_err(to_ttrpc)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let _span = span("State", &req.id, &req.exec_id).entered();
        self.do_state(&req).map_err(to_ttrpc)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        let span = span("Delete", &req.id, &req.exec_id);
        self.do_delete(&req)
            .instrument(span)
            .await
            .map_err(to_ttrpc)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let span = span("Kill", &req.id, &req.exec_id);
        self.do_kill(&req)
            .instrument(span)
            .await
            .map(|()| Empty::new())
            .map_err(to_ttrpc)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let span = span("Wait", &req.id, &req.exec_id);
        self.do_wait(&req).instrument(span).await.map_err(to_ttrpc)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let span = span("Pids", &req.id, "");
        self.do_pids(&req).instrument(span).await.map_err(to_ttrpc)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let _span = span("Exec", &req.id, &req.exec_id).entered();
        self.do_exec(req).map(|()| Empty::new()).map_err(to_ttrpc)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        // No process has a stdin (Create and Exec refuse one), so there is nothing to close.
        self.with_proc(&req.id, &req.exec_id, |_| Ok(()))
            .map(|()| Empty::new())
            .map_err(to_ttrpc)
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.with_proc(&req.id, &req.exec_id, |_| {
            Err::<Empty, _>(Error::FailedPrecondition(format!(
                "{} has no terminal",
                req.id
            )))
        })
        .map_err(to_ttrpc)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        let span = span("Pause", &req.id, "");
        self.do_pause(&req.id, true)
            .instrument(span)
            .await
            .map(|()| Empty::new())
            .map_err(to_ttrpc)
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        let span = span("Resume", &req.id, "");
        self.do_pause(&req.id, false)
            .instrument(span)
            .await
            .map(|()| Empty::new())
            .map_err(to_ttrpc)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(to_ttrpc(Error::Unimplemented(
            "checkpoint is not supported".into(),
        )))
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let span = span("Update", &req.id, "");
        self.do_update(&req)
            .instrument(span)
            .await
            .map(|()| Empty::new())
            .map_err(to_ttrpc)
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let _span = span("Stats", &req.id, "").entered();
        self.do_stats(&req).map_err(to_ttrpc)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let task_pid = self
            .with_proc(&req.id, "", |p| Ok(p.pid))
            .map_err(to_ttrpc)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = task_pid;
        resp.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(resp)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.do_shutdown(&req);
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    use crate::runc::RuncError;

    use super::*;

    /// Stands in for runc: writes pid files, and turns kill and a forced delete of a live
    /// container into an exit delivered through the reaper.
    struct FakeRuntime {
        reaper: Reaper,
        next_pid: AtomicU32,
        pids: Mutex<HashMap<String, u32>>,
        calls: Mutex<Vec<String>>,
    }

    impl FakeRuntime {
        fn new(reaper: Reaper) -> Arc<FakeRuntime> {
            Arc::new(FakeRuntime {
                reaper,
                next_pid: AtomicU32::new(1000),
                pids: Mutex::default(),
                calls: Mutex::default(),
            })
        }

        fn spawn(&self, key: String, pid_file: &Path) -> std::result::Result<(), RuncError> {
            let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
            std::fs::write(pid_file, pid.to_string()).unwrap();
            self.pids.lock().unwrap().insert(key, pid);
            Ok(())
        }

        fn exit(&self, key: &str, status: u32) {
            let pid = self.pids.lock().unwrap()[key];
            let exit = Exit {
                status,
                at: SystemTime::now(),
            };
            self.reaper
                .deliver(i32::try_from(pid).unwrap(), exit, Instant::now());
        }

        fn called(&self, call: String) -> std::result::Result<(), RuncError> {
            self.calls.lock().unwrap().push(call);
            Ok(())
        }
    }

    #[async_trait]
    impl OciRuntime for FakeRuntime {
        async fn create(
            &self,
            id: &str,
            _: &Path,
            pid_file: &Path,
            _: OwnedFd,
            _: OwnedFd,
        ) -> std::result::Result<(), RuncError> {
            self.spawn(id.to_string(), pid_file)
        }
        async fn exec(
            &self,
            id: &str,
            process_json: &Path,
            pid_file: &Path,
            _: OwnedFd,
            _: OwnedFd,
        ) -> std::result::Result<(), RuncError> {
            let name = process_json
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            self.spawn(format!("{id}/{name}"), pid_file)
        }
        async fn start(&self, id: &str) -> std::result::Result<(), RuncError> {
            self.called(format!("start {id}"))
        }
        async fn kill(
            &self,
            id: &str,
            signal: u32,
            all: bool,
        ) -> std::result::Result<(), RuncError> {
            if all {
                return self.called(format!("kill --all {id} {signal}"));
            }
            self.exit(id, 128 + signal);
            self.called(format!("kill {id} {signal}"))
        }
        async fn delete(&self, id: &str, _: bool) -> std::result::Result<(), RuncError> {
            self.called(format!("delete {id}"))
        }
        async fn pause(&self, id: &str) -> std::result::Result<(), RuncError> {
            self.called(format!("pause {id}"))
        }
        async fn resume(&self, id: &str) -> std::result::Result<(), RuncError> {
            self.called(format!("resume {id}"))
        }
        async fn update(&self, id: &str, _: &Path) -> std::result::Result<(), RuncError> {
            self.called(format!("update {id}"))
        }
        async fn ps(&self, id: &str) -> std::result::Result<Vec<u32>, RuncError> {
            Ok(vec![self.pids.lock().unwrap()[id]])
        }
    }

    struct Harness {
        dir: tempfile::TempDir,
        runtime: Arc<FakeRuntime>,
        service: Service,
        shutdown: Arc<Notify>,
    }

    fn harness(floor: i64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        let runtime = FakeRuntime::new(reaper.clone());
        let shutdown = Arc::new(Notify::new());
        let cfg = Config {
            state_dir: dir.path().join("state"),
            oom_score_adj_floor: floor,
        };
        let service = Service::new(cfg, runtime.clone(), reaper, shutdown.clone());
        Harness {
            dir,
            runtime,
            service,
            shutdown,
        }
    }

    impl Harness {
        async fn create(&self, id: &str, process: serde_json::Value) -> u32 {
            let spec = serde_json::json!({
                "process": process,
                "linux": {"namespaces": [{"type": "pid"}]}
            });
            self.create_spec(id, spec).await
        }

        async fn create_spec(&self, id: &str, spec: serde_json::Value) -> u32 {
            let bundle = self.dir.path().join(id);
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
            let mut req = CreateTaskRequest::new();
            req.id = id.into();
            req.bundle = bundle.to_str().unwrap().into();
            req.stdout = self
                .dir
                .path()
                .join(format!("{id}.log"))
                .to_str()
                .unwrap()
                .into();
            self.service.do_create(req).await.unwrap().pid
        }

        fn status(&self, id: &str, exec_id: &str) -> Status {
            let mut req = StateRequest::new();
            req.id = id.into();
            req.exec_id = exec_id.into();
            self.service
                .do_state(&req)
                .unwrap()
                .status
                .enum_value()
                .unwrap()
        }

        async fn wait(&self, id: &str, exec_id: &str) -> u32 {
            let mut req = WaitRequest::new();
            req.id = id.into();
            req.exec_id = exec_id.into();
            self.service.do_wait(&req).await.unwrap().exit_status
        }
    }

    fn start_req(id: &str, exec_id: &str) -> StartRequest {
        let mut req = StartRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        req
    }

    fn kill_req(id: &str, signal: u32) -> KillRequest {
        let mut req = KillRequest::new();
        req.id = id.into();
        req.signal = signal;
        req
    }

    fn delete_req(id: &str, exec_id: &str) -> DeleteRequest {
        let mut req = DeleteRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        req
    }

    #[tokio::test(flavor = "current_thread")]
    async fn container_goes_created_running_stopped_and_is_deleted() {
        let h = harness(0);
        let pid = h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        assert_eq!(h.status("c1", ""), Status::CREATED);
        assert_eq!(
            h.service.do_start(start_req("c1", "")).await.unwrap().pid,
            pid
        );
        assert_eq!(h.status("c1", ""), Status::RUNNING);
        assert!(matches!(
            h.service.do_start(start_req("c1", "")).await,
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            h.service.do_delete(&delete_req("c1", "")).await,
            Err(Error::FailedPrecondition(_))
        ));
        h.service.do_kill(&kill_req("c1", 9)).await.unwrap();
        assert_eq!(h.wait("c1", "").await, 137);
        assert_eq!(h.status("c1", ""), Status::STOPPED);
        assert!(matches!(
            h.service.do_kill(&kill_req("c1", 9)).await,
            Err(Error::Finished(_))
        ));
        let deleted = h.service.do_delete(&delete_req("c1", "")).await.unwrap();
        assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
        let mut state = StateRequest::new();
        state.id = "c1".into();
        assert!(matches!(
            h.service.do_state(&state),
            Err(Error::NotFound(_))
        ));
        let calls = h.runtime.calls.lock().unwrap().clone();
        assert_eq!(calls, ["start c1", "kill c1 9", "delete c1"]);
    }

    fn write_v2_cgroup(dir: &Path, oom_kill: u64) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in [
            ("memory.current", "4096\n".to_string()),
            ("memory.max", "max\n".to_string()),
            (
                "cpu.stat",
                "usage_usec 5\nuser_usec 3\nsystem_usec 2\n".to_string(),
            ),
            (
                "memory.events",
                format!("low 0\nhigh 0\nmax 1\noom {oom_kill}\noom_kill {oom_kill}\n"),
            ),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    fn oom_field(h: &Harness, id: &str) -> Option<u64> {
        let mut req = StateRequest::new();
        req.id = id.into();
        let resp = h.service.do_state(&req).unwrap();
        match resp.special_fields.unknown_fields().get(OOM_KILLED_FIELD) {
            Some(containerd_shim_protos::protobuf::UnknownValueRef::Varint(v)) => Some(v),
            _ => None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_v2_cgroup_answers_v2_stats_and_its_oom_kill_marks_the_state() {
        use containerd_shim_protos::cgroups_v2::metrics::Metrics;
        use containerd_shim_protos::protobuf::Message;

        use crate::cgroup::Layout;

        let h = harness(0);
        h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        let mut stats = StatsRequest::new();
        stats.id = "c1".into();
        let cg = h.dir.path().join("cgroup-c1");
        write_v2_cgroup(&cg, 0);
        h.service.lock().get_mut("c1").unwrap().cgroups =
            CgroupPaths::new(Layout::V2 { dir: cg.clone() });

        let any = h.service.do_stats(&stats).unwrap().stats.unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.memory.usage, m.memory.usage_limit), (4096, u64::MAX));
        assert_eq!(m.cpu.usage_usec, 5);

        h.service.do_start(start_req("c1", "")).await.unwrap();
        write_v2_cgroup(&cg, 1);
        h.runtime.exit("c1", 137);
        assert_eq!(h.wait("c1", "").await, 137);
        assert_eq!(oom_field(&h, "c1"), Some(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_exit_without_a_new_oom_kill_is_no_oom_and_no_cgroup_no_stats() {
        use crate::cgroup::Layout;

        let h = harness(0);
        h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        let cg = h.dir.path().join("cgroup-c1");
        write_v2_cgroup(&cg, 2);
        h.service.lock().get_mut("c1").unwrap().cgroups = CgroupPaths::new(Layout::V2 { dir: cg });
        h.service.do_start(start_req("c1", "")).await.unwrap();
        h.runtime.exit("c1", 0);
        assert_eq!(h.wait("c1", "").await, 0);
        assert_eq!(
            oom_field(&h, "c1"),
            None,
            "kills before creation are not the container's"
        );

        h.service.lock().get_mut("c1").unwrap().cgroups = CgroupPaths::default();
        let mut stats = StatsRequest::new();
        stats.id = "c1".into();
        assert!(matches!(
            h.service.do_stats(&stats),
            Err(Error::Unimplemented(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn init_exit_in_a_shared_pid_namespace_kills_the_rest() {
        let h = harness(0);
        let spec = serde_json::json!({
            "process": {"args": ["sleep"]},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}
        });
        h.create_spec("c1", spec).await;
        h.service.do_start(start_req("c1", "")).await.unwrap();
        h.runtime.exit("c1", 0);
        assert_eq!(h.wait("c1", "").await, 0);
        let calls = h.runtime.calls.lock().unwrap().clone();
        assert_eq!(calls, ["start c1", "kill --all c1 9"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn create_raises_oom_score_adj_to_the_floor_and_refuses_duplicates() {
        let h = harness(-500);
        h.create(
            "c1",
            serde_json::json!({"args": ["sh"], "oomScoreAdj": -999}),
        )
        .await;
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(h.dir.path().join("c1/config.json")).unwrap())
                .unwrap();
        assert_eq!(spec["process"]["oomScoreAdj"], -500);
        let mut req = CreateTaskRequest::new();
        req.id = "c1".into();
        req.bundle = h.dir.path().join("c1").to_str().unwrap().into();
        assert!(matches!(
            h.service.do_create(req).await,
            Err(Error::AlreadyExists(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn exec_is_recorded_started_and_waited() {
        let h = harness(0);
        h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        let mut exec = ExecProcessRequest::new();
        exec.id = "c1".into();
        exec.exec_id = "e1".into();
        let mut spec = Any::new();
        spec.value = br#"{"args": ["echo", "hi"], "oomScoreAdj": -1000}"#.to_vec();
        exec.spec = MessageField::some(spec);
        // The container is only CREATED: an exec may be recorded but not started.
        h.service.do_exec(exec.clone()).unwrap();
        assert!(matches!(
            h.service.do_start(start_req("c1", "e1")).await,
            Err(Error::FailedPrecondition(_))
        ));
        h.service.do_start(start_req("c1", "")).await.unwrap();
        assert!(matches!(
            h.service.do_exec(exec),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(h.status("c1", "e1"), Status::CREATED);
        assert!(h.service.do_start(start_req("c1", "e1")).await.unwrap().pid > 0);
        assert_eq!(h.status("c1", "e1"), Status::RUNNING);
        h.runtime.exit("c1/exec-e1", 0);
        assert_eq!(h.wait("c1", "e1").await, 0);
        h.service.do_delete(&delete_req("c1", "e1")).await.unwrap();
        let mut state = StateRequest::new();
        state.id = "c1".into();
        state.exec_id = "e1".into();
        assert!(matches!(
            h.service.do_state(&state),
            Err(Error::ExecNotFound { .. })
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pause_and_resume_follow_the_state() {
        let h = harness(0);
        h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        assert!(matches!(
            h.service.do_pause("c1", true).await,
            Err(Error::FailedPrecondition(_))
        ));
        h.service.do_start(start_req("c1", "")).await.unwrap();
        h.service.do_pause("c1", true).await.unwrap();
        assert_eq!(h.status("c1", ""), Status::PAUSED);
        h.service.do_pause("c1", false).await.unwrap();
        assert_eq!(h.status("c1", ""), Status::RUNNING);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unknown_ids_are_not_found() {
        let h = harness(0);
        assert!(matches!(
            h.service.do_start(start_req("x", "")).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            h.service.do_kill(&kill_req("x", 15)).await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            h.service.do_delete(&delete_req("x", "")).await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_exits_only_without_containers_unless_now() {
        let h = harness(0);
        h.create("c1", serde_json::json!({"args": ["sleep"]})).await;
        let notified = h.shutdown.notified();
        tokio::pin!(notified);
        h.service.do_shutdown(&ShutdownRequest::new());
        assert!(futures_poll(notified.as_mut()).is_none());
        let mut now = ShutdownRequest::new();
        now.now = true;
        h.service.do_shutdown(&now);
        assert!(futures_poll(notified.as_mut()).is_some());
    }

    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match f.poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn ids_are_path_safe() {
        assert!(validate_id("abc-1_2.x").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn process_status_follows_phase_then_exit() {
        let mut p = Proc::new(1);
        assert_eq!(p.status(), Status::CREATED);
        p.phase = Phase::Running;
        assert_eq!(p.status(), Status::RUNNING);
        p.exit.send_replace(Some(Exit {
            status: 3,
            at: std::time::SystemTime::UNIX_EPOCH,
        }));
        assert_eq!(p.status(), Status::STOPPED);
    }
}
