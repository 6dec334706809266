//! Containers through crictl against a real berthd: the critest busybox image from a local
//! registry, overlay rootfs, runc through berth-shim, CRI logs, exec, stop and removal. Runs as
//! root; needs berthd and berth-shim side by side in the cargo target dir and the pinned crictl.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{mounts_under, path_str as s, wait_for, write_json};
use berth_e2e::registry::Registry;
use serde_json::{Value, json};

fn start(test: u8) -> Result<(Berthd, Registry)> {
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bc{}t{test}", pid % 100_000),
        &format!("10.{}.{}.0/24", 240 + test, pid % 250),
    )
}

fn pod_config(dir: &Path, name: &str) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}"), "attempt": 1},
            "hostname": format!("{name}-host"),
            "log_directory": dir.join("logs").join(name),
            "linux": {},
        }),
    )
}

fn container_config(dir: &Path, name: &str, args: &[&str]) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c"],
            "args": args,
            "envs": [{"key": "GREETING", "value": "hello"}],
            "labels": {"role": name},
            "log_path": format!("{name}/0.log"),
            "linux": {},
        }),
    )
}

fn runp(berthd: &Berthd, pod_cfg: &Path) -> Result<String> {
    Ok(berthd.crictl_ok(&["runp", s(pod_cfg)?])?.trim().to_string())
}

fn create(berthd: &Berthd, pod: &str, ctr: &Path, pod_cfg: &Path) -> Result<String> {
    Ok(berthd
        .crictl_ok(&["create", pod, s(ctr)?, s(pod_cfg)?])?
        .trim()
        .to_string())
}

