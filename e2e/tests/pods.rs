//! Pod sandboxes through crictl against a real berthd: real namespaces, Debian's bridge +
//! host-local + portmap CNI chain on a bridge and /24 of this test run, and a real berth-shim
//! per pod. Runs as root; needs berthd and berth-shim side by side in the cargo target dir and
//! the pinned crictl.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions};
use berth_e2e::fixtures::wait_for;
use serde_json::{Value, json};

/// A bridge name and a 10.x /24 of this test run, so that runs and tests never collide.
fn network(test: u8) -> (String, String) {
    let pid = std::process::id();
    (
        format!("bp{}t{test}", pid % 100_000),
        format!("10.{}.{}.0/24", 230 + test, pid % 250),
    )
}

fn start(test: u8) -> Result<(Berthd, String)> {
    let (bridge, subnet) = network(test);
    let berthd = Berthd::start(BerthdOptions::default().bridge_network(&bridge, &subnet))?;
    Ok((berthd, subnet))
}

fn pod_config(dir: &Path, name: &str, host_network: bool) -> Result<PathBuf> {
    let mut config = json!({
        "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}"), "attempt": 1},
        "hostname": format!("{name}-host"),
        "log_directory": dir.join("logs").join(name),
        "dns_config": {
            "servers": ["10.96.0.10"],
            "searches": ["e2e.svc.cluster.local"],
            "options": ["ndots:2"],
        },
        "labels": {"app": name},
        "linux": {},
    });
    if host_network {
        config["linux"] = json!({"security_context": {"namespace_options": {"network": 2}}});
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

fn runp(berthd: &Berthd, config: &Path) -> Result<String> {
    let out = berthd.crictl_ok(&["runp", config.to_str().context("path")?])?;
    Ok(out.trim().to_string())
}

fn pods(berthd: &Berthd) -> Result<Vec<Value>> {
    let v = berthd.crictl_json(&["pods"])?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn pod_state(berthd: &Berthd, id: &str) -> Result<Option<String>> {
    Ok(pods(berthd)?
        .into_iter()
        .find(|p| p["id"] == id)
        .map(|p| p["state"].as_str().unwrap_or("").to_string()))
}

fn shim_running(pid: u64) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("berth-shim"))
        .unwrap_or(false)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let prefix = subnet.trim_end_matches("0/24");
    ip.starts_with(prefix)
}

