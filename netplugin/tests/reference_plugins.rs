//! The CNI runner against Debian's reference plugins (bridge, host-local, loopback) in a
//! network namespace the test creates. Runs as root; sends no traffic.

#![allow(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_netplugin::cni::{CniRunner, RuntimeConf, result_ips};
use berth_netplugin::conf::load_file;

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// A named netns and a bridge, removed on drop even when the test fails.
struct Fixture {
    netns: String,
    bridge: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
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

fn write_conflist(dir: &Path, bridge: &str, subnet: &str, data_dir: &Path) -> PathBuf {
    let path = dir.join("10-test.conflist");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("berth-test-{}", std::process::id()),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": data_dir,
                }
            },
            {"type": "loopback"}
        ]
    });
    std::fs::write(&path, conf.to_string()).unwrap();
    path
}

#[test]
fn bridge_chain_attaches_and_detaches_a_namespace() {
    assert!(
        Path::new(REFERENCE_PLUGINS).join("bridge").exists(),
        "Debian's containernetworking-plugins are required (hack/test installs them)"
    );
    let pid = std::process::id();
    let fixture = Fixture {
        netns: format!("berth-cni-{pid}"),
        bridge: format!("bcni{}", pid % 100_000),
    };
    ip(&["netns", "add", &fixture.netns]);
    let tmp = tempfile::tempdir().unwrap();
    // 10.213.0.0/16 is not routed anywhere from here; no packet is sent in this test.
    let subnet = format!("10.213.{}.0/24", pid % 250);
    let conflist = write_conflist(
        tmp.path(),
        &fixture.bridge,
        &subnet,
        &tmp.path().join("ipam"),
    );
    let list = load_file(&conflist).unwrap();
    let runner = CniRunner::new(vec![REFERENCE_PLUGINS.into()], tmp.path().join("cache"));
    let rt = RuntimeConf {
        container_id: format!("pod-{pid}"),
        netns: PathBuf::from(format!("/run/netns/{}", fixture.netns)),
        if_name: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), "p".into())],
        ..Default::default()
    };

    let result = runner.add(&list, &rt).unwrap();
    let ips = result_ips(&result);
    assert_eq!(ips.len(), 1, "{result}");
    let addr = ips[0].to_string();
    assert!(
        addr.starts_with(&subnet[..subnet.len() - 4]),
        "{addr} in {subnet}"
    );

    let inside = ip(&["-n", &fixture.netns, "-o", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(&addr), "eth0 has {addr}: {inside}");
    let lo = ip(&["-n", &fixture.netns, "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "loopback is up: {lo}");
    runner.check(&list, &rt).unwrap();

    runner.del(&list, &rt).unwrap();
    let inside = ip(&["-n", &fixture.netns, "-o", "link", "show"]);
    assert!(!inside.contains("eth0"), "veth removed: {inside}");
    let leases: Vec<_> = std::fs::read_dir(tmp.path().join("ipam"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !leases.iter().any(|n| n.to_string_lossy() == addr),
        "address lease released: {leases:?}"
    );
    // DEL again, as a restarted runtime would: still success.
    runner.del(&list, &rt).unwrap();
}
