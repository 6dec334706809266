//! Masquerade and host ports of both families in one nftables table per network,
//! `inet berth-<network>`, applied with `nft -j -f -`. Every rule carries the comment
//! `berth:<container id>/<ifname>`, so DEL removes exactly the rules of its attachment (of both
//! families, from one listing) and GC can find those of forgotten ones.
//!
//! Host ports follow portmap: an IPv4 `hostIP` maps IPv4 only, an IPv6 one IPv6 only, none maps
//! every local address of each family the pod has. IPv6 loopback (`::1`) is never mapped: the
//! kernel does not route a packet from `::1` off the host (IPv6 has no `route_localnet`), so
//! such connections could not work; `127.0.0.1` is mapped.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::bridge::config::PortMapping;
use crate::bridge::ipam::IpNet;

/// The table family; `ip` is where berth-bridge kept its IPv4-only rules before, still cleaned
/// up by DEL and GC.
const FAMILY: &str = "inet";
const LEGACY_FAMILY: &str = "ip";

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("nft: {0}")]
    Command(String),
    #[error("running nft: {0}")]
    Exec(#[source] std::io::Error),
    #[error("{path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
}

/// The NAT an attachment needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NatSpec {
    pub table: String,
    pub tag: String,
    pub bridge: String,
    /// The pod's address of each family it has (at most one per family), with its subnet.
    pub addresses: Vec<(IpAddr, IpNet)>,
    pub masquerade: bool,
    pub ports: Vec<PortMapping>,
}

impl NatSpec {
    /// Whether the spec needs any rule (a pod may have no address of a host port's family).
    pub fn has_rules(&self) -> bool {
        !self.addresses.is_empty()
            && (self.masquerade
                || self
                    .ports
                    .iter()
                    .any(|p| self.addresses.iter().any(|(a, _)| maps(p, *a))))
    }
}

