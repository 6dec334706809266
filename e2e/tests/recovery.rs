//! Crash recovery through crictl against a real berthd: kill -9 with many pods running, with
//! exits and a dead shim during the outage; kill -9 in the middle of RunPodSandbox and of
//! CreateContainer; and 50 pods created and removed leaving nothing behind. Runs as root;
//! needs berthd and berth-shim in the cargo target dir and the pinned crictl.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, DEBIAN_CNI_BIN_DIR, berthd_with_busybox};
use berth_e2e::fixtures::{mounts_under, path_str as s, wait_for, write_json};
use berth_e2e::registry::Registry;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

fn network(test: u8) -> (String, String) {
    let pid = std::process::id();
    (
        format!("br{}t{test}", pid % 100_000),
        format!("10.{}.{}.0/24", 230 + test, pid % 250),
    )
}

fn start(test: u8, options: BerthdOptions) -> Result<(Berthd, Registry)> {
    let (bridge, subnet) = network(test);
    berthd_with_busybox(options, &bridge, &subnet)
}

fn pod_config(dir: &Path, name: &str) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "recovery", "uid": format!("uid-{name}"), "attempt": 1},
            "log_directory": dir.join("logs").join(name),
            "linux": {},
        }),
    )
}

/// A container running `script` with `host_dir` (if any) mounted at /shared.
fn container_config(
    dir: &Path,
    name: &str,
    script: &str,
    host_dir: Option<&Path>,
) -> Result<PathBuf> {
    let mounts = match host_dir {
        Some(d) => json!([{"container_path": "/shared", "host_path": d}]),
        None => json!([]),
    };
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c", script],
            "log_path": format!("{name}.log"),
            "mounts": mounts,
            "linux": {},
        }),
    )
}

fn runp(berthd: &Berthd, cfg: &Path, handler: Option<&str>) -> Result<String> {
    let mut args = vec!["runp"];
    if let Some(h) = handler {
        args.extend(["--runtime", h]);
    }
    args.push(s(cfg)?);
    Ok(berthd.crictl_ok(&args)?.trim().to_string())
}

fn list(berthd: &Berthd, what: &str, key: &str) -> Result<Vec<Value>> {
    let v = berthd.crictl_json(&[what])?;
    Ok(v[key].as_array().cloned().unwrap_or_default())
}

/// Nanoseconds since the epoch of a UTC RFC 3339 time as crictl prints it
/// (`2026-11-28T23:02:01.740095558Z`).
fn rfc3339_ns(t: &str) -> Option<u128> {
    let (date, time) = t.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(str::parse::<i64>);
    let (hh, mm, ss) = (h.next()?.ok()?, h.next()?.ok()?, h.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u128::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    let nanos: u128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

#[test]
fn rfc3339_parses_like_the_clock() {
    assert_eq!(rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
    assert_eq!(
        rfc3339_ns("2026-11-28T23:02:01.740095558Z"),
        Some(1_795_906_921_740_095_558)
    );
}

fn alive(pid: u64) -> bool {
    // A zombie has exited: it only waits for its parent to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|r| !r.starts_with(" Z"))
    })
}

fn sigkill(pid: u64) -> Result<()> {
    kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGKILL)?;
    Ok(())
}

/// Pids of processes whose command line mentions `needle` (shims name their state dir).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter(|pid| alive(u64::from(*pid)))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Cgroup directories named after any of `ids`, in every mounted hierarchy.
fn cgroups_named(ids: &HashSet<String>) -> Vec<PathBuf> {
    fn walk(dir: &Path, ids: &HashSet<String>, depth: usize, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if ids.contains(&e.file_name().to_string_lossy().into_owned()) {
                out.push(p.clone());
            }
            walk(&p, ids, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), ids, 5, &mut out);
    out
}

/// Veth ends attached to `bridge`.
fn ports_of(bridge: &str) -> Vec<String> {
    entries(&Path::new("/sys/class/net").join(bridge).join("brif"))
}

/// Address leases of the harness's host-local IPAM (everything but its bookkeeping files).
fn leases(berthd: &Berthd) -> Vec<String> {
    let dir = berthd.paths().state.join("cni-ipam").join("berth-e2e");
    entries(&dir)
        .into_iter()
        .filter(|f| !f.starts_with("last_reserved_ip") && f != "lock")
        .collect()
}

