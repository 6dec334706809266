//! crun as a second runtime handler, picked by the pod's runtime handler (RuntimeClass), through
//! crictl against a real berthd. On a hybrid cgroup host (this one) crun runs without the
//! cgroup2 mount and manages cgroup v1 only; everything a container needs still works: limits
//! read from the inside and updated live, logs, exec, the pod's PID namespace, shared mounts
//! reaching the host, OOM kills, a berthd restart, and a clean removal. Runs as root; needs crun.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{mounts_under, path_str as s, shared_mount, wait_for, write_json};
use berth_e2e::registry::Registry;
use nix::mount::{MsFlags, mount};
use serde_json::{Value, json};

const CRUN: &str = "/usr/bin/crun";

fn start() -> Result<(Berthd, Registry)> {
    ensure!(
        Path::new(CRUN).exists(),
        "{CRUN} is missing (hack/lib.sh installs Debian's crun)"
    );
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default().runtime("crun", CRUN),
        &format!("bk{}", pid % 100_000),
        &format!("10.226.{}.0/24", pid % 250),
    )
}

fn exec(berthd: &Berthd, id: &str, script: &str) -> Result<String> {
    berthd.crictl_ok(&["exec", "-s", id, "sh", "-c", script])
}

/// crun's view of container `id` in berthd's runtime root: its state JSON.
fn crun_state(berthd: &Berthd, id: &str) -> Result<Value> {
    let out = Command::new(CRUN)
        .arg("--root")
        .arg(berthd.paths().state.join("runc"))
        .args(["state", id])
        .output()?;
    ensure!(out.status.success(), "crun state {id}: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn crun_list(berthd: &Berthd) -> Result<String> {
    let out = Command::new(CRUN)
        .arg("--root")
        .arg(berthd.paths().state.join("runc"))
        .arg("list")
        .arg("-q")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Pod {
    id: String,
    cfg: PathBuf,
}

impl Pod {
    fn run(berthd: &Berthd, name: &str, linux: Value) -> Result<Pod> {
        let dir = berthd.paths().dir.clone();
        let cfg = write_json(
            &dir,
            &format!("{name}-pod.json"),
            &json!({
                "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}"), "attempt": 1},
                "hostname": format!("{name}-host"),
                "log_directory": dir.join("logs").join(name),
                "linux": linux,
            }),
        )?;
        let id = berthd
            .crictl_ok(&["runp", "--runtime", "crun", s(&cfg)?])?
            .trim()
            .to_string();
        Ok(Pod { id, cfg })
    }

    fn container(&self, berthd: &Berthd, config: Value) -> Result<String> {
        let name = config["metadata"]["name"]
            .as_str()
            .unwrap_or("c")
            .to_string();
        let cfg = write_json(&berthd.paths().dir, &format!("{name}-ctr.json"), &config)?;
        let id = berthd
            .crictl_ok(&["create", &self.id, s(&cfg)?, s(&self.cfg)?])?
            .trim()
            .to_string();
        berthd.crictl_ok(&["start", &id])?;
        Ok(id)
    }
}

