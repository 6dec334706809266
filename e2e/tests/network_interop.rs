//! Pod networking across runtimes and plugins, as root, with real parts only:
//!
//! - berthd with Debian's containernetworking-plugins (bridge + host-local + portmap): two pods
//!   talk TCP, a host port on 127.0.0.1 reaches a pod, the DNS config lands in resolv.conf and
//!   the pod's loopback is up;
//! - berth-bridge under Debian's containerd 1.6 and its CRI plugin: a pod gets an address on the
//!   test's subnet, a listener in it answers the host, and nothing is left after stopp/rmp;
//! - berthd's default network (berth-bridge, installed into an empty conf dir): many pods come
//!   and go and leave no veth, lease, NAT rule or namespace file; an attachment berthd does not
//!   know is garbage-collected at its next start.
//!
//! Each test has its own bridge, subnet, dirs and daemon; traffic goes only to 127.0.0.1 and to
//! the test's pods, and a forward guard drops anything a pod sends past the node.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::containerd::Containerd;
use berth_e2e::daemon::{Berthd, BerthdOptions, ForwardGuard, berthd_binary};
use berth_e2e::fixtures::{path_str as s, write_json};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::push_critest_images;
use berth_e2e::tools;
use serde_json::{Value, json};

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// How many pods the leak test creates and removes (the issue's number).
const LEAK_PODS: usize = 100;

/// A bridge name and a 10.x /24 of this test run, so that runs and tests never collide.
fn network(test: u8) -> (String, String) {
    let pid = std::process::id();
    (
        format!("bn{}t{test}", pid % 100_000),
        format!("10.{}.{}.0/24", 210 + test, pid % 250),
    )
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    ip.starts_with(subnet.trim_end_matches("0/24"))
}

fn pod_config(dir: &Path, name: &str, ports: Value) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "e2e-net", "uid": format!("uid-{name}"), "attempt": 1},
            "hostname": name,
            "log_directory": dir.join("logs").join(name),
            "port_mappings": ports,
            "dns_config": {
                "servers": ["10.96.0.10"],
                "searches": ["e2e-net.svc.cluster.local"],
                "options": ["ndots:3"],
            },
            "linux": {},
        }),
    )
}

/// busybox httpd on `port` serving one page that says `body`.
fn web_container(dir: &Path, name: &str, port: u16, body: &str) -> Result<PathBuf> {
    let script = format!(
        "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"
    );
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c", script],
            "log_path": format!("{name}.log"),
            "linux": {},
        }),
    )
}

fn sleeper_container(dir: &Path, name: &str) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "3600"],
            "log_path": format!("{name}.log"),
            "linux": {},
        }),
    )
}

