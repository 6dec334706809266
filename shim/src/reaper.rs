//! Reaping: the shim is a child subreaper and collects every child's exit status.
//!
//! Orphaned container processes (runc's init and exec processes, once runc exits) are reparented
//! to the shim. One task waits on SIGCHLD and calls `waitpid(-1, WNOHANG)` until nothing is left;
//! each exit goes to whoever subscribed to that pid, or is parked until someone does. A parked
//! exit only matches a subscription whose process started before the exit was seen, so an old
//! exit never matches a new process that reuses the pid.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// Parked exits older than this are dropped: nobody subscribes that late.
const PARKED_TTL_SECS: u64 = 300;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number for a process killed by a signal.
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn from_wait(ws: WaitStatus, at: SystemTime) -> Option<(i32, Exit)> {
        match ws {
            WaitStatus::Exited(pid, code) => Some((
                pid.as_raw(),
                Exit {
                    status: u32::try_from(code).unwrap_or(255),
                    at,
                },
            )),
            WaitStatus::Signaled(pid, sig, _) => Some((
                pid.as_raw(),
                Exit {
                    status: 128 + sig as u32,
                    at,
                },
            )),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    parked: HashMap<i32, (Exit, Instant)>,
}

/// Hands out child exits by pid.
#[derive(Default, Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Starts the SIGCHLD loop on the current runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(ws) => {
                    if let Some((pid, exit)) = Exit::from_wait(ws, SystemTime::now()) {
                        self.deliver(pid, exit, Instant::now());
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid");
                    return;
                }
            }
        }
    }

    /// Hands an exit to its subscriber or parks it (the SIGCHLD loop; tests).
    pub(crate) fn deliver(&self, pid: i32, exit: Exit, seen: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = inner.waiters.remove(&pid) {
            let _ = tx.send(exit);
            return;
        }
        inner
            .parked
            .retain(|_, (_, t)| t.elapsed().as_secs() < PARKED_TTL_SECS);
        inner.parked.insert(pid, (exit, seen));
    }

    /// Subscribes to the exit of `pid`, a process that started at or after `started`.
    pub fn subscribe(&self, pid: i32, started: Instant) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.parked.remove(&pid) {
            Some((exit, seen)) if seen >= started => {
                let _ = tx.send(exit);
            }
            _ => {
                inner.waiters.insert(pid, tx);
            }
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;

    #[test]
    fn signal_exit_is_128_plus_signal() {
        let ws = WaitStatus::Signaled(Pid::from_raw(7), Signal::SIGKILL, false);
        let (pid, exit) = Exit::from_wait(ws, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!((pid, exit.status), (7, 137));
    }

    #[test]
    fn exit_seen_before_subscription_is_delivered() {
        let r = Reaper::default();
        let started = Instant::now();
        let exit = Exit {
            status: 3,
            at: SystemTime::UNIX_EPOCH,
        };
        r.deliver(42, exit, Instant::now());
        let mut rx = r.subscribe(42, started);
        assert_eq!(rx.try_recv().unwrap(), exit);
    }

    #[test]
    fn parked_exit_of_an_older_process_is_not_matched() {
        let r = Reaper::default();
        let exit = Exit {
            status: 1,
            at: SystemTime::UNIX_EPOCH,
        };
        r.deliver(42, exit, Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        let mut rx = r.subscribe(42, Instant::now());
        assert!(rx.try_recv().is_err());
        let later = Exit {
            status: 0,
            at: SystemTime::UNIX_EPOCH,
        };
        r.deliver(42, later, Instant::now());
        assert_eq!(rx.try_recv().unwrap(), later);
    }
}