#[test]
fn crun_runs_a_pods_containers_with_limits_logs_exec_and_restart() -> Result<()> {
    let (mut berthd, _registry) = start()?;
    let pod = Pod::run(&berthd, "app", json!({}))?;
    let out = berthd.crictl_ok(&["inspectp", "-o", "json", &pod.id])?;
    let pod_status: Value = serde_json::from_str(&out)?;
    ensure!(
        pod_status["status"]["runtimeHandler"] == "crun",
        "{pod_status}"
    );

    let web = pod.container(
        &berthd,
        json!({
            "metadata": {"name": "web"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c",
                "trap '' TERM; echo hello from $(hostname); while true; do sleep 1; done"],
            "log_path": "web/0.log",
            "linux": {"resources": {
                "memory_limit_in_bytes": 64 << 20,
                "cpu_period": 100_000,
                "cpu_quota": 50_000,
            }},
        }),
    )?;
    // crun, not runc, runs it: crun answers for it from berthd's runtime root.
    let state = crun_state(&berthd, &web)?;
    ensure!(state["status"] == "running", "{state}");
    let status = berthd.crictl_json(&["inspect", &web])?;
    ensure!(status["status"]["state"] == "CONTAINER_RUNNING", "{status}");
    ensure!(
        wait_for(Duration::from_secs(5), || berthd
            .crictl_ok(&["logs", &web])
            .is_ok_and(|l| l.contains("hello from app-host"))),
        "logs: {:?}",
        berthd.crictl(&["logs", &web])?
    );

    // Limits through cgroup v1, read from the inside and from the host.
    let limits = exec(
        &berthd,
        &web,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us",
    )?;
    ensure!(
        limits.split_whitespace().collect::<Vec<_>>() == ["67108864", "50000"],
        "{limits}"
    );
    let pid = status["info"]["pid"].as_u64().context("no pid")?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    ensure!(
        cgroup
            .lines()
            .any(|l| l.ends_with(&format!(":memory:/berth/{}/{web}", pod.id))),
        "{cgroup}"
    );
    berthd.crictl_ok(&["update", "--memory", "100663296", &web])?;
    let limit = exec(
        &berthd,
        &web,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
    )?;
    ensure!(limit.trim() == "100663296", "after update: {limit}");

    // Exec exit codes, and the pod's PID namespace (its holder is pid 1).
    let out = berthd.crictl(&["exec", "-s", &web, "sh", "-c", "exit 3"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exited with 3"),
        "{out:?}"
    );
    let init = exec(&berthd, &web, "cat /proc/1/cmdline | tr '\\0' ' '")?;
    ensure!(init.starts_with("berth-pidns"), "pid 1 is {init:?}");

    // berthd goes away hard; crun's container keeps running and is found again.
    berthd.kill9()?;
    berthd.start_again()?;
    ensure!(
        berthd.crictl_json(&["inspect", &web])?["status"]["state"] == "CONTAINER_RUNNING",
        "{}",
        berthd.crictl_json(&["inspect", &web])?
    );
    ensure!(exec(&berthd, &web, "echo still here")?.contains("still here"));

    // SIGTERM is ignored, so the stop timeout ends in SIGKILL.
    berthd.crictl_ok(&["stop", "-t", "1", &web])?;
    let st = berthd.crictl_json(&["inspect", &web])?;
    ensure!(
        st["status"]["state"] == "CONTAINER_EXITED" && st["status"]["exitCode"] == 137,
        "{st}"
    );

    let hog = pod.container(
        &berthd,
        json!({
            "metadata": {"name": "hog"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c", "head -c 200m /dev/zero | tail"],
            "log_path": "hog/0.log",
            "linux": {"resources": {
                "memory_limit_in_bytes": 16 << 20,
                "memory_swap_limit_in_bytes": 16 << 20,
            }},
        }),
    )?;
    ensure!(
        wait_for(Duration::from_secs(20), || berthd
            .crictl_json(&["inspect", &hog])
            .is_ok_and(|s| s["status"]["state"] == "CONTAINER_EXITED")),
        "{}",
        berthd.crictl_json(&["inspect", &hog])?
    );
    let st = berthd.crictl_json(&["inspect", &hog])?;
    ensure!(
        st["status"]["reason"] == "OOMKilled" && st["status"]["exitCode"] == 137,
        "{st}"
    );

    berthd.crictl_ok(&["rmp", "-f", &pod.id])?;
    ensure!(crun_list(&berthd)?.is_empty(), "{}", crun_list(&berthd)?);
    let state_dir = berthd.paths().state.clone();
    ensure!(
        mounts_under(&state_dir).is_empty(),
        "{:?}",
        mounts_under(&state_dir)
    );
    let pod_cgroup = PathBuf::from("/sys/fs/cgroup/memory/berth").join(&pod.id);
    ensure!(!pod_cgroup.exists(), "{} is left", pod_cgroup.display());
    Ok(())
}

fn unified_mounted() -> Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup/unified")))
}

/// crun runs in a mount namespace of its own on this host; the mounts a container makes in
/// an rshared volume must still reach the host, and the host's must reach the container.
#[test]
fn shared_mounts_of_a_crun_container_reach_the_host() -> Result<()> {
    let had_unified = unified_mounted()?;
    let (berthd, _registry) = start()?;
    let shared = berthd.paths().dir.join("shared");
    std::fs::create_dir_all(shared.join("from-host"))?;
    std::fs::create_dir_all(shared.join("from-ctr"))?;
    let _guard = shared_mount(&shared)?;
    let privileged = json!({"security_context": {"privileged": true}});
    let pod = Pod::run(&berthd, "prop", privileged.clone())?;
    let ctr = pod.container(
        &berthd,
        json!({
            "metadata": {"name": "both"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "mounts": [{"container_path": "/mnt/shared", "host_path": shared, "propagation": 2}],
            "linux": privileged,
        }),
    )?;

    mount(
        Some("tmpfs"),
        &shared.join("from-host"),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    std::fs::write(shared.join("from-host/flag"), "host")?;
    let seen = exec(&berthd, &ctr, "cat /mnt/shared/from-host/flag")?;
    ensure!(seen.trim() == "host", "the container sees {seen:?}");

    exec(
        &berthd,
        &ctr,
        "mount -t tmpfs none /mnt/shared/from-ctr && echo ctr > /mnt/shared/from-ctr/flag",
    )?;
    let flag = shared.join("from-ctr/flag");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !flag.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        flag.exists(),
        "an rshared mount made in a crun container did not reach the host"
    );
    // Only crun's namespace goes without the host's cgroup2 mount.
    ensure!(
        unified_mounted()? == had_unified,
        "the host's /sys/fs/cgroup/unified changed"
    );
    berthd.crictl_ok(&["rmp", "-f", &pod.id])?;
    Ok(())
}
