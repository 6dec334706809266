//! Masquerade and host ports in one nftables table per network, `ip berth-<network>`, applied
//! with `nft -j -f -`. Every rule carries the comment `berth:<container id>/<ifname>`, so DEL
//! removes exactly the rules of its attachment and GC can find those of forgotten ones.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::bridge::config::PortMapping;
use crate::bridge::ipam::IpNet;

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
    pub address: Ipv4Addr,
    /// The pod's IPv4 subnet (NAT is IPv4 only).
    pub subnet: IpNet,
    pub masquerade: bool,
    pub ports: Vec<PortMapping>,
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
    let mut cmds = vec![json!({"add": {"table": {"family": "ip", "name": t}}})];
    for (chain, hook, prio) in [
        ("prerouting", "prerouting", -100),
        ("output", "output", -100),
        ("postrouting", "postrouting", 100),
    ] {
        cmds.push(
            json!({"add": {"chain": {"family": "ip", "table": t, "name": chain,
            "type": "nat", "hook": hook, "prio": prio, "policy": "accept"}}}),
        );
    }
    let rule = |chain: &str, expr: Vec<Value>| {
        json!({"add": {"rule": {"family": "ip", "table": t, "chain": chain,
            "comment": spec.tag, "expr": expr}}})
    };
    let addr = spec.address.to_string();
    if spec.masquerade {
        cmds.push(rule(
            "postrouting",
            vec![
                eq(payload("ip", "saddr"), json!(addr)),
                ne(payload("ip", "daddr"), prefix(spec.subnet)),
                ne(
                    payload("ip", "daddr"),
                    json!({"prefix": {"addr": "224.0.0.0", "len": 4}}),
                ),
                json!({"masquerade": null}),
            ],
        ));
    }
    for p in &spec.ports {
        let proto = p.protocol.as_str();
        let dest = match p.host_ip {
            Some(ip) => eq(payload("ip", "daddr"), json!(ip.to_string())),
            None => eq(
                json!({"fib": {"result": "type", "flags": ["daddr"]}}),
                json!("local"),
            ),
        };
        let dnat = vec![
            dest,
            eq(payload(proto, "dport"), json!(p.host_port)),
            json!({"dnat": {"addr": addr, "port": p.container_port}}),
        ];
        cmds.push(rule("prerouting", dnat.clone()));
        cmds.push(rule("output", dnat));
        // Replies must come back through the host: connections from 127.0.0.1 (which the pod
        // cannot answer) and from pods of the same bridge (which it would answer directly).
        for source in [
            IpNet {
                addr: Ipv4Addr::new(127, 0, 0, 0).into(),
                prefix: 8,
            },
            spec.subnet,
        ] {
            cmds.push(rule(
                "postrouting",
                vec![
                    eq(payload("ip", "saddr"), prefix(source)),
                    eq(payload("ip", "daddr"), json!(addr)),
                    eq(payload(proto, "dport"), json!(p.container_port)),
                    json!({"masquerade": null}),
                ],
            ));
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
    fn list(&self, table: &str) -> Result<Option<String>, NatError> {
        match nft(&["-j", "list", "table", "ip", table], None) {
            Ok(out) => Ok(Some(out)),
            Err(NatError::Command(m)) if m.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Nat for Nft {
    fn add(&self, spec: &NatSpec) -> Result<(), NatError> {
        if spec.masquerade {
            sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        }
        if spec
            .ports
            .iter()
            .any(|p| p.host_ip.is_none_or(|ip| ip.is_loopback()))
        {
            sysctl(
                &format!("/proc/sys/net/ipv4/conf/{}/route_localnet", spec.bridge),
                "1",
            )?;
        }
        nft(&["-j", "-f", "-"], Some(&ruleset(spec))).map(|_| ())
    }

    fn del(&self, table: &str, tag: &str) -> Result<(), NatError> {
        // Two DELs racing may delete the same handle; the loser's batch fails: list again.
        let mut last = None;
        for _ in 0..3 {
            let Some(listing) = self.list(table)? else {
                return Ok(());
            };
            let cmds: Vec<Value> = rules(&listing)
                .into_iter()
                .filter(|(_, _, t)| t == tag)
                .map(|(chain, handle, _)| {
                    json!({"delete": {"rule": {"family": "ip", "table": table, "chain": chain, "handle": handle}}})
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

    fn tags(&self, table: &str) -> Result<Vec<String>, NatError> {
        Ok(self
            .list(table)?
            .map(|l| rules(&l).into_iter().map(|(_, _, t)| t).collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::config::Protocol;

    #[test]
    fn ruleset_tags_every_rule_and_maps_ports() {
        let spec = NatSpec {
            table: "berth-pods".into(),
            tag: "berth:c1/eth0".into(),
            bridge: "berth0".into(),
            address: Ipv4Addr::new(10, 1, 0, 5),
            subnet: IpNet::parse("10.1.0.0/24").unwrap(),
            masquerade: true,
            ports: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            }],
        };
        let v = ruleset(&spec);
        let cmds = v["nftables"].as_array().unwrap();
        let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
        assert_eq!(rules.len(), 1 + 2 + 2);
        assert!(rules.iter().all(|r| r["comment"] == "berth:c1/eth0"));
        let text = v.to_string();
        assert!(
            text.contains(r#"{"dnat":{"addr":"10.1.0.5","port":80}}"#),
            "{text}"
        );
        assert!(text.contains(r#""right":8080"#));
        assert_eq!(rules.iter().filter(|r| r["chain"] == "output").count(), 1);
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
