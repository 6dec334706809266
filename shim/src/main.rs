//! berth-shim: one long-lived process per pod serving the containerd shim task API
//! (`containerd.task.v3.Task`) over ttrpc and driving runc.
//!
//! # Command line
//!
//! ```text
//! berth-shim --id <pod id> --state-dir <dir> --runtime <path to runc> --runtime-root <dir>
//!            [--pid-holder <file>] [--hide-unified-cgroup]
//! berth-shim --version
//! ```
//!
//! - `--id`: the pod id, used in the shim's own log lines.
//! - `--state-dir`: the shim's directory (created if missing). It holds `shim.sock` (the ttrpc
//!   socket), `shim.log` (the shim's own log, appended; filter with `BERTH_SHIM_LOG`, default
//!   `info`), and `containers/<container id>/`, a work dir per container (pid files, exec process specs).
//!   The socket is mode 0600; start-up fails if another shim already answers on it, and a stale
//!   socket file is replaced.
//! - `--runtime`: the OCI runtime binary (runc's command line).
//! - `--runtime-root`: passed as runc's `--root` (where runc keeps container state).
//! - `--pid-holder`: the pod shares one PID namespace between its containers: before anything
//!   else the shim forks the namespace's init (see `pidns.rs`) and writes its pid to this file.
//! - `--hide-unified-cgroup`: on a hybrid cgroup host, run the OCI runtime in a mount namespace
//!   without /sys/fs/cgroup/unified, so it manages cgroup v1 only (crun refuses hybrid hosts).
//!
//! The caller (berthd) starts the shim detached (its own session, stdin on /dev/null). Once the
//! socket is listening, the shim prints its address, `unix://<state-dir>/shim.sock`, and a newline
//! on stdout and closes stdout: the caller reads one line, or EOF if start-up failed (the reason
//! is then on stderr and in `shim.log`). It then keeps running until `Shutdown` finds no container
//! left (or has `now` set), or until SIGTERM/SIGINT; containers keep running when it exits.
//!
//! The process is single-threaded (a current-thread tokio runtime) and is a child subreaper: it
//! reaps every child and matches exits to runc's init and exec pids. See `service.rs` for the API
//! semantics and `logs.rs` for the CRI log format.

mod cgroup;
mod error;
mod logs;
mod pidns;
mod reaper;
mod runc;
mod service;
mod spec;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::r#async::Server;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::reaper::Reaper;
use crate::runc::Runc;
use crate::service::{Config, Service};

struct Args {
    id: String,
    state_dir: PathBuf,
    runtime: PathBuf,
    runtime_root: PathBuf,
    pid_holder: Option<PathBuf>,
    hide_unified_cgroup: bool,
}

const USAGE: &str = "usage: berth-shim --id <pod id> --state-dir <dir> --runtime <path> \
                     --runtime-root <dir> [--pid-holder <file>] [--hide-unified-cgroup]";

fn parse_args(args: impl IntoIterator<Item = String>) -> anyhow::Result<Args> {
    let (mut id, mut state_dir, mut runtime, mut runtime_root) = (None, None, None, None);
    let mut pid_holder = None;
    let mut hide_unified_cgroup = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let slot = match flag.as_str() {
            "--hide-unified-cgroup" => {
                hide_unified_cgroup = true;
                continue;
            }
            "--id" => &mut id,
            "--state-dir" => &mut state_dir,
            "--runtime" => &mut runtime,
            "--runtime-root" => &mut runtime_root,
            "--pid-holder" => &mut pid_holder,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        };
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        *slot = Some(value);
    }
    let need =
        |v: Option<String>, flag: &str| v.with_context(|| format!("{flag} is required\n{USAGE}"));
    Ok(Args {
        id: need(id, "--id")?,
        state_dir: need(state_dir, "--state-dir")?.into(),
        runtime: need(runtime, "--runtime")?.into(),
        runtime_root: need(runtime_root, "--runtime-root")?.into(),
        pid_holder: pid_holder.map(PathBuf::from),
        hide_unified_cgroup,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--version" || a == "-v") {
        println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let result = parse_args(argv).and_then(|args| {
        // Forked while the process still has one thread: the runtime below starts none, but
        // nothing may run before this that could.
        if let Some(file) = &args.pid_holder {
            pidns::spawn_holder(file, &args.id)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building runtime")?;
        rt.block_on(run(args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-shim: {e:#}");
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    init_logging(&args)?;
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    let reaper = Reaper::start().context("handling SIGCHLD")?;
    let runc = Runc::new(
        args.runtime.clone(),
        args.runtime_root.clone(),
        args.state_dir.clone(),
        reaper.clone(),
        args.hide_unified_cgroup,
    );
    let shutdown = Arc::new(Notify::new());
    let cfg = Config {
        state_dir: args.state_dir.clone(),
        oom_score_adj_floor: spec::own_oom_score_adj(),
    };
    let service = Service::new(cfg, Arc::new(runc), reaper, shutdown.clone());

    let sock = args.state_dir.join("shim.sock");
    if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        bail!("another shim serves {}", sock.display());
    }
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale {}", sock.display()));
        }
        _ => {}
    }
    let addr = format!("unix://{}", sock.display());
    let mut server = Server::new()
        .bind(&addr)
        .with_context(|| format!("binding {addr}"))?
        .register_service(create_task(Arc::new(service)));
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", sock.display()))?;
    server.start().await.context("starting ttrpc server")?;
    tracing::info!(pod.id = %args.id, %addr, pid = std::process::id(), "berth-shim serving");
    announce(&addr)?;

    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    tokio::select! {
        () = shutdown.notified() => {
            // Let the Shutdown reply reach the client before the connection goes away.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown()).await;
    let _ = std::fs::remove_file(&sock);
    tracing::info!(pod.id = %args.id, "berth-shim exiting");
    Ok(())
}

/// Prints the socket address and closes stdout: the caller's signal that the shim is ready.
fn announce(addr: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{addr}")
        .and_then(|()| out.flush())
        .context("writing address to stdout")?;
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    nix::unistd::dup2_stdout(&null).context("closing stdout")?;
    Ok(())
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let path = args.state_dir.join("shim.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn all_four_flags_are_required() {
        let a = parse_args(args(
            "--id p --state-dir /s --runtime /r --runtime-root /rr",
        ))
        .unwrap();
        assert_eq!((a.id.as_str(), a.state_dir.to_str().unwrap()), ("p", "/s"));
        assert_eq!(
            (
                a.runtime.to_str().unwrap(),
                a.runtime_root.to_str().unwrap()
            ),
            ("/r", "/rr")
        );
        assert!(parse_args(args("--id p --state-dir /s --runtime /r")).is_err());
        assert!(parse_args(args("--id")).is_err());
        assert!(parse_args(args("--bogus x")).is_err());
        assert!(!a.hide_unified_cgroup && a.pid_holder.is_none());
    }

    #[test]
    fn hide_unified_cgroup_takes_no_value() {
        let a = parse_args(args(
            "--id p --hide-unified-cgroup --state-dir /s --runtime /r --runtime-root /rr",
        ))
        .unwrap();
        assert!(a.hide_unified_cgroup);
        assert_eq!(a.state_dir.to_str(), Some("/s"));
    }
}