#[test]
fn container_lifecycle_logs_exec_stop_and_cleanup() -> Result<()> {
    let (berthd, _registry) = start(1)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "app")?;
    let pod = runp(&berthd, &pod_cfg)?;

    // A long-running container that logs, ignores SIGTERM and serves execs.
    let web_cfg = container_config(
        &dir,
        "web",
        &[
            "trap '' TERM; echo $GREETING from $(hostname); echo oops >&2; while true; do sleep 1; done",
        ],
    )?;
    let mut times = Vec::new();
    let mut web = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            berthd.crictl_ok(&["rm", "-f", &web])?;
        }
        let t = Instant::now();
        web = create(&berthd, &pod, &web_cfg, &pod_cfg)?;
        berthd.crictl_ok(&["start", &web])?;
        times.push(t.elapsed());
    }
    times.sort();
    println!("create+start (crictl): {times:?}, median {:?}", times[2]);
    ensure!(web.len() == 64, "create printed {web:?}");

    let ps = berthd.crictl_json(&["ps", "-a"])?;
    let listed = ps["containers"].as_array().cloned().unwrap_or_default();
    ensure!(
        listed
            .iter()
            .any(|c| c["id"] == web.as_str() && c["state"] == "CONTAINER_RUNNING"),
        "{ps}"
    );
    let status = berthd.crictl_json(&["inspect", &web])?;
    ensure!(status["status"]["state"] == "CONTAINER_RUNNING", "{status}");
    ensure!(status["status"]["labels"]["role"] == "web", "{status}");
    ensure!(
        status["status"]["imageRef"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:")),
        "{status}"
    );
    let log_path = dir.join("logs/app/web/0.log");
    ensure!(
        status["status"]["logPath"] == log_path.display().to_string(),
        "{status}"
    );
    ensure!(status["info"]["pid"].as_u64().unwrap_or(0) > 0, "{status}");

    ensure!(
        wait_for(Duration::from_secs(5), || {
            berthd
                .crictl_ok(&["logs", &web])
                .is_ok_and(|l| l.contains("hello from app-host"))
        }),
        "logs: {:?}",
        berthd.crictl(&["logs", &web])
    );
    let raw = std::fs::read_to_string(&log_path)?;
    ensure!(raw.contains(" stdout F hello from app-host\n"), "{raw}");
    ensure!(raw.contains(" stderr F oops\n"), "{raw}");

    // exec -s: output, exit codes, a background child holding stdio, a timeout.
    let out = berthd.crictl_ok(&[
        "exec",
        "-s",
        &web,
        "sh",
        "-c",
        "echo out; cat /etc/hostname",
    ])?;
    ensure!(out.contains("out") && out.contains("app-host"), "{out}");
    // Output larger than a pipe holds arrives whole, on both streams (crictl prints both on
    // its stdout).
    let big = berthd.crictl(&[
        "exec",
        "-s",
        &web,
        "sh",
        "-c",
        "yes 0123456789abcdef | head -c 300000; yes e | head -c 70000 >&2",
    ])?;
    ensure!(
        big.stdout.len() >= 370_000,
        "{} bytes of output",
        big.stdout.len()
    );
    let failed = berthd.crictl(&["exec", "-s", &web, "sh", "-c", "exit 7"])?;
    ensure!(
        String::from_utf8_lossy(&failed.stderr).contains("exited with 7"),
        "{failed:?}"
    );
    let t = Instant::now();
    let bg = berthd.crictl_ok(&["exec", "-s", &web, "sh", "-c", "sleep 30 & echo started"])?;
    ensure!(
        bg.contains("started") && t.elapsed() < Duration::from_secs(10),
        "{bg} {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let timed = berthd.crictl(&["exec", "-s", "--timeout", "1", &web, "sleep", "30"])?;
    ensure!(
        !timed.status.success() && t.elapsed() < Duration::from_secs(10),
        "{timed:?}"
    );

    // ReopenContainerLog: kubelet renames the file, the shim writes a new one.
    std::fs::rename(&log_path, dir.join("rotated.log"))?;
    berthd.crictl_ok(&["logs", "--reopen", &web])?;
    ensure!(
        log_path.exists(),
        "the log was not reopened at {}",
        log_path.display()
    );

    // A container that exits 3.
    let bad_cfg = container_config(&dir, "bad", &["echo bye; exit 3"])?;
    let bad = create(&berthd, &pod, &bad_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &bad])?;
    ensure!(
        wait_for(Duration::from_secs(10), || berthd
            .crictl_json(&["inspect", &bad])
            .is_ok_and(|s| s["status"]["state"] == "CONTAINER_EXITED")),
        "{}",
        berthd.crictl_json(&["inspect", &bad])?
    );
    let st = berthd.crictl_json(&["inspect", &bad])?;
    ensure!(
        st["status"]["exitCode"] == 3 && st["status"]["reason"] == "Error",
        "{st}"
    );
    let exec_stopped = berthd.crictl(&["exec", "-s", &bad, "true"])?;
    ensure!(
        !exec_stopped.status.success(),
        "exec in an exited container: {exec_stopped:?}"
    );

    // The name is taken while the container exists.
    let dup = berthd.crictl(&["create", &pod, s(&bad_cfg)?, s(&pod_cfg)?])?;
    ensure!(
        String::from_utf8_lossy(&dup.stderr).contains(&bad),
        "{dup:?}"
    );

    // Stop with a short timeout: SIGTERM is ignored, SIGKILL follows.
    let t = Instant::now();
    berthd.crictl_ok(&["stop", "--timeout", "1", &web])?;
    ensure!(
        t.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        t.elapsed()
    );
    let st = berthd.crictl_json(&["inspect", &web])?;
    ensure!(
        st["status"]["state"] == "CONTAINER_EXITED" && st["status"]["exitCode"] == 137,
        "{st}"
    );
    berthd.crictl_ok(&["stop", &web])?;
    berthd.crictl_ok(&["rm", &web])?;
    ensure!(berthd.crictl(&["inspect", &web])?.status.code() != Some(0));

    // A running container goes with its pod.
    let last_cfg = container_config(&dir, "last", &["sleep 1000"])?;
    let last = create(&berthd, &pod, &last_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &last])?;
    berthd.crictl_ok(&["stopp", &pod])?;
    let st = berthd.crictl_json(&["inspect", &last])?;
    ensure!(st["status"]["state"] == "CONTAINER_EXITED", "{st}");
    berthd.crictl_ok(&["rmp", &pod])?;
    let ps = berthd.crictl_json(&["ps", "-a"])?;
    ensure!(
        ps["containers"].as_array().is_none_or(Vec::is_empty),
        "{ps}"
    );
    let state = berthd.paths().state.clone();
    ensure!(
        mounts_under(&state).is_empty(),
        "{:?}",
        mounts_under(&state)
    );
    let containers = state.join("containers");
    ensure!(
        std::fs::read_dir(&containers)
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "left in {}",
        containers.display()
    );
    let runc = state.join("runc");
    ensure!(
        std::fs::read_dir(&runc).map(|d| d.count()).unwrap_or(0) == 0,
        "runc state left in {}",
        runc.display()
    );
    Ok(())
}

