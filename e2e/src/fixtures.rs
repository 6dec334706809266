//! Small helpers the end-to-end tests share: config files, polling, mounts and processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Writes `v` as JSON to `<dir>/<name>` (a crictl config file) and returns its path.
pub fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(v)?)?;
    Ok(path)
}

/// `p` as a command-line argument.
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

/// Polls `f` every 50 ms until it is true (true) or `timeout` has passed (its last answer).
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Mount points (mountinfo field 5) at or under `dir`, as this process sees them.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&d))
        .map(str::to_string)
        .collect()
}

/// Makes `dir` a shared mount (bound onto itself, then rshared), as the source of an rshared
/// or rslave volume must be; the guard unmounts it and whatever propagated below it.
pub fn shared_mount(dir: &Path) -> Result<MountGuard> {
    use nix::mount::{MsFlags, mount};
    let guard = MountGuard(dir.to_path_buf());
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("bind-mounting {} onto itself", dir.display()))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .with_context(|| format!("making {} shared", dir.display()))?;
    Ok(guard)
}

/// Unmounts everything at or under a directory when dropped, deepest first (a few rounds, for
/// mounts that propagated in while the first were going).
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        for _ in 0..4 {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut mounts: Vec<PathBuf> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(PathBuf::from)
                .filter(|m| m.starts_with(&self.0))
                .collect();
            if mounts.is_empty() {
                return;
            }
            mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
            for m in mounts {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_once_true_and_gives_up_after_the_timeout() {
        let mut n = 0;
        assert!(wait_for(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        assert!(!wait_for(Duration::from_millis(1), || false));
    }

    #[test]
    fn json_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let v = serde_json::json!({"metadata": {"name": "x"}});
        let p = write_json(dir.path(), "x.json", &v).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, v);
        assert!(path_str(&p).unwrap().ends_with("x.json"));
    }
}