#[test]
fn pod_lifecycle_with_network_files_and_shim() -> Result<()> {
    let (berthd, subnet) = start(1)?;
    let dir = berthd.paths().dir.clone();
    let config = pod_config(&dir, "web", false)?;

    let mut times = Vec::new();
    let started = Instant::now();
    let id = runp(&berthd, &config)?;
    times.push(started.elapsed());
    ensure!(id.len() == 64, "runp printed {id:?}");
    ensure!(
        pod_state(&berthd, &id)?.as_deref() == Some("SANDBOX_READY"),
        "{:?}",
        pods(&berthd)?
    );

    let status = berthd.crictl_json(&["inspectp", &id])?;
    let ip = status["status"]["network"]["ip"].as_str().unwrap_or("");
    ensure!(
        in_subnet(ip, &subnet),
        "ip {ip:?} not in {subnet}: {status}"
    );
    ensure!(status["status"]["metadata"]["name"] == "web", "{status}");
    let info = &status["info"];
    let netns = PathBuf::from(info["netnsPath"].as_str().unwrap_or(""));
    ensure!(
        netns.exists(),
        "netns {} missing: {status}",
        netns.display()
    );
    let pid = info["pid"].as_u64().unwrap_or(0);
    ensure!(shim_running(pid), "shim pid {pid} not running: {status}");
    // The shim lives outside berthd's cgroup, in berth's shim cgroup in every hierarchy.
    let cgroups = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup"));
    let shim_cgroups = cgroups(u32::try_from(pid)?)?;
    let berthd_cgroups = cgroups(berthd.pid())?;
    for (shim, daemon) in shim_cgroups.lines().zip(berthd_cgroups.lines()) {
        ensure!(shim.ends_with(":/berth/shims"), "shim in {shim}");
        ensure!(shim != daemon, "shim shares berthd's cgroup {daemon}");
    }
    // So does the pod's PID namespace holder (the pod shares one: no namespace options).
    let holder_file = berthd
        .paths()
        .state
        .join("shims")
        .join(&id[..32])
        .join("pid-holder");
    let holder: u32 = std::fs::read_to_string(&holder_file)?.trim().parse()?;
    for line in cgroups(holder)?.lines() {
        ensure!(line.ends_with(":/berth/shims"), "pid holder in {line}");
    }

    let sandbox = berthd.paths().state.join("sandboxes").join(&id);
    let read = |name: &str| std::fs::read_to_string(sandbox.join(name)).unwrap_or_default();
    ensure!(read("hostname") == "web-host\n", "{}", read("hostname"));
    ensure!(read("resolv.conf").contains("nameserver 10.96.0.10\n"));
    ensure!(read("resolv.conf").contains("search e2e.svc.cluster.local\n"));
    ensure!(read("resolv.conf").contains("options ndots:2\n"));
    ensure!(
        read("hosts").contains(&format!("{ip}\tweb-host")),
        "{}",
        read("hosts")
    );
    let hostname = std::process::Command::new("nsenter")
        .arg(format!("--uts={}", sandbox.join("ns/uts").display()))
        .arg("hostname")
        .output()?;
    ensure!(String::from_utf8_lossy(&hostname.stdout).trim() == "web-host");
    let addr = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-o", "-4", "addr", "show", "eth0"])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&addr.stdout).contains(ip),
        "eth0 in the pod: {}",
        String::from_utf8_lossy(&addr.stdout)
    );

    // Same metadata again: AlreadyExists naming the first pod.
    let again = berthd.crictl(&["runp", config.to_str().context("path")?])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    ensure!(!again.status.success(), "second runp succeeded");
    ensure!(
        stderr.contains("AlreadyExists") && stderr.contains(&id),
        "{stderr}"
    );

    berthd.crictl_ok(&["stopp", &id])?;
    ensure!(pod_state(&berthd, &id)?.as_deref() == Some("SANDBOX_NOTREADY"));
    ensure!(!netns.exists(), "netns still there after stopp");
    ensure!(
        wait_for(Duration::from_secs(5), || !shim_running(pid)),
        "shim {pid} still runs after stopp"
    );
    berthd.crictl_ok(&["stopp", &id])?;

    berthd.crictl_ok(&["rmp", &id])?;
    ensure!(pod_state(&berthd, &id)?.is_none(), "{:?}", pods(&berthd)?);
    ensure!(!sandbox.exists(), "{} left behind", sandbox.display());
    let err = berthd.crictl(&["inspectp", &id])?;
    ensure!(!err.status.success());

    // A few more runs for a start-time figure.
    for i in 0..4 {
        let config = pod_config(&dir, &format!("t{i}"), false)?;
        let started = Instant::now();
        let id = runp(&berthd, &config)?;
        times.push(started.elapsed());
        if i == 0 {
            let pid = berthd.crictl_json(&["inspectp", &id])?["info"]["pid"]
                .as_u64()
                .unwrap_or(0);
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
            let pss = rollup
                .lines()
                .find(|l| l.starts_with("Pss:"))
                .unwrap_or("")
                .to_string();
            eprintln!("shim {pid} {pss}");
        }
        berthd.crictl_ok(&["rmp", "-f", &id])?;
    }
    times.sort();
    eprintln!(
        "crictl runp times: {times:?}; median {:?}",
        times[times.len() / 2]
    );
    ensure!(pods(&berthd)?.is_empty());
    Ok(())
}

#[test]
fn host_network_pod_runs_without_a_network_namespace() -> Result<()> {
    let (berthd, _subnet) = start(2)?;
    let dir = berthd.paths().dir.clone();
    let id = runp(&berthd, &pod_config(&dir, "hostnet", true)?)?;
    let status = berthd.crictl_json(&["inspectp", &id])?;
    ensure!(status["status"]["state"] == "SANDBOX_READY", "{status}");
    ensure!(status["status"]["network"]["ip"] == "", "{status}");
    ensure!(status["info"]["netnsPath"] == "", "{status}");
    let sandbox = berthd.paths().state.join("sandboxes").join(&id);
    ensure!(!sandbox.join("ns/net").exists() && sandbox.join("ns/ipc").exists());
    berthd.crictl_ok(&["rmp", "-f", &id])?;
    ensure!(pods(&berthd)?.is_empty());
    Ok(())
}