/// A port nobody listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// GET / over plain TCP, retried until `timeout` (the server may still be starting).
fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = || -> std::io::Result<String> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            conn.read_to_string(&mut out)?;
            Ok(out)
        };
        match attempt() {
            Ok(out) if !out.is_empty() => return Ok(out),
            Ok(_) if Instant::now() < deadline => {}
            Err(_) if Instant::now() < deadline => {}
            Ok(_) => bail!("GET {addr}: empty answer"),
            Err(e) => bail!("GET {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A shell command that GETs / from `ip`:8080 with busybox nc.
fn get_cmd(ip: &str) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080")
}

fn pod_ip(status: &Value) -> String {
    status["status"]["network"]["ip"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn veths_on(bridge: &str) -> usize {
    std::fs::read_dir(format!("/sys/class/net/{bridge}/brif"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Lease files (named by address) in a host-local style lease dir.
fn leases(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Rules in berth-bridge's NAT table of network `name` (0 when the table is gone): `inet` (both
/// families), plus any left in the IPv4-only `ip` table older berth-bridge versions used.
fn nat_rules(name: &str) -> usize {
    ["inet", "ip"]
        .iter()
        .map(|family| {
            let out = Command::new("nft")
                .args(["-j", "list", "table", family, &format!("berth-{name}")])
                .output();
            let Ok(out) = out else { return 0 };
            serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v["nftables"].as_array().cloned())
                .map(|items| items.iter().filter(|i| i.get("rule").is_some()).count())
                .unwrap_or(0)
        })
        .sum()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Registry with critest's images and a berthd that mirrors them, busybox pulled.
fn berthd_with_images(options: BerthdOptions) -> Result<(Berthd, Registry)> {
    berthd_binary()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let berthd = Berthd::start(options.mirror_critest_registries(&registry))?;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    Ok((berthd, registry))
}

fn run_in_pod(berthd: &Berthd, pod_cfg: &Path, ctr_cfg: &Path) -> Result<(String, String)> {
    let pod = berthd.crictl_ok(&["runp", s(pod_cfg)?])?.trim().to_string();
    let ctr = berthd
        .crictl_ok(&["create", &pod, s(ctr_cfg)?, s(pod_cfg)?])?
        .trim()
        .to_string();
    berthd.crictl_ok(&["start", &ctr])?;
    Ok((pod, ctr))
}

#[test]
fn debian_chain_pods_talk_tcp_host_port_on_loopback_and_dns() -> Result<()> {
    let (bridge, subnet) = network(1);
    let (berthd, _registry) =
        berthd_with_images(BerthdOptions::default().bridge_network(&bridge, &subnet))?;
    let dir = berthd.paths().dir.clone();
    let host_port = free_port()?;

    let pod_a = pod_config(
        &dir,
        "server",
        json!([{"protocol": 0, "container_port": 8080, "host_port": host_port, "host_ip": "127.0.0.1"}]),
    )?;
    let (a, web) = run_in_pod(&berthd, &pod_a, &web_container(&dir, "web", 8080, "pod-a")?)?;
    let pod_b = pod_config(&dir, "client", json!([]))?;
    let (b, client) = run_in_pod(&berthd, &pod_b, &sleeper_container(&dir, "client")?)?;

    let ip_a = pod_ip(&berthd.crictl_json(&["inspectp", &a])?);
    let ip_b = pod_ip(&berthd.crictl_json(&["inspectp", &b])?);
    ensure!(
        in_subnet(&ip_a, &subnet) && in_subnet(&ip_b, &subnet) && ip_a != ip_b,
        "pod ips {ip_a:?} {ip_b:?} not distinct in {subnet}"
    );

    // Pod to pod over the bridge (retried: httpd may still be starting).
    // busybox nc, not wget: the static busybox's wget crashes here (exit 139).
    let url = format!("{ip_a}:8080");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = berthd.crictl(&["exec", "-s", &client, "sh", "-c", &get_cmd(&ip_a)])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.contains("pod-a") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "pod b cannot reach {url}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The host port on 127.0.0.1 (portmap's DNAT from loopback).
    let page = http_get(
        SocketAddr::from(([127, 0, 0, 1], host_port)),
        Duration::from_secs(20),
    )?;
    ensure!(
        page.contains("pod-a"),
        "127.0.0.1:{host_port} answered {page:?}"
    );

    // The pod's DNS config in the container's resolv.conf.
    let resolv = berthd.crictl_ok(&["exec", "-s", &web, "cat", "/etc/resolv.conf"])?;
    for line in [
        "nameserver 10.96.0.10",
        "search e2e-net.svc.cluster.local",
        "options ndots:3",
    ] {
        ensure!(
            resolv.contains(line),
            "{line:?} not in resolv.conf:\n{resolv}"
        );
    }

    // Loopback is up although the chain has no loopback plugin (IFF_UP is bit 0).
    let flags = berthd.crictl_ok(&["exec", "-s", &web, "cat", "/sys/class/net/lo/flags"])?;
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)?;
    ensure!(flags & 1 == 1, "lo is down in the pod (flags {flags:#x})");
    let lo = berthd.crictl(&["exec", "-s", &web, "sh", "-c", &get_cmd("127.0.0.1")])?;
    ensure!(
        String::from_utf8_lossy(&lo.stdout).contains("pod-a"),
        "the pod cannot reach itself on 127.0.0.1: {lo:?}"
    );

    for pod in [&a, &b] {
        berthd.crictl_ok(&["stopp", pod])?;
        berthd.crictl_ok(&["rmp", pod])?;
    }
    ensure!(veths_on(&bridge) == 0, "veths left on {bridge}");
    ensure!(
        leases(&berthd.paths().state.join("cni-ipam/berth-e2e")).is_empty(),
        "host-local leases left"
    );
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()?;
    let nat = String::from_utf8_lossy(&nat.stdout);
    let prefix = subnet.trim_end_matches("0/24");
    let left: Vec<&str> = nat.lines().filter(|l| l.contains(prefix)).collect();
    ensure!(left.is_empty(), "portmap/masquerade rules left: {left:#?}");
    Ok(())
}

/// A berth-bridge conflist for containerd (CNI 1.0.0: containerd 1.6's libcni knows no 1.1).
fn berth_bridge_conflist(name: &str, bridge: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "berth-bridge",
            "bridge": bridge,
            "ipMasq": true,
            "hairpinMode": true,
            "subnet": subnet,
            "dataDir": data_dir,
            "capabilities": {"portMappings": true},
        }],
    })
}

/// berth-bridge in the cargo profile dir next to berthd.
fn berth_bridge_binary() -> Result<PathBuf> {
    let berthd = berthd_binary()?;
    let path = berthd.with_file_name("berth-bridge");
    ensure!(
        path.is_file(),
        "{} not found (cargo build -p berth-netplugin --bins)",
        path.display()
    );
    Ok(path)
}

#[test]
fn berth_bridge_under_containerd_gives_a_reachable_pod_and_leaves_nothing() -> Result<()> {
    let (bridge, subnet) = network(2);
    let plugin = berth_bridge_binary()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let work = tempfile::Builder::new()
        .prefix("berth-e2e-ctrd-")
        .tempdir()?;
    let data_dir = work.path().join("leases");
    // Declared before containerd, so dropped after it: bridge, NAT table and guard go last.
    let _guard = ForwardGuard::install(&bridge, &subnet)?;
    let conflist = berth_bridge_conflist(&bridge, &bridge, &subnet, &data_dir);
    let crictl = tools::crictl()?;
    let containerd = Containerd::start_with_plugins(
        &registry.host(),
        &crictl,
        Some(&conflist),
        std::slice::from_ref(&plugin),
    )?;
    let ok = |args: &[&str]| -> Result<String> {
        let out = containerd.crictl(args)?;
        ensure!(
            out.status.success(),
            "crictl {} failed: {}\ncontainerd log:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            containerd.log_tail()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ok(&["pull", BUSYBOX])?;

    let dir = work.path();
    let pod_cfg = pod_config(dir, "ctrd", json!([]))?;
    let pod = ok(&["runp", s(&pod_cfg)?])?;
    let status: Value = serde_json::from_str(&ok(&["inspectp", "-o", "json", &pod])?)?;
    let ip = pod_ip(&status);
    ensure!(
        in_subnet(&ip, &subnet),
        "pod ip {ip:?} not in {subnet}: {status}"
    );
    ensure!(veths_on(&bridge) == 1, "one veth on {bridge}");
    ensure!(leases(&data_dir.join(&bridge)).len() == 1, "one lease");
    ensure!(nat_rules(&bridge) >= 1, "a masquerade rule for the pod");

    let ctr_cfg = web_container(dir, "web", 8080, "via-berth-bridge")?;
    let ctr = ok(&["create", &pod, s(&ctr_cfg)?, s(&pod_cfg)?])?;
    ok(&["start", &ctr])?;
    let page = http_get(SocketAddr::new(ip.parse()?, 8080), Duration::from_secs(20))?;
    ensure!(page.contains("via-berth-bridge"), "pod answered {page:?}");

    ok(&["stopp", &pod])?;
    ok(&["rmp", &pod])?;
    ensure!(veths_on(&bridge) == 0, "veth left on {bridge}");
    let left = leases(&data_dir.join(&bridge));
    ensure!(left.is_empty(), "leases left: {left:?}");
    ensure!(nat_rules(&bridge) == 0, "NAT rules left in berth-{bridge}");
    Ok(())
}

/// A network namespace pinned at `path` by util-linux `unshare`, removed on drop.
struct PinnedNetns(PathBuf);

impl PinnedNetns {
    fn new(path: PathBuf) -> Result<PinnedNetns> {
        std::fs::write(&path, "")?;
        let out = Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true")
            .output()?;
        ensure!(
            out.status.success(),
            "unshare: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PinnedNetns(path))
    }
}

impl Drop for PinnedNetns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs berth-bridge ADD by hand for an attachment no runtime knows.
fn ghost_add(plugin: &Path, conflist: &Value, netns: &Path) -> Result<Value> {
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ghost")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().context("plugin dir")?)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ghost ADD: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn default_network_pods_come_and_go_without_leftovers_and_gc_removes_unknown_ones() -> Result<()> {
    let (bridge, subnet) = network(3);
    let plugin = berth_bridge_binary()?;
    let mut berthd = Berthd::start(BerthdOptions::default().default_network(&bridge, &subnet))?;
    let paths = berthd.paths().clone();

    // The default network: installed into the empty conf dir, ready, on berth-bridge.
    let conflist_path = paths.cni_conf_dir.join("99-berth.conflist");
    let conflist: Value = serde_json::from_slice(
        &std::fs::read(&conflist_path).with_context(|| format!("{}", conflist_path.display()))?,
    )?;
    ensure!(
        conflist["plugins"][0]["type"] == "berth-bridge",
        "{conflist}"
    );
    ensure!(
        conflist["plugins"][0]["bridge"] == bridge.as_str(),
        "{conflist}"
    );
    let info = berthd.crictl_json(&["info"])?;
    let ready = info["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "NetworkReady" && c["status"] == true);
    ensure!(ready, "NetworkReady not true: {info}");

    let dir = paths.dir.clone();
    let lease_dir = paths.root.join("cni").join(&bridge);
    let mut created = 0;
    while created < LEAK_PODS {
        let batch: Vec<usize> = (created..(created + 10).min(LEAK_PODS)).collect();
        let ids = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|i| {
                    let (berthd, dir) = (&berthd, &dir);
                    scope.spawn(move || -> Result<String> {
                        let cfg = pod_config(dir, &format!("p{i}"), json!([]))?;
                        Ok(berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("runp thread panicked")))
                .collect::<Result<Vec<_>>>()
        })?;
        ensure!(veths_on(&bridge) == ids.len(), "one veth per pod");
        ensure!(leases(&lease_dir).len() == ids.len(), "one lease per pod");
        std::thread::scope(|scope| {
            for id in &ids {
                let berthd = &berthd;
                scope.spawn(move || berthd.crictl_ok(&["rmp", "-f", id]));
            }
        });
        created += batch.len();
    }
    ensure!(
        berthd.crictl_json(&["pods"])?["items"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "pods left"
    );
    ensure!(veths_on(&bridge) == 0, "veths left on {bridge}");
    let left = leases(&lease_dir);
    ensure!(left.is_empty(), "leases left: {left:?}");
    ensure!(nat_rules(&bridge) == 0, "NAT rules left in berth-{bridge}");
    for sub in ["sandboxes", "cni/results"] {
        let n = entries(&paths.state.join(sub));
        ensure!(
            n == 0,
            "{n} entries left in {sub} (netns files, cached results)"
        );
    }

    // An attachment berthd never made: GC at the next start removes it.
    let netns = PinnedNetns::new(dir.join("ghost-netns"))?;
    let result = ghost_add(&plugin, &conflist, &netns.0)?;
    ensure!(
        veths_on(&bridge) == 1 && leases(&lease_dir).len() == 1,
        "{result}"
    );
    let kept_cfg = pod_config(&dir, "kept", json!([]))?;
    let kept = berthd
        .crictl_ok(&["runp", s(&kept_cfg)?])?
        .trim()
        .to_string();
    berthd.restart()?;
    ensure!(
        veths_on(&bridge) == 1,
        "the unknown attachment's veth survived GC (or the known pod's went)"
    );
    ensure!(leases(&lease_dir).len() == 1, "{:?}", leases(&lease_dir));
    let status = berthd.crictl_json(&["inspectp", &kept])?;
    ensure!(
        leases(&lease_dir).contains(&pod_ip(&status)),
        "the known pod keeps its lease: {:?}",
        leases(&lease_dir)
    );
    berthd.crictl_ok(&["rmp", "-f", &kept])?;
    ensure!(veths_on(&bridge) == 0 && leases(&lease_dir).is_empty());
    Ok(())
}

fn network_condition(berthd: &Berthd) -> Result<Value> {
    let info = berthd.crictl_json(&["info"])?;
    info["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "NetworkReady")
        .cloned()
        .with_context(|| format!("no NetworkReady in {info}"))
}

#[test]
fn network_ready_follows_the_conf_dir_and_plugin_status_without_a_restart() -> Result<()> {
    let (bridge, subnet) = network(4);
    let berthd = Berthd::start(BerthdOptions {
        // No conflist from the harness; a bridge of this name is deleted at teardown.
        bridge: Some(bridge.clone()),
        ..BerthdOptions::default()
    })?;
    let dir = berthd.paths().dir.clone();
    let file = berthd.paths().cni_conf_dir.join("10-net.conflist");
    let runp_error = || -> Result<String> {
        let cfg = pod_config(&dir, "p", json!([]))?;
        let out = berthd.crictl(&["runp", s(&cfg)?])?;
        ensure!(
            !out.status.success(),
            "runp succeeded on a network that is not ready"
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // Invalid JSON: not ready, naming the file; runp refused with the same reason.
    std::fs::write(&file, "{ not json")?;
    let cond = network_condition(&berthd)?;
    let message = cond["message"].as_str().unwrap_or("");
    ensure!(
        cond["status"] == false && message.contains("10-net.conflist"),
        "{cond}"
    );
    let err = runp_error()?;
    ensure!(
        err.contains("FailedPrecondition") && err.contains("10-net.conflist"),
        "{err}"
    );

    // A CNI 1.1 berth-bridge network whose STATUS fails: its lease dir cannot be made.
    let blocker = dir.join("not-a-dir");
    std::fs::write(&blocker, "")?;
    let conflist = |data_dir: &Path| {
        json!({
            "cniVersion": "1.1.0",
            "name": bridge,
            "plugins": [{"type": "berth-bridge", "bridge": bridge, "subnet": subnet, "dataDir": data_dir}],
        })
    };
    std::fs::write(&file, serde_json::to_vec(&conflist(&blocker))?)?;
    let cond = network_condition(&berthd)?;
    let message = cond["message"].as_str().unwrap_or("");
    ensure!(
        cond["status"] == false && message.contains("STATUS") && message.contains("not-a-dir"),
        "{cond}"
    );
    let err = runp_error()?;
    ensure!(
        err.contains("FailedPrecondition") && err.contains("STATUS"),
        "{err}"
    );

    // Fixed in place: ready at once, and a pod runs.
    std::fs::write(&file, serde_json::to_vec(&conflist(&dir.join("leases")))?)?;
    let cond = network_condition(&berthd)?;
    ensure!(cond["status"] == true, "{cond}");
    let cfg = pod_config(&dir, "p", json!([]))?;
    let pod = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    let ip = pod_ip(&berthd.crictl_json(&["inspectp", &pod])?);
    ensure!(in_subnet(&ip, &subnet), "{ip:?} not in {subnet}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    ensure!(nat_rules(&bridge) == 0 && veths_on(&bridge) == 0);
    Ok(())
}

/// Drops forwarded IPv6 from the test's pods to anything outside their subnet (the harness's
/// guard is IPv4 only); removed on drop.
struct Ip6Guard(String);

impl Ip6Guard {
    fn install(bridge: &str, subnet: &str) -> Result<Ip6Guard> {
        let table = format!("berth-e2e-guard6-{bridge}");
        let rules = format!(
            "table ip6 {table} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    ip6 saddr {subnet} ip6 daddr != {{ {subnet}, fe80::/10, ff00::/8 }} drop\n  }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        ensure!(child.wait()?.success(), "installing {table}");
        Ok(Ip6Guard(table))
    }
}

impl Drop for Ip6Guard {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip6", &self.0])
            .status();
    }
}

#[test]
fn dual_stack_pod_reports_its_ipv6_address_as_additional_ip() -> Result<()> {
    let (bridge, subnet) = network(5);
    let subnet6 = format!("fd87:{:x}:5::/64", std::process::id() % 0xffff);
    let _guard6 = Ip6Guard::install(&bridge, &subnet6)?;
    let berthd = Berthd::start(BerthdOptions {
        // The bridge is deleted at teardown (with the IPv4 guard, the harness's own).
        bridge: Some(bridge.clone()),
        subnet: None,
        ..BerthdOptions::default()
    })?;
    let paths = berthd.paths().clone();
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": "berth-e2e-dual",
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]],
                "dataDir": paths.state.join("cni-ipam"),
            },
        }],
    });
    std::fs::write(
        paths.cni_conf_dir.join("10-dual.conflist"),
        serde_json::to_vec(&conflist)?,
    )?;
    let cfg = pod_config(&paths.dir, "dual", json!([]))?;
    let pod = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    let status = berthd.crictl_json(&["inspectp", &pod])?;
    let net = &status["status"]["network"];
    let ip = net["ip"].as_str().unwrap_or("");
    ensure!(
        in_subnet(ip, &subnet),
        "primary {ip:?} not in {subnet}: {net}"
    );
    let extra: Vec<&str> = net["additionalIps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str())
        .collect();
    let prefix6 = subnet6.trim_end_matches(":/64");
    ensure!(
        extra.len() == 1 && extra[0].starts_with(prefix6),
        "additional ips {extra:?} not one in {subnet6}: {net}"
    );
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    ensure!(veths_on(&bridge) == 0);
    Ok(())
}

#[test]
fn dual_stack_berth_bridge_pod_reports_both_addresses_and_releases_both() -> Result<()> {
    let (bridge, subnet) = network(6);
    let subnet6 = format!("fd87:{:x}:6::/64", std::process::id() % 0xffff);
    let _guard6 = Ip6Guard::install(&bridge, &subnet6)?;
    let berthd = Berthd::start(BerthdOptions {
        bridge: Some(bridge.clone()),
        ..BerthdOptions::default()
    })?;
    let paths = berthd.paths().clone();
    let leases_dir = paths.dir.join("leases");
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": bridge,
        "plugins": [{
            "type": "berth-bridge",
            "bridge": bridge,
            "ipMasq": true,
            "dataDir": leases_dir,
            "ipam": {"ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]]},
        }],
    });
    std::fs::write(
        paths.cni_conf_dir.join("10-dual.conflist"),
        serde_json::to_vec(&conflist)?,
    )?;
    let cfg = pod_config(&paths.dir, "dual", json!([]))?;
    let pod = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    let net = berthd.crictl_json(&["inspectp", &pod])?["status"]["network"].clone();
    let ip = net["ip"].as_str().unwrap_or("");
    ensure!(
        in_subnet(ip, &subnet),
        "primary {ip:?} not in {subnet}: {net}"
    );
    let extra: Vec<&str> = net["additionalIps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str())
        .collect();
    ensure!(
        extra.len() == 1 && extra[0].starts_with(subnet6.trim_end_matches(":/64")),
        "additional ips {extra:?} not one in {subnet6}: {net}"
    );
    let lease_files: Vec<String> = std::fs::read_dir(leases_dir.join(&bridge))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    ensure!(lease_files.len() == 2, "{lease_files:?}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    let left = std::fs::read_dir(leases_dir.join(&bridge))?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .count();
    ensure!(left == 0 && veths_on(&bridge) == 0 && nat_rules(&bridge) == 0);
    Ok(())
}

#[test]
fn harness_teardown_releases_the_networks_of_pods_a_test_left_running() -> Result<()> {
    let (bridge, subnet) = network(7);
    let host_port = free_port()?;
    {
        let berthd = Berthd::start(BerthdOptions::default().bridge_network(&bridge, &subnet))?;
        let cfg = pod_config(
            &berthd.paths().dir,
            "left",
            json!([{"protocol": 0, "container_port": 80, "host_port": host_port, "host_ip": "127.0.0.1"}]),
        )?;
        berthd.crictl_ok(&["runp", s(&cfg)?])?;
        // Dropped with the pod running, as a failing test would.
    }
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()?;
    let nat = String::from_utf8_lossy(&nat.stdout);
    let prefix = subnet.trim_end_matches("0/24");
    let left: Vec<&str> = nat
        .lines()
        .filter(|l| l.contains(prefix) || l.contains(&format!("--dport {host_port} ")))
        .collect();
    ensure!(left.is_empty(), "portmap rules left: {left:#?}");
    ensure!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge left"
    );
    Ok(())
}

#[test]
fn a_pod_is_detached_with_the_chain_it_was_attached_with_after_the_config_changed() -> Result<()> {
    let (bridge, subnet) = network(8);
    let berthd = Berthd::start(BerthdOptions::default().bridge_network(&bridge, &subnet))?;
    let paths = berthd.paths().clone();
    let cfg = pod_config(&paths.dir, "moved", json!([]))?;
    let pod = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    let lease_dir = paths.state.join("cni-ipam/berth-e2e");
    ensure!(leases(&lease_dir).len() == 1 && veths_on(&bridge) == 1);

    // The operator replaces the network: the pod's DEL still runs bridge + host-local.
    for entry in std::fs::read_dir(&paths.cni_conf_dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::write(
        paths.cni_conf_dir.join("05-other.conflist"),
        r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"no-such-plugin"}]}"#,
    )?;
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    ensure!(
        leases(&lease_dir).is_empty(),
        "lease left: {:?}",
        leases(&lease_dir)
    );
    ensure!(veths_on(&bridge) == 0, "veth left on {bridge}");
    Ok(())
}
