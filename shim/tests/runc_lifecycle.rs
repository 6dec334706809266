#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed step should stop the test loudly"
)]
//! The real `berth-shim` binary driving runc, through a ttrpc client. Needs root, runc at
//! /usr/sbin/runc and a static busybox at /bin/busybox; skipped (with a message) otherwise.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim_protos::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StateRequest, StateResponse, StatsRequest,
    Status, UpdateTaskRequest, WaitRequest,
};
use containerd_shim_protos::cgroups::metrics::Metrics;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, UnknownValueRef};
use containerd_shim_protos::shim_async::{Client, TaskClient};
use containerd_shim_protos::ttrpc::{self, Code, context};
use serde_json::json;

const RUNC: &str = "/usr/sbin/runc";
const BUSYBOX: &str = "/bin/busybox";

/// Everything the test creates; torn down on drop, whatever happened.
struct Fixture {
    dir: tempfile::TempDir,
    shim: Option<Child>,
    ids: Vec<String>,
}

impl Fixture {
    fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// Each fixture's containers share a parent cgroup of their own (tests run in parallel).
    fn cgroup_parent(&self) -> String {
        let tmp = self.dir.path().file_name().unwrap().to_string_lossy();
        format!("berth-shim-test{}", tmp.trim_start_matches('.'))
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A bundle whose rootfs holds busybox with sh, echo and sleep.
    fn bundle(&mut self, id: &str, args: &[&str]) -> PathBuf {
        self.bundle_with_memory_limit(id, args, None)
    }

    fn bundle_with_memory_limit(&mut self, id: &str, args: &[&str], limit: Option<i64>) -> PathBuf {
        self.ids.push(id.to_string());
        let bundle = self.dir.path().join("bundles").join(id);
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        for d in ["proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(bundle.join("rootfs").join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in ["sh", "echo", "sleep", "cat", "yes"] {
            std::fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
        }
        let caps = [
            "CAP_KILL",
            "CAP_CHOWN",
            "CAP_SETUID",
            "CAP_SETGID",
            "CAP_NET_BIND_SERVICE",
        ];
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                               {"type": "network"}],
                "cgroupsPath": format!("/{}/{id}", self.cgroup_parent()),
                "resources": {"devices": [{"allow": false, "access": "rwm"}]}
            }
        });
        let mut config = config;
        if let Some(limit) = limit {
            config["linux"]["resources"]["memory"] = json!({"limit": limit, "swap": limit});
        }
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        bundle
    }

    /// Starts the shim and returns the address it printed.
    fn start_shim(&mut self) -> String {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth-shim"))
            .args(["--id", "pod1", "--state-dir"])
            .arg(self.state_dir())
            .args(["--runtime", RUNC, "--runtime-root"])
            .arg(self.runc_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        self.shim = Some(child);
        let mut addr = String::new();
        stdout.read_line(&mut addr).unwrap();
        // The shim closes stdout once it announced itself.
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        addr.trim().to_string()
    }

    fn wait_shim_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.shim.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                self.shim = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = Command::new(RUNC)
                .arg("--root")
                .arg(self.runc_root())
                .args(["delete", "--force", id])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut shim) = self.shim.take() {
            let _ = shim.kill();
            let _ = shim.wait();
        }
        // runc removes a container's cgroups on delete; the shared parent is left to remove.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let parent = hierarchy.path().join(self.cgroup_parent());
            for id in &self.ids {
                let _ = std::fs::remove_dir(parent.join(id));
            }
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    if !Path::new(RUNC).exists() || !Path::new(BUSYBOX).exists() {
        return Some("runc or busybox missing");
    }
    None
}

async fn create(client: &TaskClient, id: &str, bundle: &Path, log: &Path) -> u32 {
    let mut req = CreateTaskRequest::new();
    req.id = id.into();
    req.bundle = bundle.to_str().unwrap().into();
    req.stdout = log.to_str().unwrap().into();
    client.create(ctx(), &req).await.unwrap().pid
}

fn start_req(id: &str, exec_id: &str) -> StartRequest {
    let mut req = StartRequest::new();
    req.id = id.into();
    req.exec_id = exec_id.into();
    req
}

fn wait_req(id: &str, exec_id: &str) -> WaitRequest {
    let mut req = WaitRequest::new();
    req.id = id.into();
    req.exec_id = exec_id.into();
    req
}

fn state_req(id: &str) -> StateRequest {
    let mut req = StateRequest::new();
    req.id = id.into();
    req
}

fn delete_req(id: &str, exec_id: &str) -> DeleteRequest {
    let mut req = DeleteRequest::new();
    req.id = id.into();
    req.exec_id = exec_id.into();
    req
}

