//! The links berth-bridge manages (bridge, veth pairs, addresses, routes) behind the [`Links`]
//! trait. [`IpLinks`] drives iproute2's `ip` in batch mode: one process per step group, host
//! side from the plugin's own thread, pod side from a thread that entered the pod's network
//! namespace with `setns` (a child process inherits the namespaces of the thread that spawns it).

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::bridge::ipam::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what}: {message}")]
    Command { what: String, message: String },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running ip: {0}")]
    Exec(#[source] std::io::Error),
}

/// What ADD asks for on the link side.
#[derive(Debug, Clone, PartialEq)]
pub struct VethSpec {
    pub bridge: String,
    pub host_name: String,
    pub netns: PathBuf,
    pub if_name: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// Written as the host end's alias so the pair can be found from the host.
    pub alias: String,
    pub addresses: Vec<(IpAddr, IpNet)>,
    /// One default route per family, via these gateways.
    pub gateways: Vec<IpAddr>,
}

/// MAC addresses of what ADD created, for the CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VethMacs {
    pub host: String,
    pub container: String,
}

/// The pod interface as found in its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIface {
    pub addresses: Vec<(IpAddr, u8)>,
    pub default_gateways: Vec<IpAddr>,
}

/// A host link as found by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostLink {
    pub master: Option<String>,
    pub alias: Option<String>,
}

pub trait Links {
    /// Creates the bridge if missing, brings it up and assigns the gateway addresses; returns
    /// its MAC.
    fn ensure_bridge(
        &self,
        bridge: &str,
        mtu: Option<u32>,
        gateways: &[(IpAddr, IpNet)],
    ) -> Result<String, LinkError>;
    fn add_veth(&self, spec: &VethSpec) -> Result<VethMacs, LinkError>;
    /// Removes the pair by its host end; a missing link is success.
    fn del_host_link(&self, name: &str) -> Result<(), LinkError>;
    fn host_link(&self, name: &str) -> Result<Option<HostLink>, LinkError>;
    /// `None` when the interface does not exist in the namespace.
    fn pod_iface(&self, netns: &Path, if_name: &str) -> Result<Option<PodIface>, LinkError>;
    /// Host links whose alias starts with `prefix`, by name (for GC).
    fn host_links_with_alias(&self, prefix: &str) -> Result<Vec<(String, String)>, LinkError>;
}

/// [`Links`] through iproute2's `ip`.
#[derive(Debug, Clone, Default)]
pub struct IpLinks;

fn ip_batch(what: &str, json: bool, lines: &[String]) -> Result<String, LinkError> {
    ip_batch_family(what, json, None, lines)
}

/// `ip` in batch mode; `family` (`"-6"`) selects what `route show` lists.
fn ip_batch_family(
    what: &str,
    json: bool,
    family: Option<&str>,
    lines: &[String],
) -> Result<String, LinkError> {
    let mut cmd = Command::new("ip");
    if json {
        cmd.arg("-j");
    }
    cmd.args(family);
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LinkError::Exec)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(lines.join("\n").as_bytes())
            .map_err(LinkError::Exec)?;
    }
    let out = child.wait_with_output().map_err(LinkError::Exec)?;
    if !out.status.success() {
        return Err(LinkError::Command {
            what: what.to_string(),
            message: format!(
                "ip -batch failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `f` on a thread that has entered the network namespace at `path`.
fn in_netns<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> Result<R, LinkError> {
    let netns_err = |source| LinkError::Netns {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(netns_err)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| netns_err(e.into()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(netns_err(std::io::Error::other("netns thread panicked"))))
    })
}

/// Brings the loopback interface of the network namespace at `netns` up, as a runtime must
/// whatever plugin chain it runs (containerd and CRI-O do the same).
pub fn loopback_up(netns: &Path) -> Result<(), LinkError> {
    let what = format!("lo in {}", netns.display());
    in_netns(netns, || {
        ip_batch(&what, false, &["link set dev lo up".to_string()])
    })?
    .map(|_| ())
}

fn not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::Command { message, .. }
        if message.contains("does not exist") || message.contains("Cannot find device"))
}

/// The objects of `ip -j ... show` output printed by a batch (one JSON array per command).
fn json_objects(out: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<Value>()
        .flatten()
        .flat_map(|v| match v {
            Value::Array(a) => a,
            other => vec![other],
        })
        .collect()
}

fn mac_of(out: &str, name: &str) -> String {
    json_objects(out)
        .iter()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(name))
        .and_then(|l| l.get("address").and_then(Value::as_str))
        .unwrap_or_default()
        .to_string()
}