#[test]
fn bad_container_input_is_refused() -> Result<()> {
    let (berthd, _registry) = start(2)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "bad")?;
    let pod = runp(&berthd, &pod_cfg)?;

    let missing = write_json(
        &dir,
        "missing.json",
        &json!({"metadata": {"name": "m"}, "image": {"image": "127.0.0.1:1/none:1"}, "linux": {}}),
    )?;
    let out = berthd.crictl(&["create", &pod, s(&missing)?, s(&pod_cfg)?])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("NotFound") && err.contains("pull"), "{err}");

    let escape = write_json(
        &dir,
        "escape.json",
        &json!({"metadata": {"name": "e"}, "image": {"image": BUSYBOX},
                "command": ["true"], "log_path": "../../escape.log", "linux": {}}),
    )?;
    let out = berthd.crictl(&["create", &pod, s(&escape)?, s(&pod_cfg)?])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("InvalidArgument"), "{err}");

    let unknown = berthd.crictl(&["create", "nosuchpod", s(&escape)?, s(&pod_cfg)?])?;
    ensure!(!unknown.status.success());
    ensure!(
        berthd
            .crictl(&["inspect", "nosuchcontainer"])?
            .status
            .code()
            != Some(0)
    );
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}

#[test]
fn containers_survive_a_berthd_restart_and_exits_during_it_are_recorded() -> Result<()> {
    let (mut berthd, _registry) = start(3)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "keep")?;
    let pod = runp(&berthd, &pod_cfg)?;
    let long_cfg = container_config(&dir, "long", &["sleep 1000"])?;
    let long = create(&berthd, &pod, &long_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &long])?;
    let short_cfg = container_config(&dir, "short", &["sleep 2; exit 4"])?;
    let short = create(&berthd, &pod, &short_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &short])?;

    berthd.restart()?;
    let st = berthd.crictl_json(&["inspect", &long])?;
    ensure!(st["status"]["state"] == "CONTAINER_RUNNING", "{st}");
    ensure!(
        wait_for(Duration::from_secs(10), || berthd
            .crictl_json(&["inspect", &short])
            .is_ok_and(|s| s["status"]["state"] == "CONTAINER_EXITED")),
        "{}",
        berthd.crictl_json(&["inspect", &short])?
    );
    let st = berthd.crictl_json(&["inspect", &short])?;
    ensure!(
        st["status"]["exitCode"] == 4 && st["status"]["reason"] == "Error",
        "{st}"
    );
    let out = berthd.crictl_ok(&["exec", "-s", &long, "echo", "still here"])?;
    ensure!(out.contains("still here"), "{out}");

    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    let state = berthd.paths().state.clone();
    ensure!(
        mounts_under(&state).is_empty(),
        "{:?}",
        mounts_under(&state)
    );
    Ok(())
}