#[test]
fn pod_survives_kill_9_of_berthd_and_can_be_stopped_and_removed() -> Result<()> {
    let (mut berthd, _subnet) = start(3)?;
    let dir = berthd.paths().dir.clone();
    let id = runp(&berthd, &pod_config(&dir, "survivor", false)?)?;
    let pid = berthd.crictl_json(&["inspectp", &id])?["info"]["pid"]
        .as_u64()
        .unwrap_or(0);
    ensure!(shim_running(pid));
    // A second pod whose shim dies while berthd is down.
    let orphan = runp(&berthd, &pod_config(&dir, "orphan", false)?)?;
    let orphan_pid = berthd.crictl_json(&["inspectp", &orphan])?["info"]["pid"]
        .as_u64()
        .unwrap_or(0);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(berthd.pid())?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    ensure!(
        wait_for(Duration::from_secs(5), || berthd.exited().is_some()),
        "berthd survived SIGKILL"
    );
    ensure!(shim_running(pid), "the shim died with berthd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(orphan_pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    ensure!(wait_for(Duration::from_secs(5), || !shim_running(
        orphan_pid
    )));
    berthd.restart()?;

    ensure!(
        pod_state(&berthd, &id)?.as_deref() == Some("SANDBOX_READY"),
        "{:?}\n{}",
        pods(&berthd)?,
        berthd.log_tail()
    );
    ensure!(shim_running(pid));
    berthd.crictl_ok(&["stopp", &id])?;
    ensure!(
        wait_for(Duration::from_secs(5), || !shim_running(pid)),
        "shim {pid} still runs after stopp"
    );
    berthd.crictl_ok(&["rmp", &id])?;

    // The pod whose shim died stays listed and can still be stopped and removed.
    ensure!(
        pod_state(&berthd, &orphan)?.is_some(),
        "{:?}",
        pods(&berthd)?
    );
    berthd.crictl_ok(&["stopp", &orphan])?;
    berthd.crictl_ok(&["rmp", &orphan])?;
    ensure!(pods(&berthd)?.is_empty());
    let left = std::fs::read_dir(berthd.paths().state.join("sandboxes"))?.count();
    ensure!(left == 0, "{left} sandbox dirs left");
    Ok(())
}

