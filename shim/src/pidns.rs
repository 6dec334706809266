//! The holder of a pod's shared PID namespace.
//!
//! A PID namespace lives only as long as its first process (its init): when that one exits,
//! the kernel kills every other process in it and nothing can join it any more. Pods that
//! share one PID namespace between their containers therefore need a process that is init of
//! the namespace and outlives every container. containerd runs a pause container for it; berth
//! forks it from the shim at start-up, before the shim has threads, so it costs no exec and
//! shares the shim's pages.
//!
//! The shim forks a helper that unshares a new PID namespace and forks the holder (the first
//! process of that namespace, so its init), writes the holder's pid to a file, and exits. The
//! holder is reparented to the host's init (the shim is not a subreaper yet), so it survives
//! the shim. It rewrites its command line to `berth-pidns --id <pod id>`, so that containers
//! that look at their pid 1 see that rather than the shim's command line with host paths. Its
//! only job is to reap the orphans the namespace gives it, until it is killed.

use std::path::Path;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Forks the holder of a new PID namespace and writes its pid (as the shim sees it) to
/// `pid_file`. Call only while the process is single-threaded.
pub fn spawn_holder(pid_file: &Path, pod_id: &str) -> anyhow::Result<u32> {
    let tmp = pid_file.with_extension("tmp");
    // SAFETY: the shim has no other thread yet (called before the runtime is built), so the
    // child may use any function, as the parent would.
    match unsafe { fork() }.context("forking the pid namespace helper")? {
        ForkResult::Child => {
            let code = match helper(&tmp, pid_file, pod_id) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("berth-shim: pid namespace holder: {e:#}");
                    1
                }
            };
            // SAFETY: _exit ends the child without running the parent's atexit handlers or
            // flushing buffers it shares with the parent.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            match waitpid(child, None).context("waiting for the pid namespace helper")? {
                WaitStatus::Exited(_, 0) => {}
                other => bail!("the pid namespace helper failed: {other:?}"),
            }
            let pid = std::fs::read_to_string(pid_file)
                .with_context(|| format!("reading {}", pid_file.display()))?;
            pid.trim()
                .parse()
                .with_context(|| format!("{} holds {pid:?}", pid_file.display()))
        }
    }
}

/// In the forked helper: a new PID namespace for the next child, which becomes the holder.
fn helper(tmp: &Path, pid_file: &Path, pod_id: &str) -> anyhow::Result<()> {
    unshare(CloneFlags::CLONE_NEWPID).context("unshare(CLONE_NEWPID)")?;
    // SAFETY: the helper is single-threaded (a fork of a single-threaded process).
    match unsafe { fork() }.context("forking the pid namespace holder")? {
        ForkResult::Child => become_holder(pod_id),
        ForkResult::Parent { child } => {
            std::fs::write(tmp, child.as_raw().to_string())
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(tmp, pid_file)
                .with_context(|| format!("renaming to {}", pid_file.display()))?;
            Ok(())
        }
    }
}

/// The process name, and `argv[0]`, of the holder (berthd checks it: server/src/shims.rs).
const HOLDER_NAME: &str = "berth-pidns";

/// In the holder, first process of the new namespace: drop everything of the shim's, take the
/// command line `berth-pidns --id <pod id>`, and hold.
fn become_holder(pod_id: &str) -> ! {
    // Nothing of the shim's may stay open here (its stdout pipe to berthd, its log), and the
    // holder must not keep any mount busy.
    let _ = nix::unistd::chdir("/");
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors; `null` stays valid during the call.
            unsafe { nix::libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: close_range only closes descriptors; none above 2 is used from here on.
    unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    set_cmdline(&[HOLDER_NAME, "--id", pod_id]);
    hold()
}

/// Rewrites this process's command line in place, as setproctitle(3) does: `/proc/<pid>/cmdline`
/// reads the argv area of the process's own memory, whose bounds the kernel gives in
/// `/proc/self/stat`. Not exec'ing keeps the holder a copy-on-write sharer of the shim's pages
/// (an exec of the shim binary cost about 400 KiB of PSS per pod); rewriting keeps containers
/// that read their pid 1 from seeing the shim's command line with host paths.
fn set_cmdline(args: &[&str]) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // Fields after the command name, which may hold spaces; `state` is field 3 of proc(5),
    // `arg_start` 48 and `arg_end` 49.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return;
    };
    if end <= start {
        return;
    }
    let mut area = vec![0u8; end - start];
    let text = args.join("\0");
    // The last byte stays NUL, which tells the kernel the area holds the whole command line.
    let n = text.len().min(area.len() - 1);
    area[..n].copy_from_slice(&text.as_bytes()[..n]);
    // SAFETY: [start, end) is this process's argv area, as the kernel reports it: mapped and
    // writable (the initial stack); the holder is single-threaded and never reads its
    // arguments again.
    unsafe { std::ptr::copy_nonoverlapping(area.as_ptr(), start as *mut u8, area.len()) };
}

/// Init of the pod's PID namespace: reaps whatever exits in it, forever.
fn hold() -> ! {
    let _ = nix::sys::prctl::set_name(c"berth-pidns");

    // SIGCHLD stays blocked except inside sigsuspend, so an exit between the reaping loop and
    // the wait is never missed: it is pending and ends the next sigsuspend at once.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_block();
    // SAFETY: a handler that does nothing; it exists so that SIGCHLD interrupts sigsuspend
    // (an ignored signal would not).
    unsafe {
        let _ = nix::sys::signal::sigaction(
            Signal::SIGCHLD,
            &nix::sys::signal::SigAction::new(
                nix::sys::signal::SigHandler::Handler(on_sigchld),
                nix::sys::signal::SaFlags::SA_NOCLDSTOP,
                SigSet::empty(),
            ),
        );
    }
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = SigSet::empty().suspend();
    }
}

extern "C" fn on_sigchld(_: nix::libc::c_int) {}
