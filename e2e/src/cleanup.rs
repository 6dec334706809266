//! Best-effort teardown of what a daemon under test leaves behind: processes and mounts that
//! refer to the test's private directory. Every step logs and carries on, because teardown runs
//! in `Drop`, possibly while a failed test is unwinding.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::wait_until;

/// PIDs (other than this process) whose command line mentions `needle`.
pub(crate) fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let needle = needle.as_os_str().as_encoded_bytes();
    // A process may exit while we look: unreadable means gone.
    other_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| contains(&c, needle))
        })
        .collect()
}

/// PIDs of processes in another mount namespace whose mounts name `dir`: containers whose
/// rootfs (an overlay of layers, or a bind mount) lives under the test's directory. Their
/// command lines do not mention it, and they outlive a killed shim.
pub(crate) fn containers_rooted_in(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(own_ns) = std::fs::read_link("/proc/self/ns/mnt") else {
        return Vec::new();
    };
    other_pids()
        .into_iter()
        .filter(|pid| {
            // Processes sharing our mount namespace see our mounts under `dir`: skip them.
            std::fs::read_link(format!("/proc/{pid}/ns/mnt")).is_ok_and(|ns| ns != own_ns)
                && std::fs::read(format!("/proc/{pid}/mountinfo"))
                    .is_ok_and(|m| contains(&m, needle))
        })
        .collect()
}