/// IPv6 addresses skip duplicate address detection: the allocator already made them unique,
/// and a tentative address would not be usable for the first second or two of the pod.
fn nodad(a: &IpAddr) -> &'static str {
    if a.is_ipv6() { " nodad" } else { "" }
}

fn mtu_arg(mtu: Option<u32>) -> String {
    mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
}

impl Links for IpLinks {
    fn ensure_bridge(
        &self,
        bridge: &str,
        mtu: Option<u32>,
        gateways: &[(IpAddr, IpNet)],
    ) -> Result<String, LinkError> {
        let what = format!("bridge {bridge}");
        let mut lines = vec![format!("link set dev {bridge} up")];
        for (gw, net) in gateways {
            lines.push(format!(
                "addr replace {gw}/{} dev {bridge}{}",
                net.prefix,
                nodad(gw)
            ));
        }
        lines.push(format!("link show dev {bridge}"));
        // The common case, an existing bridge, costs one process; sysfs is only a hint (it may
        // belong to another netns), so a bridge that turns out missing is still created.
        if Path::new("/sys/class/net").join(bridge).exists() {
            match ip_batch(&what, true, &lines) {
                Err(e) if not_found(&e) => {}
                r => return r.map(|out| mac_of(&out, bridge)),
            }
        }
        // Two ADDs may race to create it: losing the race is fine.
        let add = format!("link add name {bridge}{} type bridge", mtu_arg(mtu));
        match ip_batch(&what, false, &[add]) {
            Err(LinkError::Command { message, .. }) if message.contains("File exists") => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let out = ip_batch(&what, true, &lines)?;
        Ok(mac_of(&out, bridge))
    }

    fn add_veth(&self, s: &VethSpec) -> Result<VethMacs, LinkError> {
        let mtu = mtu_arg(s.mtu);
        let netns = s.netns.display().to_string();
        if netns.contains(char::is_whitespace) {
            return Err(LinkError::Netns {
                path: s.netns.clone(),
                source: std::io::Error::other("a path with spaces cannot be given to ip"),
            });
        }
        // The pod end is created in the pod's namespace under its final name: moving a link
        // between namespaces afterwards costs a synchronize_net (about 30 ms).
        let mut host = vec![
            format!(
                "link add {}{mtu} type veth peer name {}{mtu} netns {netns}",
                s.host_name, s.if_name
            ),
            format!("link set dev {} master {}", s.host_name, s.bridge),
            format!("link set dev {} alias \"{}\"", s.host_name, s.alias),
        ];
        if s.hairpin {
            host.push(format!(
                "link set dev {} type bridge_slave hairpin on",
                s.host_name
            ));
        }
        host.push(format!("link set dev {} up", s.host_name));
        host.push(format!("link show dev {}", s.host_name));
        let what = format!("veth {} (peer {} in {netns})", s.host_name, s.if_name);
        let out = match ip_batch(&what, true, &host) {
            // A host end left by an ADD that crashed half-way: remove it and try once more (if
            // the pod already has an interface of that name, the retry reports it).
            Err(LinkError::Command { message, .. })
                if message.contains("File exists") && self.host_link(&s.host_name)?.is_some() =>
            {
                self.del_host_link(&s.host_name)?;
                ip_batch(&what, true, &host)?
            }
            r => r?,
        };
        let host_mac = mac_of(&out, &s.host_name);

        let mut pod = vec![format!("link set dev {} up", s.if_name)];
        for (a, net) in &s.addresses {
            pod.push(format!(
                "addr add {a}/{} dev {}{}",
                net.prefix,
                s.if_name,
                nodad(a)
            ));
        }
        for gw in &s.gateways {
            let dst = if gw.is_ipv6() { "::/0" } else { "default" };
            pod.push(format!("route add {dst} via {gw} dev {}", s.if_name));
        }
        pod.push(format!("link show dev {}", s.if_name));
        let what = format!("{} in {netns}", s.if_name);
        let out = in_netns(&s.netns, || ip_batch(&what, true, &pod))??;
        Ok(VethMacs {
            host: host_mac,
            container: mac_of(&out, &s.if_name),
        })
    }

    fn del_host_link(&self, name: &str) -> Result<(), LinkError> {
        match ip_batch(
            &format!("link {name}"),
            false,
            &[format!("link del dev {name}")],
        ) {
            Err(e) if !not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLink>, LinkError> {
        match ip_batch(
            &format!("link {name}"),
            true,
            &[format!("link show dev {name}")],
        ) {
            Ok(out) => Ok(json_objects(&out).first().map(|l| HostLink {
                master: l.get("master").and_then(Value::as_str).map(String::from),
                alias: l.get("ifalias").and_then(Value::as_str).map(String::from),
            })),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn pod_iface(&self, netns: &Path, if_name: &str) -> Result<Option<PodIface>, LinkError> {
        let what = format!("{if_name} in {}", netns.display());
        let out = in_netns(netns, || {
            match ip_batch(&what, true, &[format!("addr show dev {if_name}")]) {
                Ok(addrs) => {
                    let show = ["route show default".to_string()];
                    let v4 = ip_batch(&what, true, &show)?;
                    let v6 = ip_batch_family(&what, true, Some("-6"), &show)?;
                    Ok(Some((addrs, format!("{v4}\n{v6}"))))
                }
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })??;
        let Some((addrs, routes)) = out else {
            return Ok(None);
        };
        let addresses = json_objects(&addrs)
            .iter()
            .flat_map(|l| {
                l.get("addr_info")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|a| {
                matches!(
                    a.get("family").and_then(Value::as_str),
                    Some("inet" | "inet6")
                ) && a.get("scope").and_then(Value::as_str) != Some("link")
            })
            .filter_map(|a| {
                let ip = a.get("local")?.as_str()?.parse().ok()?;
                let prefix = u8::try_from(a.get("prefixlen")?.as_u64()?).ok()?;
                Some((ip, prefix))
            })
            .collect();
        let default_gateways = json_objects(&routes)
            .iter()
            .filter(|r| r.get("dev").and_then(Value::as_str) == Some(if_name))
            .filter_map(|r| r.get("gateway")?.as_str()?.parse().ok())
            .collect();
        Ok(Some(PodIface {
            addresses,
            default_gateways,
        }))
    }

    fn host_links_with_alias(&self, prefix: &str) -> Result<Vec<(String, String)>, LinkError> {
        let out = ip_batch("links", true, &["link show type veth".to_string()])?;
        Ok(json_objects(&out)
            .iter()
            .filter_map(|l| {
                let alias = l.get("ifalias")?.as_str()?;
                let name = l.get("ifname")?.as_str()?;
                alias
                    .starts_with(prefix)
                    .then(|| (name.to_string(), alias.to_string()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_json_output_is_split_per_command() {
        let out = "[{\"ifname\":\"a\",\"address\":\"02:00:00:00:00:01\"}]\n[{\"ifname\":\"b\",\"address\":\"02:00:00:00:00:02\"}]\n";
        assert_eq!(mac_of(out, "b"), "02:00:00:00:00:02");
        assert_eq!(mac_of(out, "c"), "");
        assert_eq!(json_objects("").len(), 0);
    }
}