/// Asserts that nothing of the pods and containers in `ids` is left: processes, mounts,
/// namespace files, state and root directories, cgroups, veths, address leases.
fn assert_nothing_left(berthd: &Berthd, bridge: &str, ids: &HashSet<String>) -> Result<()> {
    let paths = berthd.paths();
    let shims = processes_mentioning(&paths.state.join("shims").display().to_string());
    ensure!(shims.is_empty(), "shims still run: {shims:?}");
    let holders: Vec<u32> = ids
        .iter()
        .flat_map(|id| processes_mentioning(&format!("berth-pidns\0--id\0{id}")))
        .collect();
    ensure!(holders.is_empty(), "PID holders still run: {holders:?}");
    for dir in [&paths.state, &paths.root] {
        let m: Vec<String> = mounts_under(dir)
            .into_iter()
            .filter(|m| ids.iter().any(|id| m.contains(&id[..12])))
            .collect();
        ensure!(m.is_empty(), "mounts left: {m:?}");
    }
    for sub in ["sandboxes", "containers", "shims"] {
        let left = entries(&paths.state.join(sub));
        ensure!(left.is_empty(), "{sub} left in state: {left:?}");
    }
    let cg = cgroups_named(ids);
    ensure!(cg.is_empty(), "cgroups left: {cg:?}");
    let ports = ports_of(bridge);
    ensure!(ports.is_empty(), "veths left on {bridge}: {ports:?}");
    let l = leases(berthd);
    ensure!(l.is_empty(), "address leases left: {l:?}");
    Ok(())
}

#[test]
fn twenty_pods_survive_kill_9_and_exits_during_the_outage_are_recorded() -> Result<()> {
    let (mut berthd, _registry) = start(1, BerthdOptions::default())?;
    let dir = berthd.paths().dir.clone();
    let trigger = dir.join("trigger");
    std::fs::create_dir_all(&trigger)?;

    // Even pods run until removed; odd pods exit with their own code once the test lets them,
    // which it does while berthd is down.
    let mut pods = Vec::new();
    for i in 0..20u32 {
        let name = format!("p{i}");
        let pod_cfg = pod_config(&dir, &name)?;
        let pod = runp(&berthd, &pod_cfg, None)?;
        let script = if i % 2 == 0 {
            "sleep 1000".to_string()
        } else {
            format!(
                "while [ ! -e /shared/go ]; do sleep 0.1; done; exit {}",
                100 + i
            )
        };
        let ctr_cfg = container_config(&dir, &name, &script, Some(&trigger))?;
        let ctr = berthd.run_container(&pod, &ctr_cfg, &pod_cfg)?;
        pods.push((i, pod, ctr));
    }
    // The shim of pod 0 dies during the outage; its container must not outlive it.
    let victim_shim = berthd.crictl_json(&["inspectp", &pods[0].1])?["info"]["pid"]
        .as_u64()
        .unwrap_or(0);
    let victim_ctr = berthd.crictl_json(&["inspect", &pods[0].2])?["info"]["pid"]
        .as_u64()
        .unwrap_or(0);
    ensure!(alive(victim_shim) && alive(victim_ctr));

    berthd.kill9()?;
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    std::fs::write(trigger.join("go"), b"")?;
    sigkill(victim_shim)?;
    ensure!(wait_for(Duration::from_secs(5), || !alive(victim_shim)));
    berthd.start_again()?;

    // Exits during the outage are picked up as the shims report them.
    for (i, _, ctr) in pods.iter().filter(|(i, ..)| i % 2 == 1) {
        ensure!(
            wait_for(Duration::from_secs(20), || berthd
                .crictl_json(&["inspect", ctr])
                .is_ok_and(|s| s["status"]["state"] == "CONTAINER_EXITED")),
            "pod {i}: {}",
            berthd.crictl_json(&["inspect", ctr])?
        );
        let st = &berthd.crictl_json(&["inspect", ctr])?["status"];
        ensure!(
            st["exitCode"] == 100 + i && st["reason"] == "Error",
            "pod {i}: {st}"
        );
        let finished = st["finishedAt"].as_str().and_then(rfc3339_ns).unwrap_or(0);
        ensure!(
            finished >= killed_at,
            "pod {i} finished before the crash: {st}"
        );
    }
    for (i, pod, ctr) in pods.iter().filter(|(i, ..)| i % 2 == 0 && *i != 0) {
        let st = berthd.crictl_json(&["inspect", ctr])?;
        ensure!(
            st["status"]["state"] == "CONTAINER_RUNNING",
            "pod {i}: {st}"
        );
        let out = berthd.crictl_ok(&["exec", "-s", ctr, "echo", "alive"])?;
        ensure!(out.contains("alive"), "pod {i}: {out}");
        let p = berthd.crictl_json(&["inspectp", pod])?;
        ensure!(p["status"]["state"] == "SANDBOX_READY", "pod {i}: {p}");
    }
    // The container of the dead shim is reported exited and its process is gone.
    let st = berthd.crictl_json(&["inspect", &pods[0].2])?;
    ensure!(st["status"]["state"] == "CONTAINER_EXITED", "{st}");
    ensure!(
        wait_for(Duration::from_secs(10), || !alive(victim_ctr)),
        "container {victim_ctr} of the dead shim still runs"
    );

    let mut ids = HashSet::new();
    for (_, pod, ctr) in &pods {
        berthd.crictl_ok(&["stopp", pod])?;
        berthd.crictl_ok(&["rmp", pod])?;
        ids.insert(pod.clone());
        ids.insert(ctr.clone());
    }
    ensure!(list(&berthd, "pods", "items")?.is_empty());
    ensure!(list(&berthd, "ps", "containers")?.is_empty());
    assert_nothing_left(&berthd, &network(1).0, &ids)
}