/// SIGKILLs every container process rooted under `dir` (see [`containers_rooted_in`]). No
/// SIGTERM first: a container's init ignores signals it has no handler for, and nothing in
/// it needs a graceful stop once the test is over.
pub(crate) fn kill_containers_rooted_in(dir: &Path) {
    for pid in containers_rooted_in(dir) {
        eprintln!(
            "berth-e2e: SIGKILL leftover container process {pid} rooted in {}",
            dir.display()
        );
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn other_pids() -> Vec<i32> {
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect()
}

/// Kills every process whose command line mentions `dir` (detached shims and the like that
/// outlive the daemon): SIGTERM, a short grace, then SIGKILL, by PID.
pub(crate) fn kill_processes_mentioning(dir: &Path, grace: Duration) {
    let pids = processes_mentioning(dir);
    if pids.is_empty() {
        return;
    }
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let gone = |pid: i32| kill(Pid::from_raw(pid), None).is_err() || is_zombie(pid);
    if wait_until(grace, || pids.iter().all(|&p| gone(p))) {
        return;
    }
    for &pid in &pids {
        if !gone(pid) {
            eprintln!(
                "berth-e2e: SIGKILL leftover process {pid} mentioning {}",
                dir.display()
            );
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// SIGKILLs the PID namespace holders of the pods whose shims live under `shims_dir`: each
/// shim dir names its holder in `pid-holder`. Holders are reparented to init and their
/// command line (`berth-pidns --id <pod>`) does not name the test's dir, so nothing else finds
/// them. A pid is only killed while it is still a holder of that pod.
pub(crate) fn kill_pid_holders(shims_dir: &Path) {
    for entry in std::fs::read_dir(shims_dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("pid-holder")) else {
            continue;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            continue;
        };
        let short_id = entry.file_name().to_string_lossy().into_owned();
        let is_holder = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "berth-pidns")
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| contains(&c, short_id.as_bytes()));
        if is_holder {
            eprintln!("berth-e2e: SIGKILL leftover pid namespace holder {pid} of pod {short_id}");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Removes the cgroups berthd made for the pods whose state dirs are under `sandboxes_dir`
/// (`berth/<pod id>` and its containers' below it, in every hierarchy), once their processes
/// are gone: a failed test leaves its pods, and their cgroups live outside the test's dir.
pub(crate) fn remove_pod_cgroups(sandboxes_dir: &Path) {
    remove_pod_cgroups_in(Path::new("/sys/fs/cgroup"), sandboxes_dir);
}

fn remove_pod_cgroups_in(cgroup_root: &Path, sandboxes_dir: &Path) {
    let pods: Vec<String> = std::fs::read_dir(sandboxes_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    if pods.is_empty() {
        return;
    }
    // cgroup v2 (or hybrid's unified tree) at the root, v1 hierarchies one level down.
    let mut hierarchies = vec![cgroup_root.to_path_buf()];
    hierarchies.extend(
        std::fs::read_dir(cgroup_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && !p.is_symlink()),
    );
    for hierarchy in hierarchies {
        for id in &pods {
            let pod = hierarchy.join("berth").join(id);
            if pod.is_dir() {
                remove_cgroup_tree(&pod);
            }
        }
    }
}

/// rmdir of a cgroup and the cgroups below it, children first (a cgroup's files go with it).
fn remove_cgroup_tree(dir: &Path) {
    for child in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&child.path());
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => eprintln!("berth-e2e: removed leftover cgroup {}", dir.display()),
        Err(e) => eprintln!("berth-e2e: leftover cgroup {}: {e}", dir.display()),
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // The state follows the parenthesised command name, which may itself contain spaces.
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Lazily unmounts every mount point at or under `dir`, deepest (and most recent) first, until
/// none is left or no progress is made.
pub(crate) fn unmount_under(dir: &Path) {
    for _ in 0..8 {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let targets = mounts_under(&parse_mount_points(&info), dir);
        if targets.is_empty() {
            return;
        }
        let mut progress = false;
        for target in &targets {
            match umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => progress = true,
                Err(e) => eprintln!("berth-e2e: umount {}: {e}", target.display()),
            }
        }
        if !progress {
            return;
        }
    }
}

/// The mount points of a mountinfo file, in mount order.
pub(crate) fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    // Fields: id parent major:minor root mount-point options ...; the mount point is field 5.
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .collect()
}

/// The mount points at or under `dir`, in unmount order: deepest first, later mounts before
/// earlier ones on the same path (they stack).
pub(crate) fn mounts_under(mount_points: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let mut under: Vec<(usize, usize, PathBuf)> = mount_points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.starts_with(dir))
        .map(|(order, p)| (p.components().count(), order, p.clone()))
        .collect();
    under.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    under.into_iter().map(|(_, _, p)| p).collect()
}

/// The kernel escapes space, tab, newline and backslash in mountinfo as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /tmp/t rw shared:2 - tmpfs tmpfs rw
31 30 0:27 / /tmp/t/root/overlay/c1/rootfs rw - overlay overlay rw,lowerdir=/a
32 30 0:4 net:[4026532] /tmp/t/state/netns/cni-1 rw - nsfs nsfs rw
33 31 0:28 / /tmp/t/root/overlay/c1/rootfs/proc rw - proc proc rw
34 22 0:29 / /tmp/t2/x rw - tmpfs tmpfs rw
35 30 0:30 / /tmp/t/with\\040space rw - tmpfs tmpfs rw
36 30 0:31 / /tmp/t/state/netns/cni-1 rw - nsfs nsfs rw
";

    #[test]
    fn pod_cgroups_of_the_test_are_removed_children_first_and_others_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cgroup");
        let sandboxes = tmp.path().join("sandboxes");
        let ours = "ab12";
        std::fs::create_dir_all(sandboxes.join(ours)).unwrap();
        for h in ["", "memory", "cpu,cpuacct"] {
            std::fs::create_dir_all(root.join(h).join("berth").join(ours).join("ctr1")).unwrap();
            std::fs::create_dir_all(root.join(h).join("berth").join("cd34")).unwrap();
        }
        remove_pod_cgroups_in(&root, &sandboxes);
        for h in ["", "memory", "cpu,cpuacct"] {
            assert!(!root.join(h).join("berth").join(ours).exists(), "{h}");
            assert!(root.join(h).join("berth").join("cd34").exists(), "{h}");
        }
    }

    #[test]
    fn mount_points_are_unescaped() {
        let points = parse_mount_points(MOUNTINFO);
        assert_eq!(points.len(), 8);
        assert_eq!(points[0], PathBuf::from("/"));
        assert_eq!(points[6], PathBuf::from("/tmp/t/with space"));
        assert_eq!(unescape_octal("a\\011b\\012c\\134d"), "a\tb\nc\\d");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn mounts_under_a_dir_come_deepest_and_latest_first() {
        let got = mounts_under(&parse_mount_points(MOUNTINFO), Path::new("/tmp/t"));
        let got: Vec<_> = got.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            [
                "/tmp/t/root/overlay/c1/rootfs/proc",
                "/tmp/t/root/overlay/c1/rootfs",
                "/tmp/t/state/netns/cni-1",
                "/tmp/t/state/netns/cni-1",
                "/tmp/t/with space",
                "/tmp/t",
            ]
        );
        // Sibling prefixes (/tmp/t2) are not under /tmp/t.
        assert!(!got.contains(&"/tmp/t2/x"));
    }

    #[test]
    fn finds_this_process_children_by_command_line() {
        let marker = format!("/tmp/berth-e2e-marker-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            // A loop, not a lone `sleep`, which sh would exec (dropping the marker from cmdline).
            .args([
                "-c",
                "trap 'exit 0' TERM; while :; do sleep 0.1; done",
                &marker,
            ])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Under load the scan can run before the child's /proc entry shows its final cmdline.
        assert!(
            wait_until(Duration::from_secs(5), || processes_mentioning(Path::new(
                &marker
            ))
            .contains(&pid)),
            "child {pid} with {marker} in its command line not found"
        );
        kill_processes_mentioning(Path::new(&marker), Duration::from_secs(5));
        child.wait().unwrap();
        assert!(!processes_mentioning(Path::new(&marker)).contains(&pid));
    }

    #[test]
    fn finds_processes_whose_private_mounts_name_the_dir() {
        // Needs root (unshare -m): the e2e crate's tests run as root.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let script = format!(
            "mount -t tmpfs tmpfs {} && touch {}/ready && while :; do sleep 0.1; done",
            target.display(),
            target.display()
        );
        let mut child = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let ready = format!("/proc/{pid}/root{}/ready", target.display());
        assert!(
            wait_until(Duration::from_secs(10), || Path::new(&ready).exists()),
            "unshare -m did not mount"
        );
        assert!(containers_rooted_in(dir.path()).contains(&pid));
        assert!(
            !containers_rooted_in(dir.path()).contains(&i32::try_from(std::process::id()).unwrap())
        );
        kill_containers_rooted_in(dir.path());
        child.wait().unwrap();
        // A `sleep` forked between the scan and the kill outlives sh by up to 0.1 s.
        assert!(
            wait_until(Duration::from_secs(5), || {
                kill_containers_rooted_in(dir.path());
                containers_rooted_in(dir.path()).is_empty()
            }),
            "processes in the private mount namespace survived"
        );
    }
}
