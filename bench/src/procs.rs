//! Finding a runtime's processes through /proc and measuring their memory.

use std::path::Path;

/// Pids whose command line contains `needle` (a daemon's private directory names its shims).
pub fn mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id() as i32;
    all()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// The PID namespace holders (`berth-pidns --id <pod>`) of these pods: reparented to init, so
/// neither named after the daemon's directory nor below its shims.
pub fn pid_holders(pods: &[String]) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.len() >= 3
                    && args[0] == b"berth-pidns"
                    && pods.iter().any(|p| p.as_bytes() == args[2])
            })
        })
        .collect()
}

/// `roots` and every process below them.
pub fn with_descendants(roots: &[i32]) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all()
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command may contain spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut out: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for &(pid, ppid) in &parents {
            if ppid == parent && !out.contains(&pid) {
                out.push(pid);
            }
        }
        i += 1;
    }
    out
}

/// Proportional set size of a process in KiB (0 if it is gone).
pub fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn all() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
