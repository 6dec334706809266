//! `net`: pod network setup and teardown time, berth-bridge against Debian's reference chain
//! (bridge + host-local + portmap), both driven by berth's CNI runner on network namespaces
//! the benchmark creates, so the plugins are the only difference.
//!
//! Per run and per chain: a fresh namespace (untimed), then CNI ADD (timed), then CNI DEL
//! (timed), each pod with one host port on 127.0.0.1, as kubelet would ask. The chains take
//! turns going first. Each chain has its own bridge and /24 and a forward guard; nothing is
//! sent anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::daemon::{DEBIAN_CNI_BIN_DIR, ForwardGuard, bridge_conflist};
use berth_netplugin::cni::{CniRunner, RuntimeConf, result_ips};
use berth_netplugin::conf::{NetworkConfigList, load_file};
use serde_json::{Value, json};

use crate::median;

/// A network namespace pinned at a file by util-linux `unshare`, removed on drop.
struct Netns(PathBuf);

impl Netns {
    fn new(path: PathBuf) -> Result<Netns> {
        std::fs::write(&path, "")?;
        let ns = Netns(path);
        let out = Command::new("unshare")
            .arg(format!("--net={}", ns.0.display()))
            .arg("true")
            .output()
            .context("run unshare")?;
        ensure!(
            out.status.success(),
            "unshare --net={}: {}",
            ns.0.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Chain {
    label: &'static str,
    list: NetworkConfigList,
    // Dropped after the runs: the guard, the bridge and berth-bridge's NAT table go.
    _guard: ForwardGuard,
}

fn write_list(dir: &Path, name: &str, conflist: &Value) -> Result<NetworkConfigList> {
    let path = dir.join(format!("{name}.conflist"));
    std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)?;
    Ok(load_file(&path)?)
}

/// berth-bridge beside this executable (both are built into the same profile dir).
fn berth_bridge_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable dir")?.to_path_buf();
    if !dir.join("berth-bridge").is_file() {
        bail!(
            "berth-bridge not found in {} (cargo build --release -p berth-netplugin)",
            dir.display()
        );
    }
    Ok(dir)
}

fn runtime_conf(id: &str, netns: &Path, host_port: u16) -> RuntimeConf {
    let mut capability_args = BTreeMap::new();
    capability_args.insert(
        "portMappings".to_string(),
        json!([{"hostPort": host_port, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}]),
    );
    RuntimeConf {
        container_id: id.to_string(),
        netns: netns.to_path_buf(),
        if_name: "eth0".to_string(),
        args: vec![("K8S_POD_NAME".to_string(), id.to_string())],
        capability_args,
    }
}

/// One pod: ADD then DEL on a fresh namespace; returns the two times.
fn one_pod(
    runner: &CniRunner,
    chain: &Chain,
    dir: &Path,
    id: &str,
    port: u16,
) -> Result<(Duration, Duration)> {
    let netns = Netns::new(dir.join(format!("ns-{id}")))?;
    let rt = runtime_conf(id, &netns.0, port);
    let start = Instant::now();
    let result = runner
        .add(&chain.list, &rt)
        .with_context(|| format!("{} ADD", chain.label))?;
    let add = start.elapsed();
    ensure!(
        !result_ips(&result).is_empty(),
        "{} ADD gave no address: {result}",
        chain.label
    );
    let start = Instant::now();
    runner
        .del(&chain.list, &rt)
        .with_context(|| format!("{} DEL", chain.label))?;
    Ok((add, start.elapsed()))
}

pub fn bench_net(runs: usize) -> Result<()> {
    let pid = std::process::id();
    let work = tempfile::Builder::new()
        .prefix("berth-bench-net-")
        .tempdir()?;
    let dir = work.path();
    let runner = CniRunner::new(
        vec![berth_bridge_dir()?, PathBuf::from(DEBIAN_CNI_BIN_DIR)],
        dir.join("cache"),
    );

    let (berth_bridge, berth_subnet) = (
        format!("bnb{}", pid % 100_000),
        format!("10.220.{}.0/24", pid % 250),
    );
    let berth = Chain {
        label: "berth-bridge",
        list: write_list(
            dir,
            "berth",
            &json!({
                "cniVersion": "1.1.0",
                // berth-bridge's NAT table is named after the network: the bridge's name lets
                // the guard remove it.
                "name": berth_bridge,
                "plugins": [{
                    "type": "berth-bridge",
                    "bridge": berth_bridge,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "subnet": berth_subnet,
                    "dataDir": dir.join("berth-leases"),
                    "capabilities": {"portMappings": true},
                }],
            }),
        )?,
        _guard: ForwardGuard::install(&berth_bridge, &berth_subnet)?,
    };
    let (deb_bridge, deb_subnet) = (
        format!("bnd{}", pid % 100_000),
        format!("10.221.{}.0/24", pid % 250),
    );
    let mut debian_conf = bridge_conflist(&deb_bridge, &deb_subnet, &dir.join("deb-leases"));
    // The same masquerade and hairpin work as berth-bridge does.
    debian_conf["plugins"][0]["ipMasq"] = json!(true);
    debian_conf["plugins"][0]["hairpinMode"] = json!(true);
    let debian = Chain {
        label: "bridge+host-local+portmap",
        list: write_list(dir, "debian", &debian_conf)?,
        _guard: ForwardGuard::install(&deb_bridge, &deb_subnet)?,
    };
    let chains = [&berth, &debian];

    // Warm-up, untimed: creates the bridges, NAT tables and lease dirs.
    for (i, chain) in chains.iter().enumerate() {
        one_pod(&runner, chain, dir, &format!("warm{i}"), 20_000 + i as u16)?;
    }
    let mut add: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut del: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let port = 20_100 + (run * 2 + i) as u16 % 10_000;
            let (a, d) = one_pod(&runner, chains[i], dir, &format!("r{run}c{i}"), port)?;
            println!(
                "run {run:2}: {:<26} ADD {:6.1} ms  DEL {:6.1} ms",
                chains[i].label,
                a.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e3
            );
            add[i].push(a);
            del[i].push(d);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (add_b, add_d) = (median(add[0].clone()), median(add[1].clone()));
    let (del_b, del_d) = (median(del[0].clone()), median(del[1].clone()));
    println!("medians of {runs} pods, one host port each:");
    println!(
        "setup (ADD)     berth-bridge {:6.1} ms   bridge+host-local+portmap {:6.1} ms   ratio {:.2}",
        ms(add_b),
        ms(add_d),
        ms(add_b) / ms(add_d)
    );
    println!(
        "teardown (DEL)  berth-bridge {:6.1} ms   bridge+host-local+portmap {:6.1} ms   ratio {:.2}",
        ms(del_b),
        ms(del_d),
        ms(del_b) / ms(del_d)
    );
    Ok(())
}