#[test]
fn runp_fails_cleanly_without_a_network_and_when_the_plugin_fails() -> Result<()> {
    let (bridge, subnet) = network(4);
    let options = BerthdOptions {
        // No conflist yet; the bridge the one written below creates is deleted at teardown.
        bridge: Some(bridge.clone()),
        ..BerthdOptions::default()
    };
    let berthd = Berthd::start(options)?;
    let dir = berthd.paths().dir.clone();

    let out = berthd.crictl(&[
        "runp",
        pod_config(&dir, "a", false)?.to_str().context("path")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "runp without a network succeeded");
    ensure!(
        stderr.contains("FailedPrecondition") && stderr.contains("network is not ready"),
        "{stderr}"
    );

    // A range of one address: the second pod's ADD fails in host-local.
    let base = subnet.trim_end_matches("0/24");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "berth-e2e-one",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "rangeStart": format!("{base}10"), "rangeEnd": format!("{base}10")}]],
                "dataDir": berthd.paths().state.join("cni-ipam"),
            },
        }],
    });
    std::fs::write(
        berthd.paths().cni_conf_dir.join("10-one.conflist"),
        serde_json::to_vec(&conflist)?,
    )?;
    let first = runp(&berthd, &pod_config(&dir, "a", false)?)?;
    let out = berthd.crictl(&[
        "runp",
        pod_config(&dir, "b", false)?.to_str().context("path")?,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "runp with no address left succeeded");
    ensure!(stderr.contains("no IP addresses available"), "{stderr}");
    let listed = pods(&berthd)?;
    ensure!(listed.len() == 1 && listed[0]["id"] == first, "{listed:?}");
    let sandboxes: Vec<_> = std::fs::read_dir(berthd.paths().state.join("sandboxes"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(sandboxes.len() == 1, "left behind: {sandboxes:?}");
    let shims = std::fs::read_dir(berthd.paths().state.join("shims"))?.count();
    ensure!(shims == 1, "{shims} shim dirs");

    // The address is free again once the first pod is gone.
    berthd.crictl_ok(&["rmp", "-f", &first])?;
    let second = runp(&berthd, &pod_config(&dir, "b", false)?)?;
    berthd.crictl_ok(&["rmp", "-f", &second])?;
    Ok(())
}

#[test]
fn ten_pods_in_parallel_get_distinct_addresses_and_leave_nothing_behind() -> Result<()> {
    let (berthd, subnet) = start(5)?;
    let dir = berthd.paths().dir.clone();
    let configs = (0..10)
        .map(|i| pod_config(&dir, &format!("par{i}"), false))
        .collect::<Result<Vec<_>>>()?;
    let ids = std::thread::scope(|s| {
        let handles: Vec<_> = configs
            .iter()
            .map(|c| s.spawn(|| runp(&berthd, c)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("runp thread panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut ips = std::collections::BTreeSet::new();
    let mut shims = Vec::new();
    for id in &ids {
        let status = berthd.crictl_json(&["inspectp", id])?;
        let ip = status["status"]["network"]["ip"]
            .as_str()
            .unwrap_or("")
            .to_string();
        ensure!(in_subnet(&ip, &subnet), "{ip} not in {subnet}");
        ips.insert(ip);
        shims.push(status["info"]["pid"].as_u64().unwrap_or(0));
    }
    ensure!(ips.len() == 10, "addresses not distinct: {ips:?}");
    ensure!(shims.iter().all(|p| shim_running(*p)));

    std::thread::scope(|s| {
        for id in &ids {
            let berthd = &berthd;
            s.spawn(move || berthd.crictl_ok(&["rmp", "-f", id]));
        }
    });
    ensure!(pods(&berthd)?.is_empty(), "{:?}", pods(&berthd)?);
    ensure!(
        wait_for(Duration::from_secs(5), || shims
            .iter()
            .all(|p| !shim_running(*p))),
        "shims left running"
    );
    let state = &berthd.paths().state;
    for sub in ["sandboxes", "shims", "cni/results"] {
        let left = std::fs::read_dir(state.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        ensure!(left == 0, "{left} entries left in {sub}");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let ns_mounts = mountinfo
        .lines()
        .filter(|l| l.contains(&*state.join("sandboxes").to_string_lossy()))
        .count();
    ensure!(ns_mounts == 0, "{ns_mounts} namespace mounts left");
    let (bridge, _) = network(5);
    let veths = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| d.count())
        .unwrap_or(0);
    ensure!(veths == 0, "{veths} veths left on {bridge}");
    Ok(())
}

#[test]
fn pod_resources_and_overhead_limit_the_pods_cgroup() -> Result<()> {
    let (berthd, _subnet) = start(6)?;
    let dir = berthd.paths().dir.clone();
    let path = dir.join("limited.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({
            "metadata": {"name": "limited", "namespace": "e2e", "uid": "uid-limited", "attempt": 1},
            "linux": {
                "resources": {"memory_limit_in_bytes": 256 << 20, "cpu_shares": 512},
                "overhead": {"memory_limit_in_bytes": 32 << 20},
            },
        }))?,
    )?;
    let id = runp(&berthd, &path)?;
    let cgroup = Path::new("/sys/fs/cgroup/memory/berth").join(&id);
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        let limit = std::fs::read_to_string(cgroup.join("memory.limit_in_bytes"))?;
        ensure!(limit.trim() == (288u64 << 20).to_string(), "limit {limit}");
        let shares = std::fs::read_to_string(
            Path::new("/sys/fs/cgroup/cpu/berth")
                .join(&id)
                .join("cpu.shares"),
        )?;
        ensure!(shares.trim() == "512", "shares {shares}");
    } else {
        let max = std::fs::read_to_string(
            Path::new("/sys/fs/cgroup/berth")
                .join(&id)
                .join("memory.max"),
        )?;
        ensure!(max.trim() == (288u64 << 20).to_string(), "memory.max {max}");
    }
    berthd.crictl_ok(&["rmp", "-f", &id])?;
    ensure!(!cgroup.exists(), "the pod's cgroup outlived it");
    Ok(())
}

#[test]
fn bandwidth_annotations_shape_the_pods_traffic_through_the_bandwidth_plugin() -> Result<()> {
    let (berthd, _subnet) = start(7)?;
    let dir = berthd.paths().dir.clone();
    // Debian's bandwidth plugin at the end of the chain, as kubelet users configure it.
    let conf = berthd.paths().cni_conf_dir.join("10-berth-e2e.conflist");
    let mut conflist: Value = serde_json::from_slice(&std::fs::read(&conf)?)?;
    conflist["plugins"]
        .as_array_mut()
        .context("plugins")?
        .push(json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    std::fs::write(&conf, serde_json::to_vec(&conflist)?)?;

    let path = dir.join("shaped.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({
            "metadata": {"name": "shaped", "namespace": "e2e", "uid": "uid-shaped", "attempt": 1},
            "annotations": {"kubernetes.io/ingress-bandwidth": "10M"},
            "linux": {},
        }))?,
    )?;
    let id = runp(&berthd, &path)?;
    let tbf = || -> Result<bool> {
        let out = std::process::Command::new("tc")
            .args(["qdisc", "show"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("tbf") && l.contains("rate 10Mbit")))
    };
    ensure!(tbf()?, "no 10 Mbit/s token bucket on the pod's veth");
    berthd.crictl_ok(&["rmp", "-f", &id])?;
    ensure!(!tbf()?, "the shaping outlived the pod");

    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        serde_json::to_vec(&json!({
            "metadata": {"name": "bad", "namespace": "e2e", "uid": "uid-bad", "attempt": 1},
            "annotations": {"kubernetes.io/ingress-bandwidth": "fast"},
            "linux": {},
        }))?,
    )?;
    let out = berthd.crictl(&["runp", bad.to_str().context("path")?])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("InvalidArgument") && stderr.contains("fast"),
        "{stderr}"
    );
    Ok(())
}
