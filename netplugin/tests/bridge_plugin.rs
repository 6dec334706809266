//! berth-bridge through the CNI runner, as root: namespaces, a bridge and an nftables table the
//! test creates and removes (Drop guards, also on failure). Traffic goes only between the test's
//! namespaces, to 127.0.0.1 and to the test bridge's own addresses.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_netplugin::bridge::ipam::Owner;
use berth_netplugin::bridge::veth_name;
use berth_netplugin::cni::{CniRunner, RuntimeConf, result_ips};
use berth_netplugin::conf::{NetworkConfigList, load_file};

/// Namespaces, a bridge and a NAT table, removed on drop even when the test fails.
struct Fixture {
    netns: Vec<String>,
    bridge: String,
    network: String,
    tmp: tempfile::TempDir,
}

impl Fixture {
    /// `n` distinguishes the tests of this file, which share a pid.
    fn new(n: u32, namespaces: usize) -> Fixture {
        let pid = std::process::id();
        let f = Fixture {
            netns: (0..namespaces)
                .map(|i| format!("bb-{pid}-{n}-{i}"))
                .collect(),
            bridge: format!("bbt{}{n}", pid % 100_000),
            network: format!("bbtest-{pid}-{n}"),
            tmp: tempfile::tempdir().unwrap(),
        };
        for ns in &f.netns {
            ip(&["netns", "add", ns]);
        }
        f
    }

    fn guard_table(&self) -> String {
        format!("{}-guard", self.network)
    }

    /// The traffic rule: pods get no route past the node, whatever the plugin sets up.
    fn guard(&self, subnet: &str) {
        let rules = format!(
            "table ip {t} {{\n chain forward {{\n  type filter hook forward priority -10;\n  \
             iifname \"{b}\" ip daddr != {subnet} drop\n }}\n}}\n",
            t = self.guard_table(),
            b = self.bridge,
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn netns_path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns[i]))
    }

    fn lease_dir(&self) -> PathBuf {
        self.tmp.path().join("leases").join(&self.network)
    }

    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.lease_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn conflist(&self, subnet: &str, extra: serde_json::Value) -> NetworkConfigList {
        let mut plugin = serde_json::json!({
            "type": "berth-bridge",
            "bridge": self.bridge,
            "subnet": subnet,
            "dataDir": self.tmp.path().join("leases"),
            "mtu": 1400,
            "dns": {"nameservers": ["10.96.0.10"]},
        });
        for (k, v) in extra.as_object().unwrap() {
            plugin[k] = v.clone();
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "plugins": [plugin],
        });
        let path = self.tmp.path().join("10-test.conflist");
        std::fs::write(&path, conf.to_string()).unwrap();
        load_file(&path).unwrap()
    }

    fn runner(&self) -> CniRunner {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_berth-bridge"));
        CniRunner::new(
            vec![bin.parent().unwrap().to_path_buf()],
            self.tmp.path().join("cache"),
        )
    }

    fn rt(&self, i: usize) -> RuntimeConf {
        RuntimeConf {
            container_id: format!("ctr-{}", self.netns[i]),
            netns: self.netns_path(i),
            if_name: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), format!("p{i}"))],
            ..Default::default()
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for ns in &self.netns {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        for (family, table) in [
            ("inet", nat_table(&self.network)),
            ("ip", nat_table(&self.network)),
            ("ip", self.guard_table()),
        ] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &table])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn nat_table(network: &str) -> String {
    format!("berth-{network}")
}