#[test]
fn an_oom_killed_container_is_reported_oomkilled() -> Result<()> {
    let (berthd, _registry) = start(4)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "oom")?;
    let pod = runp(&berthd, &pod_cfg)?;
    let cfg = write_json(
        &dir,
        "hog.json",
        &json!({
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
    let id = create(&berthd, &pod, &cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &id])?;
    ensure!(
        wait_for(Duration::from_secs(20), || berthd
            .crictl_json(&["inspect", &id])
            .is_ok_and(|s| s["status"]["state"] == "CONTAINER_EXITED")),
        "{}",
        berthd.crictl_json(&["inspect", &id])?
    );
    let st = berthd.crictl_json(&["inspect", &id])?;
    ensure!(
        st["status"]["reason"] == "OOMKilled" && st["status"]["exitCode"] == 137,
        "{st}"
    );
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}

#[test]
fn containers_of_a_pod_share_its_pid_namespace_unless_they_ask_for_their_own() -> Result<()> {
    let (berthd, _registry) = start(5)?;
    let dir = berthd.paths().dir.clone();
    // No namespace options: PID mode POD, as crictl and kubelet's shareProcessNamespace send.
    let pod_cfg = pod_config(&dir, "shared")?;
    let pod = runp(&berthd, &pod_cfg)?;
    let a_cfg = container_config(&dir, "a", &["sleep 1001"])?;
    let a = create(&berthd, &pod, &a_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &a])?;
    let b_cfg = container_config(&dir, "b", &["sleep 1002"])?;
    let b = create(&berthd, &pod, &b_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &b])?;

    // The pod's /dev/shm is one tmpfs for both.
    berthd.crictl_ok(&["exec", "-s", &a, "sh", "-c", "echo shared > /dev/shm/note"])?;
    let note = berthd.crictl_ok(&["exec", "-s", &b, "cat", "/dev/shm/note"])?;
    ensure!(note.trim() == "shared", "b read {note:?} from /dev/shm");
    let shm = berthd.crictl_ok(&["exec", "-s", &b, "sh", "-c", "df -k /dev/shm | tail -1"])?;
    ensure!(shm.contains("65536"), "a 64 MiB tmpfs: {shm}");

    // b sees a's process, and pid 1 is the pod's holder, not either container.
    let ps = berthd.crictl_ok(&["exec", "-s", &b, "ps", "-o", "pid,comm,args"])?;
    ensure!(ps.contains("sleep 1001"), "{ps}");
    let init = berthd.crictl_ok(&["exec", "-s", &b, "cat", "/proc/1/comm"])?;
    ensure!(init.trim() == "berth-pidns", "pid 1 is {init:?}");
    // Its command line shows no host path.
    let cmdline = berthd.crictl_ok(&["exec", "-s", &b, "cat", "/proc/1/cmdline"])?;
    ensure!(
        cmdline.starts_with("berth-pidns\0--id\0") && !cmdline.contains('/'),
        "pid 1 runs {cmdline:?}"
    );
    let holder: u32 = {
        let a_pid = berthd.crictl_json(&["inspect", &a])?["info"]["pid"]
            .as_u64()
            .unwrap_or(0);
        let ns = |pid: u64| std::fs::read_link(format!("/proc/{pid}/ns/pid"));
        let a_ns = ns(a_pid)?;
        let b_ns = ns(berthd.crictl_json(&["inspect", &b])?["info"]["pid"]
            .as_u64()
            .unwrap_or(0))?;
        ensure!(a_ns == b_ns, "{a_ns:?} != {b_ns:?}");
        // The holder: the one process named berth-pidns in that namespace.
        std::fs::read_dir("/proc")?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "berth-pidns")
                    && ns(u64::from(*p)).is_ok_and(|n| n == a_ns)
            })
            .context("no holder process in the pod's PID namespace")?
    };

    // A container that asks for its own PID namespace is its own pid 1.
    let own_cfg = write_json(
        &dir,
        "own.json",
        &json!({
            "metadata": {"name": "own"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1003"],
            "log_path": "own/0.log",
            "linux": {"security_context": {"namespace_options": {"pid": 1}}},
        }),
    )?;
    let own = create(&berthd, &pod, &own_cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &own])?;
    let init = berthd.crictl_ok(&["exec", "-s", &own, "cat", "/proc/1/cmdline"])?;
    ensure!(init.starts_with("sleep"), "pid 1 is {init:?}");

    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    ensure!(
        wait_for(Duration::from_secs(5), || !Path::new(&format!(
            "/proc/{holder}"
        ))
        .exists()),
        "the holder {holder} outlived its pod"
    );
    Ok(())
}

#[test]
fn an_image_volume_mounts_another_images_content_read_only() -> Result<()> {
    let (berthd, _registry) = start(6)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "imgvol")?;
    let pod = runp(&berthd, &pod_cfg)?;
    let cfg = write_json(
        &dir,
        "imgvol.json",
        &json!({
            "metadata": {"name": "imgvol"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "mounts": [{"container_path": "/img", "image": {"image": BUSYBOX}, "readonly": true}],
            "log_path": "imgvol/0.log",
            "linux": {},
        }),
    )?;
    let id = create(&berthd, &pod, &cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &id])?;
    let out = berthd.crictl_ok(&["exec", "-s", &id, "ls", "/img/bin/busybox"])?;
    ensure!(out.contains("/img/bin/busybox"), "{out}");
    let write = berthd.crictl(&["exec", "-s", &id, "touch", "/img/new"])?;
    ensure!(!write.status.success(), "the image volume is writable");

    // A missing image is refused before anything is made.
    let missing = write_json(
        &dir,
        "missing.json",
        &json!({
            "metadata": {"name": "missing"},
            "image": {"image": BUSYBOX},
            "command": ["true"],
            "mounts": [{"container_path": "/img", "image": {"image": "example.com/not/pulled:1"}, "readonly": true}],
            "linux": {},
        }),
    )?;
    let refused = berthd.crictl(&["create", &pod, s(&missing)?, s(&pod_cfg)?])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("NotFound"),
        "{stderr}"
    );
    // So is a writable one: an image's layers are shared by all its containers.
    let writable = write_json(
        &dir,
        "writable.json",
        &json!({
            "metadata": {"name": "writable"},
            "image": {"image": BUSYBOX},
            "command": ["true"],
            "mounts": [{"container_path": "/img", "image": {"image": BUSYBOX}}],
            "linux": {},
        }),
    )?;
    let refused = berthd.crictl(&["create", &pod, s(&writable)?, s(&pod_cfg)?])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success()
            && stderr.contains("InvalidArgument")
            && stderr.contains("read-only"),
        "{stderr}"
    );

    berthd.crictl_ok(&["rm", "-f", &id])?;
    let state = berthd.paths().state.clone();
    ensure!(
        mounts_under(&state.join("containers")).is_empty(),
        "{:?}",
        mounts_under(&state)
    );
    let views: Vec<String> = std::fs::read_dir(berthd.paths().root.join("snapshots"))?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("meta.json")).ok())
        .filter(|meta| meta.contains("imgvol"))
        .collect();
    ensure!(views.is_empty(), "views left: {views:?}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}

/// An int64 of `crictl inspect`'s status: protojson prints int64 fields as strings.
fn int64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// The container's own cgroup limits as it sees them (runc mounts its cgroup at the top of
/// /sys/fs/cgroup): the CFS quota and the memory limit, on cgroup v1 or v2.
fn cgroup_limits(berthd: &Berthd, id: &str) -> Result<(i64, i64)> {
    let out = berthd.crictl_ok(&[
        "exec",
        "-s",
        id,
        "sh",
        "-c",
        "if [ -f /sys/fs/cgroup/cpu.max ]; then \
           cut -d' ' -f1 /sys/fs/cgroup/cpu.max; cat /sys/fs/cgroup/memory.max; \
         else \
           cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         fi",
    ])?;
    let values: Vec<i64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("cgroup limits: {out:?}"))?;
    match values[..] {
        [quota, memory] => Ok((quota, memory)),
        _ => anyhow::bail!("cgroup limits: {out:?}"),
    }
}

