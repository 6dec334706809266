//! berthd as a process: start-up refusals, socket and root ownership, signals, and the CRI
//! calls it answers, through a real gRPC client on its unix socket.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use berth_proto::cri::{
    ContainerStatsRequest, CreateContainerRequest, ExecRequest, ListImagesRequest, NetworkConfig,
    RunPodSandboxRequest, RuntimeConfig, RuntimeConfigRequest, StatusRequest,
    UpdateRuntimeConfigRequest, VersionRequest,
};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint};

const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// A berthd child with its own root, state and socket; killed by pid when dropped.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
}

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    socket: PathBuf,
    config: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("berth.toml");
    std::fs::write(&config, "").unwrap();
    Dirs {
        root: tmp.path().join("root"),
        state: tmp.path().join("state"),
        socket: tmp.path().join("state/berthd.sock"),
        config,
        _tmp: tmp,
    }
}

fn berthd(config: &Path, root: &Path, state: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(BERTHD);
    cmd.arg("--config")
        .arg(config)
        .arg("--root")
        .arg(root)
        .arg("--state")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .arg("--cni-conf-dir")
        .arg(state.join("net.d"))
        // These tests check berthd without a network; the default one has tests of its own.
        .arg("--install-default-conflist")
        .arg("false")
        // Any executable passes the start-up check; these tests run no container.
        .arg("--runtime")
        .arg("runc=/bin/true");
    cmd
}

impl Daemon {
    fn start(d: &Dirs) -> Daemon {
        Daemon::start_at(d, &d.root, &d.socket)
    }

    fn start_at(d: &Dirs, root: &Path, socket: &Path) -> Daemon {
        Daemon::spawn(berthd(&d.config, root, &d.state, socket), socket)
    }

    fn spawn(mut cmd: Command, socket: &Path) -> Daemon {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berthd exited early: {status}");
            }
            assert!(Instant::now() < deadline, "berthd not ready after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn signal_and_wait(&mut self, sig: Signal) -> std::process::ExitStatus {
        kill(self.pid(), sig).unwrap();
        self.child.take().unwrap().wait().unwrap()
    }

    async fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::try_from("http://berthd.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_config_names_file_line_and_key() {
    let d = dirs();
    std::fs::write(&d.config, "root = \"/tmp/x\"\nlog_levle = \"debug\"\n").unwrap();
    let out = run(&mut berthd(&d.config, &d.root, &d.state, &d.socket));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&d.config.display().to_string()), "{err}");
    assert!(err.contains("line 2") && err.contains("log_levle"), "{err}");
    assert!(!d.root.exists(), "nothing is created for an invalid config");
}