/// The (stream, tag, content) of each CRI log record, checking the timestamp's shape.
fn log_records(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(
                ts.ends_with('Z') && ts.contains('T') && ts.len() >= 20,
                "timestamp {ts:?}"
            );
            let (stream, tag) = (parts.next().unwrap(), parts.next().unwrap());
            (
                stream.to_string(),
                tag.to_string(),
                parts.next().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn shim_runs_containers_with_runc_end_to_end() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let mut fx = Fixture {
        dir: tempfile::tempdir().unwrap(),
        shim: None,
        ids: Vec::new(),
    };
    std::fs::create_dir_all(fx.dir.path().join("logs")).unwrap();
    let addr = fx.start_shim();
    assert_eq!(
        addr,
        format!("unix://{}", fx.state_dir().join("shim.sock").display())
    );
    let client = TaskClient::new(Client::connect(&addr).await.unwrap());

    // A container that writes to stdout and stderr and exits 3.
    let script = "echo one; echo two; echo oops >&2; printf tail; exit 3";
    let bundle = fx.bundle("c1", &["sh", "-c", script]);
    let log1 = fx.dir.path().join("logs/c1.log");
    let pid = create(&client, "c1", &bundle, &log1).await;
    assert!(pid > 0);
    assert_eq!(
        client
            .state(ctx(), &state_req("c1"))
            .await
            .unwrap()
            .status
            .enum_value(),
        Ok(Status::CREATED)
    );
    assert_eq!(
        client.start(ctx(), &start_req("c1", "")).await.unwrap().pid,
        pid
    );
    let waited = client
        .wait(context::Context::default(), &wait_req("c1", ""))
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 3);
    assert!(waited.exited_at.is_some());
    let records = log_records(&log1);
    let stdout: Vec<_> = records
        .iter()
        .filter(|r| r.0 == "stdout")
        .cloned()
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        stdout,
        vec![
            s("stdout", "F", "one"),
            s("stdout", "F", "two"),
            s("stdout", "P", "tail")
        ]
    );
    assert!(records.contains(&s("stderr", "F", "oops")), "{records:?}");
    let state = client.state(ctx(), &state_req("c1")).await.unwrap();
    assert_eq!(
        (state.status.enum_value(), state.exit_status),
        (Ok(Status::STOPPED), 3)
    );
    assert_eq!(
        code(client.start(ctx(), &start_req("c1", "")).await),
        Code::FAILED_PRECONDITION
    );
    let deleted = client.delete(ctx(), &delete_req("c1", "")).await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 3));
    assert_eq!(
        code(client.state(ctx(), &state_req("c1")).await),
        Code::NOT_FOUND
    );

    // A long-running container: pids, exec with captured output, log reopen, stats, SIGKILL.
    let bundle = fx.bundle("c2", &["sleep", "1000"]);
    let log2 = fx.dir.path().join("logs/c2.log");
    create(&client, "c2", &bundle, &log2).await;
    client.start(ctx(), &start_req("c2", "")).await.unwrap();
    let mut pids = PidsRequest::new();
    pids.id = "c2".into();
    assert!(
        !client
            .pids(ctx(), &pids)
            .await
            .unwrap()
            .processes
            .is_empty()
    );

    let shim_pid = fx.shim.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{shim_pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or_default();
    eprintln!("shim with one running container: {rss}");

    let exec_out = fx.dir.path().join("exec.out");
    let mut exec = ExecProcessRequest::new();
    exec.id = "c2".into();
    exec.exec_id = "e1".into();
    exec.stdout = exec_out.to_str().unwrap().into();
    let process = json!({"args": ["echo", "hi"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}});
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = serde_json::to_vec(&process).unwrap();
    exec.spec = Some(spec).into();
    client.exec(ctx(), &exec).await.unwrap();
    assert!(
        client
            .start(ctx(), &start_req("c2", "e1"))
            .await
            .unwrap()
            .pid
            > 0
    );
    assert_eq!(
        client
            .wait(context::Context::default(), &wait_req("c2", "e1"))
            .await
            .unwrap()
            .exit_status,
        0
    );
    assert_eq!(std::fs::read_to_string(&exec_out).unwrap(), "hi\n");
    client.delete(ctx(), &delete_req("c2", "e1")).await.unwrap();

    std::fs::rename(&log2, fx.dir.path().join("logs/c2.log.1")).unwrap();
    let mut update = UpdateTaskRequest::new();
    update.id = "c2".into();
    update
        .annotations
        .insert("berth.reopen-log".into(), "1".into());
    client.update(ctx(), &update).await.unwrap();
    assert!(log2.exists(), "log file reopened at its path");

    // Pause and resume.
    let mut pause = PauseRequest::new();
    pause.id = "c2".into();
    client.pause(ctx(), &pause).await.unwrap();
    let status = |s: StateResponse| s.status.enum_value().unwrap();
    assert_eq!(
        status(client.state(ctx(), &state_req("c2")).await.unwrap()),
        Status::PAUSED
    );
    assert_eq!(
        code(client.pause(ctx(), &pause).await),
        Code::FAILED_PRECONDITION
    );
    let mut resume = ResumeRequest::new();
    resume.id = "c2".into();
    client.resume(ctx(), &resume).await.unwrap();
    assert_eq!(
        status(client.state(ctx(), &state_req("c2")).await.unwrap()),
        Status::RUNNING
    );

    // Resources go to runc update; Stats then shows the new memory limit.
    let mut update = UpdateTaskRequest::new();
    update.id = "c2".into();
    let mut resources = Any::new();
    resources.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    resources.value = serde_json::to_vec(&json!({"memory": {"limit": 64 << 20}})).unwrap();
    update.resources = Some(resources).into();
    client.update(ctx(), &update).await.unwrap();

    let mut stats = StatsRequest::new();
    stats.id = "c2".into();
    let stats = client.stats(ctx(), &stats).await;
    let any = stats.unwrap().stats.unwrap();
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert!(metrics.memory.usage.usage > 0, "{metrics:?}");
        assert!(metrics.cpu.usage.total > 0, "{metrics:?}");
        assert_eq!(metrics.memory.usage.limit, 64 << 20);
    } else {
        // A cgroup v2 host: containerd's v2 message.
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics =
            containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
                .unwrap();
        assert!(metrics.memory.usage > 0, "{metrics:?}");
        assert_eq!(metrics.memory.usage_limit, 64 << 20);
    }

    let mut kill = KillRequest::new();
    kill.id = "c2".into();
    kill.signal = 9;
    client.kill(ctx(), &kill).await.unwrap();
    assert_eq!(
        client
            .wait(context::Context::default(), &wait_req("c2", ""))
            .await
            .unwrap()
            .exit_status,
        137
    );
    assert_eq!(code(client.kill(ctx(), &kill).await), Code::NOT_FOUND);
    assert_eq!(
        client
            .delete(ctx(), &delete_req("c2", ""))
            .await
            .unwrap()
            .exit_status,
        137
    );

    // A runc failure carries runc's message.
    let bundle = fx.bundle("bad", &["no-such-binary"]);
    let mut req = CreateTaskRequest::new();
    req.id = "bad".into();
    req.bundle = bundle.to_str().unwrap().into();
    match client.create(ctx(), &req).await {
        Err(ttrpc::Error::RpcStatus(s)) => {
            eprintln!("create of a bad bundle: {}", s.message);
            assert_eq!(s.code(), Code::UNKNOWN);
            assert!(
                s.message.contains("runc create failed") && s.message.contains("no-such-binary"),
                "{}",
                s.message
            );
        }
        other => panic!("create of a bad bundle: {other:?}"),
    }
    let mut kill = KillRequest::new();
    kill.id = "nope".into();
    kill.signal = 15;
    assert_eq!(code(client.kill(ctx(), &kill).await), Code::NOT_FOUND);

    // No container left: Shutdown makes the shim exit.
    client
        .shutdown(ctx(), &ShutdownRequest::new())
        .await
        .unwrap();
    let status = fx
        .wait_shim_exit(Duration::from_secs(10))
        .expect("shim exits after Shutdown");
    assert!(status.success(), "{status:?}");
    assert!(!fx.state_dir().join("shim.sock").exists());
}

