//! Child processes that are stopped by PID when dropped, and small polling helpers.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A spawned child whose stdout and stderr go to one log file (a file, not a pipe, so a chatty
/// child never blocks on a full pipe and the log can be read at any time).
#[derive(Debug)]
pub(crate) struct LoggedChild {
    name: String,
    child: Child,
    log: PathBuf,
}

impl LoggedChild {
    /// Spawns `cmd`, appending its output to `log` (a restarted daemon keeps one log).
    pub(crate) fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("dup {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {name} ({:?})", cmd.get_program()))?;
        Ok(LoggedChild {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(description)` once the child has exited.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status ({e})")),
        }
    }

    /// The last `max` bytes of the log.
    pub(crate) fn log_tail(&self, max: usize) -> String {
        tail(&self.log, max)
    }

    /// SIGTERM, then SIGKILL if the child is still there after `grace`; always reaps it.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let pid = Pid::from_raw(pid);
        // The child is not reaped yet (checked above), so the PID cannot have been reused.
        if kill(pid, Signal::SIGTERM).is_ok() && wait_until(grace, || self.exited().is_some()) {
            return;
        }
        if let Err(e) = kill(pid, Signal::SIGKILL) {
            eprintln!("berth-e2e: SIGKILL {} (pid {pid}): {e}", self.name);
        }
        if let Err(e) = self.child.wait() {
            eprintln!("berth-e2e: wait for {} (pid {pid}): {e}", self.name);
        }
    }
}

impl LoggedChild {
    /// SIGKILL at once, as a crash would, and reap the child.
    pub(crate) fn kill9(&mut self) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        // Not reaped yet (checked above), so the PID is still the child's.
        kill(pid, Signal::SIGKILL).with_context(|| format!("SIGKILL {} (pid {pid})", self.name))?;
        self.child
            .wait()
            .with_context(|| format!("wait for {} (pid {pid})", self.name))?;
        Ok(())
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Polls `done` every 50 ms until it is true (returns true) or `timeout` passes (false).
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before the
/// caller binds it, so callers retry on a bind failure.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("local address of 127.0.0.1:0")?
        .port())
}

/// The last `max` bytes of a file, lossily decoded; a note if it cannot be read.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(data) => {
            let start = data.len().saturating_sub(max);
            String::from_utf8_lossy(&data[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