/// `nft list table <family> <table>`'s output (empty when the table does not exist).
fn nft_list(family: &str, table: &str) -> String {
    let out = Command::new("nft")
        .args(["list", "table", family, table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<R: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
}

/// A TCP listener in the namespace at `path` that answers one connection with "pong".
fn serve_once(path: &Path, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = in_netns(path, move || {
        let listener = TcpListener::bind(addr).unwrap();
        tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s.write_all(b"pong").unwrap();
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    h
}

fn ping_pong(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"pong");
    Ok(())
}

fn our_veths(fixture: &Fixture) -> Vec<String> {
    ip(&["-o", "link", "show", "master", &fixture.bridge])
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn two_namespaces_get_addresses_talk_tcp_and_leave_nothing_after_del() {
    let pid = std::process::id();
    let f = Fixture::new(1, 2);
    let subnet = format!("10.214.{}.0/24", pid % 250);
    let net = &subnet[..subnet.len() - 4];
    f.guard(&subnet);
    let list = f.conflist(&subnet, serde_json::json!({}));
    let runner = f.runner();
    // A pair left by an ADD that crashed half-way does not block the next one.
    let host = veth_name(&Owner {
        container_id: f.rt(0).container_id,
        if_name: "eth0".into(),
    });
    let temp = format!("bbs{}", pid % 100_000);
    ip(&["link", "add", &host, "type", "veth", "peer", "name", &temp]);

    let t = Instant::now();
    let r0 = runner.add(&list, &f.rt(0)).unwrap();
    let add_time = t.elapsed();
    let r1 = runner.add(&list, &f.rt(1)).unwrap();
    let (a0, a1) = (result_ips(&r0)[0], result_ips(&r1)[0]);
    assert_eq!(a0.to_string(), format!("{net}2"), "{r0}");
    assert_eq!(a1.to_string(), format!("{net}3"), "{r1}");

    // The result: bridge, host veth, pod iface in its sandbox; ips point at the pod iface.
    assert_eq!(r0["interfaces"][0]["name"], f.bridge);
    assert_eq!(r0["interfaces"][2]["name"], "eth0");
    assert_eq!(
        r0["interfaces"][2]["sandbox"],
        f.netns_path(0).display().to_string()
    );
    assert_eq!(r0["ips"][0]["interface"], 2);
    assert_eq!(r0["ips"][0]["gateway"], format!("{net}1"));
    assert_eq!(r0["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r0["dns"]["nameservers"][0], "10.96.0.10");

    let inside = ip(&["-n", &f.netns[0], "-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(&format!("{a0}/24")), "{inside}");
    let link = ip(&["-n", &f.netns[0], "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    let route = ip(&["-n", &f.netns[0], "route", "show", "default"]);
    assert!(route.contains(&format!("via {net}1 dev eth0")), "{route}");
    assert_eq!(our_veths(&f).len(), 2);
    let bridge_addr = ip(&["-o", "addr", "show", "dev", &f.bridge]);
    assert!(bridge_addr.contains(&format!("{net}1/24")), "{bridge_addr}");

    runner.check(&list, &f.rt(0)).unwrap();
    runner.check(&list, &f.rt(1)).unwrap();

    // TCP from namespace 0 to namespace 1, across the bridge.
    let server = serve_once(&f.netns_path(1), SocketAddr::new(a1, 8080));
    let target = SocketAddr::new(a1, 8080);
    in_netns(&f.netns_path(0), move || ping_pong(target))
        .join()
        .unwrap()
        .unwrap();
    server.join().unwrap();

    // CHECK notices a missing address.
    ip(&["-n", &f.netns[1], "addr", "flush", "dev", "eth0"]);
    let err = runner.check(&list, &f.rt(1)).unwrap_err().to_string();
    assert!(err.contains("lacks address"), "{err}");

    let t = Instant::now();
    runner.del(&list, &f.rt(0)).unwrap();
    let del_time = t.elapsed();
    // DEL after the namespace is gone, then again: still success.
    ip(&["netns", "del", &f.netns[1]]);
    runner.del(&list, &f.rt(1)).unwrap();
    runner.del(&list, &f.rt(1)).unwrap();
    assert!(our_veths(&f).is_empty(), "{:?}", our_veths(&f));
    assert!(
        !ip(&["-o", "link"]).contains(&temp),
        "no stale pod end left"
    );
    assert!(f.leases().is_empty(), "{:?}", f.leases());
    eprintln!("berth-bridge ADD {add_time:?}, DEL {del_time:?} (through CniRunner, one plugin)");

    // A new ADD after DEL: round-robin continues after the last allocated address.
    let r = runner.add(&list, &f.rt(0)).unwrap();
    assert_eq!(result_ips(&r)[0].to_string(), format!("{net}4"), "{r}");
    assert_eq!(f.leases(), vec![format!("{net}4")]);
    runner.check(&list, &f.rt(0)).unwrap();
    runner.del(&list, &f.rt(0)).unwrap();
    assert!(f.leases().is_empty());
    assert!(our_veths(&f).is_empty());
}

#[test]
fn host_port_on_loopback_reaches_the_pod_and_del_removes_its_rules() {
    let pid = std::process::id();
    let f = Fixture::new(2, 1);
    let subnet = format!("10.215.{}.0/24", pid % 250);
    f.guard(&subnet);
    let list = f.conflist(
        &subnet,
        serde_json::json!({"ipMasq": true, "hairpinMode": true, "capabilities": {"portMappings": true}}),
    );
    let runner = f.runner();
    let host_port = 20_000 + (pid % 20_000) as u16;
    let mut rt = f.rt(0);
    rt.capability_args.insert(
        "portMappings".into(),
        serde_json::json!([{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let r = runner.add(&list, &rt).unwrap();
    let addr = result_ips(&r)[0];
    runner.check(&list, &rt).unwrap();
    let host_end = r["interfaces"][1]["name"].as_str().unwrap();
    let out = Command::new("bridge")
        .args(["-d", "link", "show", "dev", host_end])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("hairpin on"), "{out}");
    let table = nat_table(&f.network);
    let rules = nft_list("inet", &table);
    assert!(
        rules.contains(&format!("dnat ip to {addr}:8080")),
        "{rules}"
    );
    assert!(rules.contains("masquerade"), "{rules}");

    let server = serve_once(&f.netns_path(0), SocketAddr::new(addr, 8080));
    ping_pong(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), host_port)).unwrap();
    server.join().unwrap();

    runner.del(&list, &rt).unwrap();
    let rules = nft_list("inet", &table);
    assert!(
        !rules.contains("comment"),
        "every tagged rule is gone: {rules}"
    );
    assert!(f.leases().is_empty());
    runner.del(&list, &rt).unwrap();
}

#[test]
fn concurrent_adds_from_separate_processes_get_distinct_addresses() {
    let pid = std::process::id();
    let f = Fixture::new(3, 8);
    let subnet = format!("10.216.{}.0/24", pid % 250);
    f.guard(&subnet);
    let list = f.conflist(&subnet, serde_json::json!({}));
    let runner = f.runner();
    // Eight plugin processes at once, racing for addresses and for creating the bridge.
    let mut ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..f.netns.len())
            .map(|i| {
                let (runner, list, rt) = (&runner, &list, f.rt(i));
                s.spawn(move || result_ips(&runner.add(list, &rt).unwrap())[0].to_string())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    ips.sort();
    let n = ips.len();
    ips.dedup();
    assert_eq!(ips.len(), n, "an address was handed out twice: {ips:?}");
    let mut leases = f.leases();
    leases.sort();
    assert_eq!(leases, ips);
    assert_eq!(our_veths(&f).len(), n);
    for i in 0..f.netns.len() {
        runner.del(&list, &f.rt(i)).unwrap();
    }
    assert!(f.leases().is_empty());
    assert!(our_veths(&f).is_empty());
}

/// The traffic rule for IPv6: forwarded traffic from the bridge to anything outside `subnet`
/// is dropped (link-local and multicast stay: neighbour discovery needs them when bridged
/// traffic passes netfilter); removed on drop.
struct Guard6(String);

impl Guard6 {
    fn install(bridge: &str, subnet: &str) -> Guard6 {
        let table = format!("bbtest6-{bridge}");
        let rules = format!(
            "table ip6 {table} {{\n chain forward {{\n  type filter hook forward priority -10;\n  \
             iifname \"{bridge}\" ip6 daddr != {{ {subnet}, fe80::/10, ff00::/8 }} drop\n }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        Guard6(table)
    }
}

impl Drop for Guard6 {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip6", &self.0])
            .status();
    }
}

#[test]
fn dual_stack_namespaces_get_both_families_and_talk_tcp_over_ipv6() {
    let pid = std::process::id();
    let f = Fixture::new(4, 2);
    let subnet = format!("10.215.{}.0/24", pid % 250);
    let subnet6 = format!("fd86:{:x}:4::/64", pid % 0xffff);
    f.guard(&subnet);
    let _guard6 = Guard6::install(&f.bridge, &subnet6);
    let list = f.conflist(
        &subnet,
        serde_json::json!({
            "ipMasq": true,
            "ipam": {"ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]]},
        }),
    );
    let runner = f.runner();
    let r0 = runner.add(&list, &f.rt(0)).unwrap();
    let r1 = runner.add(&list, &f.rt(1)).unwrap();
    let (ips0, ips1) = (result_ips(&r0), result_ips(&r1));
    assert!(
        ips0.len() == 2 && ips0[0].is_ipv4() && ips0[1].is_ipv6(),
        "{r0}"
    );
    let prefix6 = subnet6.trim_end_matches(":/64");
    assert!(ips1[1].to_string().starts_with(prefix6), "{r1}");
    let routes: Vec<&str> = r0["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .collect();
    assert_eq!(routes, ["0.0.0.0/0", "::/0"], "{r0}");
    assert_eq!(r0["ips"][1]["gateway"], format!("{prefix6}:1"));

    let route6 = ip(&["-n", &f.netns[0], "-6", "route", "show", "default"]);
    assert!(
        route6.contains(&format!("via {prefix6}:1 dev eth0")),
        "{route6}"
    );
    let bridge6 = ip(&["-6", "-o", "addr", "show", "dev", &f.bridge]);
    assert!(bridge6.contains(&format!("{prefix6}:1/64")), "{bridge6}");
    runner.check(&list, &f.rt(0)).unwrap();

    // TCP over IPv6 from namespace 0 to namespace 1 (no DAD wait: the addresses are usable now).
    let target = SocketAddr::new(ips1[1], 8080);
    let server = serve_once(&f.netns_path(1), target);
    in_netns(&f.netns_path(0), move || ping_pong(target))
        .join()
        .unwrap()
        .unwrap();
    server.join().unwrap();

    runner.del(&list, &f.rt(0)).unwrap();
    runner.del(&list, &f.rt(1)).unwrap();
    let left: Vec<String> = std::fs::read_dir(f.lease_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(our_veths(&f).is_empty());
}

#[test]
fn dual_stack_host_port_answers_on_the_bridge_ipv6_address_and_del_removes_both_families() {
    let pid = std::process::id();
    let f = Fixture::new(5, 1);
    let subnet = format!("10.217.{}.0/24", pid % 250);
    let subnet6 = format!("fd86:{:x}:5::/64", pid % 0xffff);
    f.guard(&subnet);
    let _guard6 = Guard6::install(&f.bridge, &subnet6);
    let list = f.conflist(
        &subnet,
        serde_json::json!({
            "ipMasq": true,
            "ipam": {"ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]]},
            "capabilities": {"portMappings": true},
        }),
    );
    let runner = f.runner();
    let host_port = 40_000 + (pid % 20_000) as u16;
    let mut rt = f.rt(0);
    rt.capability_args.insert(
        "portMappings".into(),
        serde_json::json!([{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let r = runner.add(&list, &rt).unwrap();
    let ips = result_ips(&r);
    assert!(ips.len() == 2 && ips[1].is_ipv6(), "{r}");
    runner.check(&list, &rt).unwrap();
    let table = nat_table(&f.network);
    let rules = nft_list("inet", &table);
    assert!(
        rules.contains(&format!("dnat ip6 to [{}]:8080", ips[1])),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("dnat ip to {}:8080", ips[0])),
        "{rules}"
    );

    // From the host to its own IPv6 address on the bridge (the pod's gateway), at the host port.
    let gateway6: std::net::IpAddr = r["ips"][1]["gateway"].as_str().unwrap().parse().unwrap();
    let server = serve_once(&f.netns_path(0), SocketAddr::new(ips[1], 8080));
    ping_pong(SocketAddr::new(gateway6, host_port)).unwrap();
    server.join().unwrap();

    // A rule of this attachment in the IPv4-only table older versions used goes too.
    let legacy = format!(
        "table ip {table} {{\n chain postrouting {{\n  type nat hook postrouting priority 100;\n  \
         ip saddr {} masquerade comment \"berth:{}/eth0\"\n }}\n}}\n",
        ips[0], rt.container_id
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(legacy.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(nft_list("ip", &table).contains("comment"));

    runner.del(&list, &rt).unwrap();
    for family in ["inet", "ip", "ip6"] {
        let rules = nft_list(family, &table);
        assert!(
            !rules.contains("comment"),
            "no tagged rule left in {family} {table}: {rules}"
        );
    }
    assert!(f.leases().is_empty());
    runner.del(&list, &rt).unwrap();
}