#[tokio::test(flavor = "current_thread")]
async fn oom_killed_container_is_reported_in_state() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    if !Path::new("/sys/fs/cgroup/memory").is_dir() {
        eprintln!("skipping: no cgroup v1 memory hierarchy");
        return;
    }
    let mut fx = Fixture {
        dir: tempfile::tempdir().unwrap(),
        shim: None,
        ids: Vec::new(),
    };
    let addr = fx.start_shim();
    let client = TaskClient::new(Client::connect(&addr).await.unwrap());

    // The shell buffers an endless command substitution until the 16 MiB limit kills it.
    let bundle = fx.bundle_with_memory_limit(
        "hog",
        &["sh", "-c", "x=$(yes); echo survived"],
        Some(16 << 20),
    );
    let log = fx.dir.path().join("hog.log");
    create(&client, "hog", &bundle, &log).await;
    client.start(ctx(), &start_req("hog", "")).await.unwrap();
    client
        .wait(context::Context::default(), &wait_req("hog", ""))
        .await
        .unwrap();
    let state = client.state(ctx(), &state_req("hog")).await.unwrap();
    let oom = state.special_fields.unknown_fields().get(1000);
    assert!(
        matches!(oom, Some(UnknownValueRef::Varint(1))),
        "oom_killed field: {oom:?}"
    );
    client.delete(ctx(), &delete_req("hog", "")).await.unwrap();

    client
        .shutdown(ctx(), &ShutdownRequest::new())
        .await
        .unwrap();
    assert!(fx.wait_shim_exit(Duration::from_secs(10)).is_some());
}