#[test]
fn a_resize_shows_in_container_status_and_survives_a_berthd_crash() -> Result<()> {
    let (mut berthd, _registry) = start(7)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "resize")?;
    let pod = runp(&berthd, &pod_cfg)?;
    let cfg = write_json(
        &dir,
        "sized.json",
        &json!({
            "metadata": {"name": "sized"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "log_path": "sized/0.log",
            "linux": {"resources": {
                "cpu_period": 100_000,
                "cpu_quota": 50_000,
                "cpu_shares": 512,
                "memory_limit_in_bytes": 64 << 20,
                "oom_score_adj": -999,
            }},
        }),
    )?;
    let id = create(&berthd, &pod, &cfg, &pod_cfg)?;
    berthd.crictl_ok(&["start", &id])?;
    // berthd clamps the score to its own; the status reports what was applied.
    let floor: i64 = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", berthd.pid()))?
        .trim()
        .parse()?;
    let oom_score_adj = floor.max(-999);
    // A node with swap accounting gets swap limited to the memory limit (no swap on top).
    let swap_accounting = Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        || Path::new("/sys/fs/cgroup/memory.swap.max").exists();
    let check = |st: &Value, quota: i64, memory: i64| -> Result<()> {
        let linux = &st["status"]["resources"]["linux"];
        let field = |name: &str| int64(&linux[name]);
        ensure!(
            field("cpuPeriod") == Some(100_000)
                && field("cpuQuota") == Some(quota)
                && field("cpuShares") == Some(512)
                && field("memoryLimitInBytes") == Some(memory),
            "{st}"
        );
        let swap = if swap_accounting { memory } else { 0 };
        ensure!(field("memorySwapLimitInBytes") == Some(swap), "{st}");
        ensure!(field("oomScoreAdj") == Some(oom_score_adj), "{st}");
        Ok(())
    };
    check(&berthd.crictl_json(&["inspect", &id])?, 50_000, 64 << 20)?;
    let limits = cgroup_limits(&berthd, &id)?;
    ensure!(limits == (50_000, 64 << 20), "cgroup: {limits:?}");

    // What kubelet does for an in-place resize.
    berthd.crictl_ok(&[
        "update",
        "--cpu-quota",
        "20000",
        "--memory",
        &(128i64 << 20).to_string(),
        &id,
    ])?;
    check(&berthd.crictl_json(&["inspect", &id])?, 20_000, 128 << 20)?;
    let limits = cgroup_limits(&berthd, &id)?;
    ensure!(limits == (20_000, 128 << 20), "cgroup: {limits:?}");

    // An update the runtime refuses (a CFS period below the kernel's 1000us) changes nothing.
    let refused = berthd.crictl(&["update", "--cpu-period", "10", &id])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("update failed"),
        "{refused:?}"
    );
    check(&berthd.crictl_json(&["inspect", &id])?, 20_000, 128 << 20)?;

    berthd.kill9()?;
    berthd.start_again()?;
    let st = berthd.crictl_json(&["inspect", &id])?;
    ensure!(st["status"]["state"] == "CONTAINER_RUNNING", "{st}");
    check(&st, 20_000, 128 << 20)?;
    let limits = cgroup_limits(&berthd, &id)?;
    ensure!(limits == (20_000, 128 << 20), "cgroup: {limits:?}");

    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}