#[test]
fn fifty_pods_created_and_removed_leave_nothing_behind() -> Result<()> {
    let (berthd, _registry) = start(2, BerthdOptions::default())?;
    let dir = berthd.paths().dir.clone();
    let ids = std::sync::Mutex::new(HashSet::new());
    // Five clients at once, as a kubelet syncing several pods would.
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..5)
            .map(|w| {
                let (berthd, dir, ids) = (&berthd, &dir, &ids);
                scope.spawn(move || -> Result<()> {
                    for i in 0..10 {
                        let name = format!("w{w}p{i}");
                        let pod_cfg = pod_config(dir, &name)?;
                        let pod = runp(berthd, &pod_cfg, None)?;
                        let ctr_cfg = container_config(dir, &name, "sleep 1000", None)?;
                        let ctr = berthd.run_container(&pod, &ctr_cfg, &pod_cfg)?;
                        ids.lock().unwrap().extend([pod, ctr]);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    let pods = list(&berthd, "pods", "items")?;
    ensure!(pods.len() == 50, "{} pods", pods.len());
    let running = list(&berthd, "ps", "containers")?;
    ensure!(running.len() == 50, "{} containers", running.len());

    for pod in &pods {
        let id = pod["id"].as_str().context("pod id")?;
        berthd.crictl_ok(&["stopp", id])?;
        berthd.crictl_ok(&["rmp", id])?;
    }
    ensure!(list(&berthd, "pods", "items")?.is_empty());
    assert_nothing_left(&berthd, &network(2).0, &ids.into_inner().unwrap())
}

/// A CNI plugin that, while `<dir>/block` exists, records its pid and waits on ADD; every other
/// call succeeds with no output.
fn blocking_plugin(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin)?;
    for e in std::fs::read_dir(DEBIAN_CNI_BIN_DIR)? {
        let e = e?;
        std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()))?;
    }
    let block = dir.join("block");
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\n\
         if [ \"$CNI_COMMAND\" = ADD ] && [ -e {b} ]; then\n\
           echo $$ > {b}.pid\n  while [ -e {b} ]; do sleep 0.1; done\n\
           echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"unblocked\"}}'\n  exit 1\nfi\n",
        b = block.display()
    );
    let path = bin.join("e2e-block");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// A runtime that, while `<dir>/block` exists, records its pid and waits on `create`, then
/// fails; otherwise it is runc.
fn blocking_runtime(dir: &Path) -> Result<PathBuf> {
    let block = dir.join("block");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = create ] && [ -e {b} ]; then\n\
           echo $$ > {b}.pid\n    while [ -e {b} ]; do sleep 0.1; done\n\
           echo 'unblocked' >&2\n    exit 1\n  fi\ndone\nexec runc \"$@\"\n",
        b = block.display()
    );
    let path = dir.join("blocking-runc");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Waits for the blocked helper to record its pid, then returns it.
fn blocked_pid(dir: &Path) -> Result<u64> {
    let file = dir.join("block.pid");
    ensure!(
        wait_for(Duration::from_secs(30), || file.exists()),
        "nothing reached the block"
    );
    std::thread::sleep(Duration::from_millis(100));
    Ok(std::fs::read_to_string(&file)?.trim().parse()?)
}

#[test]
fn kill_9_in_the_middle_of_runp_and_create_is_rolled_back() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let block_dir = scratch.path();
    let bin = blocking_plugin(block_dir)?;
    let runtime = blocking_runtime(block_dir)?;
    let mut options = BerthdOptions::default().runtime("blocking", &runtime);
    options.cni_bin_dir = bin;
    let (mut berthd, _registry) = start(3, options)?;
    let dir = berthd.paths().dir.clone();
    let bridge = network(3).0;

    // The chain: bridge (veth and address), portmap, then a plugin that hangs.
    let conf = berthd.paths().cni_conf_dir.join("10-berth-e2e.conflist");
    let normal: Value = serde_json::from_slice(&std::fs::read(&conf)?)?;
    let mut hanging = normal.clone();
    hanging["plugins"]
        .as_array_mut()
        .context("plugins")?
        .push(json!({"type": "e2e-block"}));
    std::fs::write(&conf, serde_json::to_vec(&hanging)?)?;

    // kill -9 while the pod's network is half set up.
    std::fs::write(block_dir.join("block"), b"")?;
    let pod_cfg = pod_config(&dir, "half")?;
    let crictl = {
        let cfg = pod_cfg.clone();
        let config = berthd.paths().crictl_config.clone();
        let crictl = berth_e2e::tools::crictl()?;
        std::thread::spawn(move || {
            std::process::Command::new(crictl)
                .arg("--config")
                .arg(config)
                .arg("runp")
                .arg(cfg)
                .output()
        })
    };
    let plugin = blocked_pid(block_dir)?;
    ensure!(!ports_of(&bridge).is_empty(), "the veth was not made yet");
    berthd.kill9()?;
    std::fs::remove_file(block_dir.join("block"))?;
    std::fs::remove_file(block_dir.join("block.pid"))?;
    ensure!(wait_for(Duration::from_secs(5), || !alive(plugin)));
    let _ = crictl.join();
    std::fs::write(&conf, serde_json::to_vec(&normal)?)?;
    berthd.start_again()?;

    ensure!(
        list(&berthd, "pods", "items")?.is_empty(),
        "{}",
        berthd.log_tail()
    );
    ensure!(ports_of(&bridge).is_empty(), "{:?}", ports_of(&bridge));
    ensure!(leases(&berthd).is_empty(), "{:?}", leases(&berthd));
    ensure!(entries(&berthd.paths().state.join("sandboxes")).is_empty());

    // kill -9 while runc creates a container: the container is rolled back, the pod stays.
    let pod = runp(&berthd, &pod_cfg, Some("blocking"))?;
    let snapshots_before = entries(&berthd.paths().root.join("snapshots")).len();
    std::fs::write(block_dir.join("block"), b"")?;
    let ctr_cfg = container_config(&dir, "stuck", "sleep 1000", None)?;
    let crictl = {
        let (pod, ctr_cfg, pod_cfg) = (pod.clone(), ctr_cfg.clone(), pod_cfg.clone());
        let config = berthd.paths().crictl_config.clone();
        let crictl = berth_e2e::tools::crictl()?;
        std::thread::spawn(move || {
            std::process::Command::new(crictl)
                .arg("--config")
                .arg(config)
                .arg("create")
                .arg(pod)
                .arg(ctr_cfg)
                .arg(pod_cfg)
                .output()
        })
    };
    let runc = blocked_pid(block_dir)?;
    berthd.kill9()?;
    std::fs::remove_file(block_dir.join("block"))?;
    ensure!(wait_for(Duration::from_secs(5), || !alive(runc)));
    let _ = crictl.join();
    berthd.start_again()?;

    ensure!(
        list(&berthd, "ps", "containers")?.is_empty(),
        "{:?}\n{}",
        list(&berthd, "ps", "containers")?,
        berthd.log_tail()
    );
    ensure!(entries(&berthd.paths().state.join("containers")).is_empty());
    let snapshots_after = entries(&berthd.paths().root.join("snapshots")).len();
    ensure!(
        snapshots_after == snapshots_before,
        "{snapshots_before} snapshots before, {snapshots_after} after"
    );
    // The pod and its shim still work.
    let ctr = berthd.run_container(&pod, &ctr_cfg, &pod_cfg)?;
    let out = berthd.crictl_ok(&["exec", "-s", &ctr, "echo", "fine"])?;
    ensure!(out.contains("fine"), "{out}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    assert_nothing_left(&berthd, &bridge, &HashSet::from([pod, ctr]))
}