#[test]
fn missing_runtime_binary_refuses_to_start() {
    let d = dirs();
    let out = run(berthd(&d.config, &d.root, &d.state, &d.socket)
        .arg("--runtime")
        .arg("crun=/nonexistent/crun"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("crun") && err.contains("/nonexistent/crun"),
        "{err}"
    );
    assert!(!d.socket.exists(), "no socket is left behind");
}

#[test]
fn config_default_prints_the_documented_defaults() {
    let out = run(Command::new(BERTHD).args(["config", "default"]));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed = berth_server::config::Config::parse(Path::new("stdout"), &text).unwrap();
    assert_eq!(parsed, berth_server::config::Config::default());
    assert!(text.contains("# "), "the default file is commented");
}

#[test]
fn config_show_prints_flags_over_file() {
    let d = dirs();
    std::fs::write(&d.config, "log_level = \"warn\"\n").unwrap();
    let out = run(berthd(&d.config, &d.root, &d.state, &d.socket).args([
        "--log-level",
        "debug",
        "config",
        "show",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = berth_server::config::Config::parse(
        Path::new("stdout"),
        &String::from_utf8(out.stdout).unwrap(),
    )
    .unwrap();
    assert_eq!(shown.log_level, berth_server::config::LogLevel::Debug);
    assert_eq!(shown.root, d.root);
}

#[test]
fn socket_and_root_belong_to_one_daemon() {
    let d = dirs();
    let mut first = Daemon::start(&d);

    let other_root = d.root.with_file_name("root2");
    let out = run(&mut berthd(&d.config, &other_root, &d.state, &d.socket));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("served by a running daemon"),
        "{}",
        stderr(&out)
    );

    let other_socket = d.socket.with_file_name("other.sock");
    let out = run(&mut berthd(&d.config, &d.root, &d.state, &other_socket));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("locked by another berthd"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(!other_socket.exists());

    let status = first.signal_and_wait(Signal::SIGTERM);
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!d.socket.exists(), "socket removed on shutdown");
}

#[test]
fn restart_after_sigkill_replaces_the_stale_socket() {
    let d = dirs();
    let mut first = Daemon::start(&d);
    first.signal_and_wait(Signal::SIGKILL);
    assert!(d.socket.exists(), "a killed daemon leaves its socket");
    let mut second = Daemon::start(&d);
    let status = second.signal_and_wait(Signal::SIGINT);
    assert!(status.success(), "clean exit on SIGINT: {status}");
}

/// `cmd` run with umask 000, so that every mode berthd ends up with is one it set itself.
fn without_umask(cmd: &Command) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    sh
}

fn assert_socket_is_root_0660(socket: &Path) {
    let meta = std::fs::metadata(socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "{}",
        socket.display()
    );
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", socket.display());
}

#[test]
fn socket_is_0660_root_after_start_and_after_replacing_a_stale_one() {
    let d = dirs();
    let mut first = Daemon::spawn(
        without_umask(&berthd(&d.config, &d.root, &d.state, &d.socket)),
        &d.socket,
    );
    assert_socket_is_root_0660(&d.socket);
    for dir in [&d.root, &d.state] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o711, "{} created under umask 000", dir.display());
    }
    first.signal_and_wait(Signal::SIGKILL);
    assert!(d.socket.exists(), "a killed daemon leaves its socket");

    let mut second = Daemon::spawn(
        without_umask(&berthd(&d.config, &d.root, &d.state, &d.socket)),
        &d.socket,
    );
    assert_socket_is_root_0660(&d.socket);
    assert!(second.signal_and_wait(Signal::SIGTERM).success());
}

#[test]
fn root_or_state_writable_by_others_refuses_to_start() {
    let d = dirs();
    for (dir, what) in [(&d.root, "root"), (&d.state, "state")] {
        std::fs::create_dir_all(&d.root).unwrap();
        std::fs::create_dir_all(&d.state).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = run(&mut berthd(&d.config, &d.root, &d.state, &d.socket));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        let line = err.trim().lines().last().unwrap();
        assert!(
            line.starts_with(&format!("berthd: {what} {}", dir.display())),
            "{err}"
        );
        assert!(
            line.contains("writable by group or others (mode 0777)"),
            "{err}"
        );
        assert!(!d.socket.exists(), "no socket is served");
        assert!(!d.root.join("meta").exists(), "no store is opened");

        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut daemon = Daemon::start(&d);
    assert!(daemon.signal_and_wait(Signal::SIGTERM).success());
}

#[tokio::test]
async fn serves_version_status_and_runtime_config() {
    let d = dirs();
    let daemon = Daemon::start(&d);
    let mut rt = RuntimeServiceClient::new(daemon.channel().await);

    let v = rt
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");

    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status, "no CNI config in the test's conf dir");
    assert_eq!(network.reason, "NetworkPluginNotReady");
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["socket"], d.socket.display().to_string());

    let rc = rt
        .runtime_config(RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(rc.linux.is_some());

    // kubelet's pod CIDR: taken (for the ipRanges of later pods); a bad one is refused.
    let update = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.to_string(),
            }),
        }),
    };
    rt.update_runtime_config(update("10.244.0.0/24,fd00:10:244::/64"))
        .await
        .unwrap();
    let err = rt
        .update_runtime_config(update("10.244.0.0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("pod_cidr"), "{err}");

    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "no config");

    let err = rt
        .create_container(CreateContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "no config");

    let err = rt
        .container_stats(ContainerStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "no id");
    assert!(err.message().contains("container_id"), "{}", err.message());
    let err = rt
        .container_stats(ContainerStatsRequest {
            container_id: "nosuch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());

    // Streaming has not landed: Unimplemented, never a fake success.
    let err = rt.exec(ExecRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("Exec"), "{}", err.message());

    let mut images = ImageServiceClient::new(daemon.channel().await);
    let list = images
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.images.is_empty(), "a fresh root has no images");
}