/// Whether host port `p` is DNATed to pod address `addr`.
fn maps(p: &PortMapping, addr: IpAddr) -> bool {
    match p.host_ip {
        None => true,
        Some(ip) => ip.is_ipv6() == addr.is_ipv6() && ip != IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

pub trait Nat {
    fn add(&self, spec: &NatSpec) -> Result<(), NatError>;
    /// Removes the rules tagged `tag`; a missing table or rule is success.
    fn del(&self, table: &str, tag: &str) -> Result<(), NatError>;
    /// The tags of the rules in `table`, one per rule.
    fn tags(&self, table: &str) -> Result<Vec<String>, NatError>;
}

/// [`Nat`] through the `nft` command.
#[derive(Debug, Clone, Default)]
pub struct Nft;

fn nft(args: &[&str], input: Option<&Value>) -> Result<String, NatError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NatError::Exec)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin
            .write_all(input.to_string().as_bytes())
            .map_err(NatError::Exec)?;
    }
    let out = child.wait_with_output().map_err(NatError::Exec)?;
    if !out.status.success() {
        return Err(NatError::Command(format!(
            "nft {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sysctl(path: &str, value: &str) -> Result<(), NatError> {
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(path, value).map_err(|source| NatError::Sysctl {
        path: path.to_string(),
        source,
    })
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn eq(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn ne(left: Value, right: Value) -> Value {
    json!({"match": {"op": "!=", "left": left, "right": right}})
}

fn prefix(net: IpNet) -> Value {
    json!({"prefix": {"addr": net.addr.to_string(), "len": net.prefix}})
}

/// The nftables JSON commands that install `spec` (table and chains created if missing).
pub fn ruleset(spec: &NatSpec) -> Value {
    let t = &spec.table;
    let mut cmds = vec![json!({"add": {"table": {"family": FAMILY, "name": t}}})];
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", -100),
        ("output", "output", -100),
        ("postrouting", "postrouting", 100),
    ] {
        cmds.push(
            json!({"add": {"chain": {"family": FAMILY, "table": t, "name": chain,
            "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}}}),
        );
    }
    // Every rule starts with its family (`meta nfproto`), so the inet table's fib and
    // masquerade rules never see the other family's packets.
    let rule = |chain: &str, nfproto: &str, expr: Vec<Value>| {
        let mut all = vec![eq(json!({"meta": {"key": "nfproto"}}), json!(nfproto))];
        all.extend(expr);
        json!({"add": {"rule": {"family": FAMILY, "table": t, "chain": chain,
            "comment": spec.tag, "expr": all}}})
    };
    for &(address, subnet) in &spec.addresses {
        let v6 = address.is_ipv6();
        let (fam, nfproto) = if v6 { ("ip6", "ipv6") } else { ("ip", "ipv4") };
        let multicast = if v6 {
            json!({"prefix": {"addr": "ff00::", "len": 8}})
        } else {
            json!({"prefix": {"addr": "224.0.0.0", "len": 4}})
        };
        let addr = address.to_string();
        if spec.masquerade {
            cmds.push(rule(
                "postrouting",
                nfproto,
                vec![
                    eq(payload(fam, "saddr"), json!(addr)),
                    ne(payload(fam, "daddr"), prefix(subnet.network())),
                    ne(payload(fam, "daddr"), multicast),
                    json!({"masquerade": null}),
                ],
            ));
        }
        for p in spec.ports.iter().filter(|p| maps(p, address)) {
            let proto = p.protocol.as_str();
            let dest = match p.host_ip {
                Some(ip) => vec![eq(payload(fam, "daddr"), json!(ip.to_string()))],
                None => vec![eq(
                    json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                    json!("local"),
                )],
            };
            let to = vec![
                eq(payload(proto, "dport"), json!(p.host_port)),
                json!({"dnat": {"family": fam, "addr": addr, "port": p.container_port}}),
            ];
            cmds.push(rule(
                "prerouting",
                nfproto,
                dest.iter().chain(&to).cloned().collect(),
            ));
            let mut output = dest;
            if v6 && p.host_ip.is_none() {
                output.push(ne(
                    payload(fam, "daddr"),
                    json!(Ipv6Addr::LOCALHOST.to_string()),
                ));
            }
            output.extend(to);
            cmds.push(rule("output", nfproto, output));
            // Replies must come back through the host: connections from 127.0.0.1 (which the
            // pod cannot answer) and from pods of the same bridge (which it would answer
            // directly).
            let mut sources = vec![subnet.network()];
            if !v6 {
                sources.push(IpNet {
                    addr: Ipv4Addr::new(127, 0, 0, 0).into(),
                    prefix: 8,
                });
            }
            for source in sources {
                cmds.push(rule(
                    "postrouting",
                    nfproto,
                    vec![
                        eq(payload(fam, "saddr"), prefix(source)),
                        eq(payload(fam, "daddr"), json!(addr)),
                        eq(payload(proto, "dport"), json!(p.container_port)),
                        json!({"masquerade": null}),
                    ],
                ));
            }
        }
    }
    json!({"nftables": cmds})
}

/// The (chain, handle, tag) of every commented rule in `nft -j list table` output.
fn rules(listing: &str) -> Vec<(String, u64, String)> {
    let v: Value = serde_json::from_str(listing).unwrap_or(Value::Null);
    v.get("nftables")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("rule"))
                .filter_map(|r| {
                    Some((
                        r.get("chain")?.as_str()?.to_string(),
                        r.get("handle")?.as_u64()?,
                        r.get("comment")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Nft {
    fn list(&self, family: &str, table: &str) -> Result<Option<String>, NatError> {
        match nft(&["-j", "list", "table", family, table], None) {
            Ok(out) => Ok(Some(out)),
            Err(NatError::Command(m)) if m.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn del_in(&self, family: &str, table: &str, tag: &str) -> Result<(), NatError> {
        // Two DELs racing may delete the same handle; the loser's batch fails: list again.
        let mut last = None;
        for _ in 0..3 {
            let Some(listing) = self.list(family, table)? else {
                return Ok(());
            };
            let cmds: Vec<Value> = rules(&listing)
                .into_iter()
                .filter(|(_, _, t)| t == tag)
                .map(|(chain, handle, _)| {
                    json!({"delete": {"rule": {"family": family, "table": table, "chain": chain, "handle": handle}}})
                })
                .collect();
            if cmds.is_empty() {
                return Ok(());
            }
            match nft(&["-j", "-f", "-"], Some(&json!({"nftables": cmds}))) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| NatError::Command("deleting rules failed".into())))
    }
}

impl Nat for Nft {
    fn add(&self, spec: &NatSpec) -> Result<(), NatError> {
        let has = |v6: bool| spec.addresses.iter().any(|(a, _)| a.is_ipv6() == v6);
        if spec.masquerade && has(false) {
            sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        }
        // As the reference bridge plugin does with ipMasq; note that IPv6 forwarding makes
        // interfaces with accept_ra=1 ignore router advertisements.
        if spec.masquerade && has(true) {
            sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        }
        if has(false)
            && spec
                .ports
                .iter()
                .any(|p| p.host_ip.is_none_or(|ip| ip.is_ipv4() && ip.is_loopback()))
        {
            sysctl(
                &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", spec.bridge),
                "1",
            )?;
        }
        nft(&["-j", "-f", "-"], Some(&ruleset(spec))).map(|_| ())
    }

    fn del(&self, table: &str, tag: &str) -> Result<(), NatError> {
        self.del_in(FAMILY, table, tag)?;
        self.del_in(LEGACY_FAMILY, table, tag)
    }

    fn tags(&self, table: &str) -> Result<Vec<String>, NatError> {
        let mut tags = Vec::new();
        for family in [FAMILY, LEGACY_FAMILY] {
            if let Some(l) = self.list(family, table)? {
                tags.extend(rules(&l).into_iter().map(|(_, _, t)| t));
            }
        }
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::Protocol;

    fn port(host_port: u16, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: host_ip.map(|ip| ip.parse().unwrap()),
        }
    }

    fn spec(addresses: &[(&str, &str)], ports: Vec<PortMapping>) -> NatSpec {
        NatSpec {
            table: "berth-pods".into(),
            tag: "berth:c1/eth0".into(),
            bridge: "berth0".into(),
            addresses: addresses
                .iter()
                .map(|(a, n)| (a.parse().unwrap(), IpNet::parse(n).unwrap()))
                .collect(),
            masquerade: true,
            ports,
        }
    }

    fn added_rules(v: &Value) -> Vec<Value> {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["add"].get("rule").cloned())
            .collect()
    }

    /// The rules of `chain` that match family `nfproto`.
    fn of(rules: &[Value], chain: &str, nfproto: &str) -> Vec<String> {
        rules
            .iter()
            .filter(|r| r["chain"] == chain && r["expr"][0]["match"]["right"] == nfproto)
            .map(Value::to_string)
            .collect()
    }

    #[test]
    fn ruleset_tags_every_rule_and_maps_ports() {
        let v = ruleset(&spec(
            &[("10.1.0.5", "10.1.0.0/24")],
            vec![port(8080, None)],
        ));
        let rules = added_rules(&v);
        assert_eq!(rules.len(), 1 + 2 + 2);
        assert!(rules.iter().all(|r| r["comment"] == "berth:c1/eth0"));
        assert!(rules.iter().all(|r| r["family"] == "inet"));
        let text = v.to_string();
        assert!(text.contains(r#""table":{"family":"inet","name":"berth-pods"}"#));
        assert!(
            text.contains(r#"{"dnat":{"addr":"10.1.0.5","family":"ip","port":80}}"#),
            "{text}"
        );
        assert!(text.contains(r#""right":8080"#));
        assert_eq!(of(&rules, "output", "ipv4").len(), 1);
        assert!(of(&rules, "output", "ipv6").is_empty());
    }

    #[test]
    fn dual_stack_ruleset_masquerades_and_maps_both_families() {
        let s = spec(
            &[("10.1.0.5", "10.1.0.0/24"), ("fd00:1::5", "fd00:1::/64")],
            vec![port(8080, None)],
        );
        assert!(s.has_rules());
        let rules = added_rules(&ruleset(&s));
        let post6 = of(&rules, "postrouting", "ipv6");
        // Masquerade of traffic leaving the subnet, and of hairpin connections from the subnet
        // (no loopback source for IPv6: ::1 is never mapped).
        assert_eq!(post6.len(), 2, "{post6:?}");
        assert!(post6[0].contains(r#""left":{"payload":{"field":"saddr","protocol":"ip6"}},"op":"==","right":"fd00:1::5""#), "{}", post6[0]);
        assert!(post6[0].contains(r#""addr":"fd00:1::","len":64"#));
        assert!(post6[0].contains(r#""addr":"ff00::","len":8"#));
        assert!(post6.iter().all(|r| r.contains(r#""masquerade":null"#)));
        assert_eq!(of(&rules, "postrouting", "ipv4").len(), 3);
        for chain in ["prerouting", "output"] {
            let v6 = of(&rules, chain, "ipv6");
            assert_eq!(v6.len(), 1, "{chain}: {v6:?}");
            assert!(v6[0].contains(r#"{"dnat":{"addr":"fd00:1::5","family":"ip6","port":80}}"#));
            assert!(v6[0].contains(r#""fib""#));
            assert_eq!(of(&rules, chain, "ipv4").len(), 1);
        }
        // ::1 cannot be DNATed: the host's own connections to it stay on the host.
        let out6 = &of(&rules, "output", "ipv6")[0];
        assert!(out6.contains(r#""op":"!=","right":"::1""#), "{out6}");
        assert!(!of(&rules, "prerouting", "ipv6")[0].contains("::1"));
    }

    #[test]
    fn host_ip_maps_its_own_family_only() {
        let s = spec(
            &[("10.1.0.5", "10.1.0.0/24"), ("fd00:1::5", "fd00:1::/64")],
            vec![
                port(8081, Some("192.0.2.1")),
                port(8082, Some("fd00:9::1")),
                port(8083, Some("::1")),
            ],
        );
        let rules = added_rules(&ruleset(&s));
        let pre4 = of(&rules, "prerouting", "ipv4");
        let pre6 = of(&rules, "prerouting", "ipv6");
        assert_eq!(pre4.len(), 1, "{pre4:?}");
        assert!(pre4[0].contains(r#""right":"192.0.2.1""#) && pre4[0].contains(r#""right":8081"#));
        assert_eq!(pre6.len(), 1, "{pre6:?}");
        assert!(pre6[0].contains(r#""right":"fd00:9::1""#) && pre6[0].contains(r#""right":8082"#));
        assert_eq!(of(&rules, "output", "ipv6").len(), 1);

        // An IPv4-only pod gets nothing for an IPv6 hostIP.
        let mut v4 = spec(
            &[("10.1.0.5", "10.1.0.0/24")],
            vec![port(8082, Some("fd00:9::1"))],
        );
        assert!(of(&added_rules(&ruleset(&v4)), "prerouting", "ipv6").is_empty());
        v4.masquerade = false;
        assert!(!v4.has_rules());
        assert!(added_rules(&ruleset(&v4)).is_empty());
    }

    #[test]
    fn listing_yields_tagged_rules() {
        let listing = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"ip","name":"t"}},
            {"rule":{"family":"ip","table":"t","chain":"postrouting","handle":4,"comment":"berth:a/eth0","expr":[]}},
            {"rule":{"family":"ip","table":"t","chain":"output","handle":7,"expr":[]}}]}"#;
        assert_eq!(
            rules(listing),
            vec![("postrouting".to_string(), 4, "berth:a/eth0".to_string())]
        );
    }
}
