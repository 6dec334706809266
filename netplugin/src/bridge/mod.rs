//! berth-bridge, berth's CNI plugin for bridge networks: the commands (ADD, DEL, CHECK,
//! STATUS, GC, VERSION) over three seams, so the logic is tested without root:
//!
//! - [`ipam`]: addresses, leases on disk (host-local semantics);
//! - [`link::Links`]: the bridge, the veth pair, addresses and the default route;
//! - [`nat::Nat`]: masquerade and host ports in nftables.
//!
//! Names are derived, not stored: the host end of a pair is `bb<hash>` of the container id and
//! ifname (its alias says `berth:<network>:<container id>/<ifname>`), so DEL finds it without the
//! pod's namespace or any cache.

pub mod config;
pub mod ipam;
pub mod link;
pub mod nat;

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use config::{BridgeConf, ConfigError};
use ipam::{DiskStore, IpNet, Ipam, IpamError, Owner};
use link::{LinkError, Links, VethSpec};
use nat::{Nat, NatError, NatSpec};

/// CNI error codes (spec 1.0 "Error" section; 100 and up are this plugin's).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const INVALID_CONFIG: u32 = 7;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const ADDRESSES_EXHAUSTED: u32 = 100;
    pub const LINK: u32 = 101;
    pub const NAT: u32 = 102;
    pub const CHECK_FAILED: u32 = 103;
}

/// A CNI error, printed as the spec's error JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error code {code})")]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl PluginError {
    pub fn new(code: u32, msg: impl Into<String>) -> PluginError {
        PluginError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl From<ConfigError> for PluginError {
    fn from(e: ConfigError) -> Self {
        PluginError::new(code::INVALID_CONFIG, e.to_string())
    }
}

impl From<IpamError> for PluginError {
    fn from(e: IpamError) -> Self {
        let code = match e {
            IpamError::Exhausted { .. } => code::ADDRESSES_EXHAUSTED,
            IpamError::Store { .. } => code::IO,
        };
        PluginError::new(code, e.to_string())
    }
}

impl From<LinkError> for PluginError {
    fn from(e: LinkError) -> Self {
        PluginError::new(code::LINK, e.to_string())
    }
}

impl From<NatError> for PluginError {
    fn from(e: NatError) -> Self {
        PluginError::new(code::NAT, e.to_string())
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub if_name: String,
}

impl CniEnv {
    pub fn from_env() -> CniEnv {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        CniEnv {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: Some(var("CNI_NETNS"))
                .filter(|n| !n.is_empty())
                .map(PathBuf::from),
            if_name: var("CNI_IFNAME"),
        }
    }

    fn owner(&self) -> Result<Owner, PluginError> {
        let valid_id = !self.container_id.is_empty()
            && self
                .container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_id {
            return Err(PluginError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {:?} is missing or invalid",
                    self.container_id
                ),
            ));
        }
        if !config::valid_ifname(&self.if_name) {
            return Err(PluginError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_IFNAME {:?} is missing or not a valid interface name",
                    self.if_name
                ),
            ));
        }
        Ok(Owner {
            container_id: self.container_id.clone(),
            if_name: self.if_name.clone(),
        })
    }
}

/// FNV-1a: stable across Rust releases, unlike the std hasher.
fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host end's name for an attachment.
pub fn veth_name(owner: &Owner) -> String {
    let h = fnv64(&format!("{}/{}", owner.container_id, owner.if_name)) & 0xffff_ffff_ffff;
    format!("bb{h:012x}")
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn nat_table(conf: &BridgeConf) -> String {
    format!("berth-{}", sanitize(&conf.name))
}

fn tag(owner: &Owner) -> String {
    format!("berth:{}/{}", owner.container_id, owner.if_name)
}

/// The NAT of an attachment with `addresses` (address, prefix length): the first address of
/// each family, as the default routes use the first range set of each.
fn nat_spec(
    conf: &BridgeConf,
    owner: &Owner,
    addresses: impl Iterator<Item = (IpAddr, u8)>,
) -> NatSpec {
    let mut first: Vec<(IpAddr, IpNet)> = Vec::new();
    for (addr, prefix) in addresses {
        if !first.iter().any(|(a, _)| a.is_ipv6() == addr.is_ipv6()) {
            first.push((addr, IpNet { addr, prefix }.network()));
        }
    }
    NatSpec {
        table: nat_table(conf),
        tag: tag(owner),
        bridge: conf.bridge.clone(),
        addresses: first,
        masquerade: conf.ip_masq,
        ports: conf.port_mappings.clone(),
    }
}

fn alias_prefix(conf: &BridgeConf) -> String {
    format!("berth:{}:", sanitize(&conf.name))
}

/// The plugin: CNI commands over the link and NAT seams.
pub struct Plugin<L, N> {
    pub links: L,
    pub nat: N,
}

impl<L: Links, N: Nat> Plugin<L, N> {
    /// Runs one command; `Ok(Some(json))` is printed on stdout.
    pub fn run(&self, env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, PluginError> {
        match env.command.as_str() {
            "VERSION" => Ok(Some(json!({
                "cniVersion": latest_version(),
                "supportedVersions": crate::SUPPORTED_CNI_VERSIONS,
            }))),
            "ADD" => self.add(env, &BridgeConf::parse(stdin)?).map(Some),
            "DEL" => self.del(env, &BridgeConf::parse(stdin)?).map(|()| None),
            "CHECK" => self.check(env, &BridgeConf::parse(stdin)?).map(|()| None),
            "STATUS" => status(&BridgeConf::parse(stdin)?).map(|()| None),
            "GC" => self.gc(stdin).map(|()| None),
            "" => Err(PluginError::new(
                code::INVALID_ENV,
                "CNI_COMMAND is not set",
            )),
            other => Err(PluginError::new(
                code::INVALID_ENV,
                format!("unknown CNI_COMMAND {other:?}"),
            )),
        }
    }

    fn ipam(conf: &BridgeConf) -> Ipam<DiskStore> {
        Ipam::new(
            DiskStore::new(&conf.lease_dir),
            &conf.name,
            conf.range_sets.clone(),
            conf.reserved.clone(),
        )
    }

    fn add(&self, env: &CniEnv, conf: &BridgeConf) -> Result<Value, PluginError> {
        let owner = env.owner()?;
        let netns = env
            .netns
            .clone()
            .ok_or_else(|| PluginError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
        if !netns.exists() {
            return Err(PluginError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {} does not exist", netns.display()),
            ));
        }
        let ipam = Self::ipam(conf);
        let allocs = ipam.allocate(&owner)?;
        let host_name = veth_name(&owner);
        let undo = |e: PluginError| {
            let _ = self.nat.del(&nat_table(conf), &tag(&owner));
            let _ = self.links.del_host_link(&host_name);
            let _ = ipam.release(&owner);
            e
        };
        let bridge_addrs: Vec<_> = allocs.iter().map(|a| (a.gateway, a.subnet)).collect();
        // One default route per family: the first range set's gateway of each.
        let mut gateways: Vec<IpAddr> = Vec::new();
        for a in &allocs {
            if !gateways.iter().any(|g| g.is_ipv6() == a.gateway.is_ipv6()) {
                gateways.push(a.gateway);
            }
        }
        let bridge_mac = self
            .links
            .ensure_bridge(&conf.bridge, conf.mtu, &bridge_addrs)
            .map_err(|e| undo(e.into()))?;
        let spec = VethSpec {
            bridge: conf.bridge.clone(),
            host_name: host_name.clone(),
            netns: netns.clone(),
            if_name: owner.if_name.clone(),
            mtu: conf.mtu,
            hairpin: conf.hairpin,
            alias: format!(
                "{}{}/{}",
                alias_prefix(conf),
                owner.container_id,
                owner.if_name
            ),
            addresses: allocs.iter().map(|a| (a.address, a.subnet)).collect(),
            gateways: gateways.clone(),
        };
        let macs = self.links.add_veth(&spec).map_err(|e| undo(e.into()))?;
        let nat = nat_spec(
            conf,
            &owner,
            allocs.iter().map(|a| (a.address, a.subnet.prefix)),
        );
        if nat.has_rules() {
            self.nat.add(&nat).map_err(|e| undo(e.into()))?;
        }
        let legacy = conf.legacy_result();
        let ips: Vec<Value> = allocs
            .iter()
            .map(|a| {
                let mut ip = json!({
                    "address": format!("{}/{}", a.address, a.subnet.prefix),
                    "gateway": a.gateway.to_string(),
                    "interface": 2,
                });
                if legacy {
                    ip["version"] = json!(if a.address.is_ipv6() { "6" } else { "4" });
                }
                ip
            })
            .collect();
        let mut result = json!({
            "cniVersion": conf.cni_version,
            "interfaces": [
                {"name": conf.bridge, "mac": bridge_mac},
                {"name": host_name, "mac": macs.host},
                {"name": owner.if_name, "mac": macs.container, "sandbox": netns},
            ],
            "ips": ips,
            "routes": gateways
                .iter()
                .map(|gw| {
                    let dst = if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" };
                    json!({"dst": dst, "gw": gw.to_string()})
                })
                .collect::<Vec<_>>(),
        });
        if let Some(dns) = &conf.dns {
            result["dns"] = dns.clone();
        }
        Ok(result)
    }

    fn del(&self, env: &CniEnv, conf: &BridgeConf) -> Result<(), PluginError> {
        let owner = env.owner()?;
        let host_name = veth_name(&owner);
        // The address is released last, so it is never handed out while still configured.
        self.links.del_host_link(&host_name)?;
        self.nat.del(&nat_table(conf), &tag(&owner))?;
        Self::ipam(conf).release(&owner)?;
        Ok(())
    }

    fn check(&self, env: &CniEnv, conf: &BridgeConf) -> Result<(), PluginError> {
        let owner = env.owner()?;
        let netns = env
            .netns
            .clone()
            .ok_or_else(|| PluginError::new(code::INVALID_ENV, "CNI_NETNS is not set"))?;
        let prev = conf.prev_result.as_ref().ok_or_else(|| {
            PluginError::new(
                code::INVALID_CONFIG,
                "invalid config: prevResult: missing (CHECK needs the ADD result)",
            )
        })?;
        let failed = |m: String| PluginError::new(code::CHECK_FAILED, m);
        let expected = expected_ips(prev, &owner.if_name);
        if expected.is_empty() {
            return Err(failed(format!(
                "prevResult has no address for {}",
                owner.if_name
            )));
        }
        let host_name = veth_name(&owner);
        match self.links.host_link(&host_name)? {
            Some(l) if l.master.as_deref() == Some(conf.bridge.as_str()) => {}
            Some(l) => {
                return Err(failed(format!(
                    "host veth {host_name} is attached to {:?}, not to bridge {}",
                    l.master, conf.bridge
                )));
            }
            None => return Err(failed(format!("host veth {host_name} does not exist"))),
        }
        let iface = self
            .links
            .pod_iface(&netns, &owner.if_name)?
            .ok_or_else(|| {
                failed(format!(
                    "{} does not exist in {}",
                    owner.if_name,
                    netns.display()
                ))
            })?;
        let leased = Self::ipam(conf).leased(&owner)?;
        for (ip, prefix, gw) in &expected {
            if !iface.addresses.contains(&(*ip, *prefix)) {
                return Err(failed(format!(
                    "{} in {} lacks address {ip}/{prefix} (has {:?})",
                    owner.if_name,
                    netns.display(),
                    iface.addresses
                )));
            }
            if !leased.contains(ip) {
                return Err(failed(format!(
                    "no lease for {ip} held by {}/{}",
                    owner.container_id, owner.if_name
                )));
            }
            if let Some(gw) = gw
                && !iface.default_gateways.is_empty()
                && !iface.default_gateways.contains(gw)
            {
                return Err(failed(format!(
                    "default route via {gw} missing in {}",
                    netns.display()
                )));
            }
        }
        if expected.iter().any(|(_, _, gw)| gw.is_some()) && iface.default_gateways.is_empty() {
            return Err(failed(format!("no default route in {}", netns.display())));
        }
        let nat = nat_spec(conf, &owner, expected.iter().map(|(ip, p, _)| (*ip, *p)));
        if nat.has_rules() {
            let t = nat.tag;
            if !self.nat.tags(&nat_table(conf))?.contains(&t) {
                return Err(failed(format!(
                    "no nftables rule tagged {t} in table {}",
                    nat_table(conf)
                )));
            }
        }
        Ok(())
    }

    /// CNI GC: removes leases, veths and NAT rules of attachments not in
    /// `cni.dev/valid-attachments`.
    fn gc(&self, stdin: &[u8]) -> Result<(), PluginError> {
        let conf = BridgeConf::parse(stdin)?;
        let v: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
        let valid: Vec<Owner> = v
            .get("cni.dev/valid-attachments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| {
                        Some(Owner {
                            container_id: x.get("containerID")?.as_str()?.to_string(),
                            if_name: x.get("ifname")?.as_str()?.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let is_valid = |o: &Owner| valid.contains(o);
        let table = nat_table(&conf);
        let prefix = alias_prefix(&conf);
        for (name, alias) in self.links.host_links_with_alias(&prefix)? {
            let owner = alias
                .strip_prefix(&prefix)
                .and_then(|r| r.rsplit_once('/'))
                .map(|(c, i)| Owner {
                    container_id: c.to_string(),
                    if_name: i.to_string(),
                });
            if owner.as_ref().is_some_and(|o| !is_valid(o)) {
                self.links.del_host_link(&name)?;
            }
        }
        let valid_tags: Vec<String> = valid.iter().map(tag).collect();
        let mut stale: Vec<String> = self
            .nat
            .tags(&table)?
            .into_iter()
            .filter(|t| !valid_tags.contains(t))
            .collect();
        stale.sort_unstable();
        stale.dedup();
        for t in stale {
            self.nat.del(&table, &t)?;
        }
        Self::ipam(&conf).retain(is_valid)?;
        Ok(())
    }
}

/// STATUS: ready when the lease directory is usable.
fn status(conf: &BridgeConf) -> Result<(), PluginError> {
    std::fs::create_dir_all(&conf.lease_dir).map_err(|e| {
        PluginError::new(
            code::NOT_AVAILABLE,
            format!("lease dir {}: {e}", conf.lease_dir.display()),
        )
    })
}

/// The addresses (with prefix and gateway) a result gives the interface named `if_name`: those
/// whose `interface` index points at it, or all when no index is given.
fn expected_ips(result: &Value, if_name: &str) -> Vec<(IpAddr, u8, Option<IpAddr>)> {
    let ifaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter(|ip| match ip.get("interface").and_then(Value::as_u64) {
                    Some(i) => {
                        ifaces
                            .get(i as usize)
                            .and_then(|x| x.get("name"))
                            .and_then(Value::as_str)
                            == Some(if_name)
                    }
                    None => true,
                })
                .filter_map(|ip| {
                    let (a, p) = ip.get("address")?.as_str()?.split_once('/')?;
                    let gw = ip
                        .get("gateway")
                        .and_then(Value::as_str)
                        .and_then(|g| g.parse().ok());
                    Some((a.parse().ok()?, p.parse().ok()?, gw))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn latest_version() -> &'static str {
    crate::SUPPORTED_CNI_VERSIONS
        .last()
        .copied()
        .unwrap_or("1.1.0")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;

    use super::link::{HostLink, PodIface, VethMacs};
    use super::*;

    /// Links that exist only in memory: records what was asked.
    #[derive(Default)]
    struct FakeLinks {
        calls: RefCell<Vec<String>>,
        veth: RefCell<Option<VethSpec>>,
        fail_veth: bool,
    }

    impl Links for FakeLinks {
        fn ensure_bridge(
            &self,
            bridge: &str,
            _mtu: Option<u32>,
            gateways: &[(IpAddr, ipam::IpNet)],
        ) -> Result<String, LinkError> {
            self.calls
                .borrow_mut()
                .push(format!("bridge {bridge} {}", gateways[0].0));
            Ok("02:00:00:00:00:01".into())
        }
        fn add_veth(&self, spec: &VethSpec) -> Result<VethMacs, LinkError> {
            self.calls
                .borrow_mut()
                .push(format!("veth {}", spec.host_name));
            if self.fail_veth {
                return Err(LinkError::Netlink {
                    what: "veth".into(),
                    source: std::io::Error::other("boom"),
                });
            }
            *self.veth.borrow_mut() = Some(spec.clone());
            Ok(VethMacs {
                host: "02:00:00:00:00:02".into(),
                container: "02:00:00:00:00:03".into(),
            })
        }
        fn del_host_link(&self, name: &str) -> Result<(), LinkError> {
            self.calls.borrow_mut().push(format!("del {name}"));
            let mut v = self.veth.borrow_mut();
            if v.as_ref().is_some_and(|v| v.host_name == name) {
                *v = None;
            }
            Ok(())
        }
        fn host_link(&self, name: &str) -> Result<Option<HostLink>, LinkError> {
            Ok(self
                .veth
                .borrow()
                .as_ref()
                .filter(|v| v.host_name == name)
                .map(|v| HostLink {
                    master: Some(v.bridge.clone()),
                    alias: Some(v.alias.clone()),
                }))
        }
        fn pod_iface(&self, _netns: &Path, if_name: &str) -> Result<Option<PodIface>, LinkError> {
            Ok(self
                .veth
                .borrow()
                .as_ref()
                .filter(|v| v.if_name == if_name)
                .map(|v| PodIface {
                    addresses: v.addresses.iter().map(|(a, n)| (*a, n.prefix)).collect(),
                    default_gateways: v.gateways.clone(),
                }))
        }
        fn host_links_with_alias(&self, prefix: &str) -> Result<Vec<(String, String)>, LinkError> {
            Ok(self
                .veth
                .borrow()
                .iter()
                .filter(|v| v.alias.starts_with(prefix))
                .map(|v| (v.host_name.clone(), v.alias.clone()))
                .collect())
        }
    }

    #[derive(Default)]
    struct FakeNat {
        rules: RefCell<Vec<String>>,
        added: RefCell<Vec<NatSpec>>,
    }

    impl Nat for FakeNat {
        fn add(&self, spec: &NatSpec) -> Result<(), NatError> {
            self.rules.borrow_mut().push(spec.tag.clone());
            self.added.borrow_mut().push(spec.clone());
            Ok(())
        }
        fn del(&self, _table: &str, tag: &str) -> Result<(), NatError> {
            self.rules.borrow_mut().retain(|t| t != tag);
            Ok(())
        }
        fn tags(&self, _table: &str) -> Result<Vec<String>, NatError> {
            Ok(self.rules.borrow().clone())
        }
    }

    struct Setup {
        dir: tempfile::TempDir,
        plugin: Plugin<FakeLinks, FakeNat>,
    }

    impl Setup {
        fn new(fail_veth: bool) -> Setup {
            Setup {
                dir: tempfile::tempdir().unwrap(),
                plugin: Plugin {
                    links: FakeLinks {
                        fail_veth,
                        ..Default::default()
                    },
                    nat: FakeNat::default(),
                },
            }
        }

        fn env(&self, command: &str, id: &str) -> CniEnv {
            CniEnv {
                command: command.into(),
                container_id: id.into(),
                // Any existing path stands for the netns: the fake links never open it.
                netns: Some(self.dir.path().to_path_buf()),
                if_name: "eth0".into(),
            }
        }

        fn conf(&self, version: &str, extra: Value) -> Vec<u8> {
            let mut c = json!({"cniVersion": version, "name": "pods", "type": "berth-bridge",
                "subnet": "10.7.0.0/24", "dataDir": self.dir.path().join("leases"),
                "dns": {"nameservers": ["10.96.0.10"]}});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            c.to_string().into_bytes()
        }

        fn leases(&self) -> Vec<String> {
            std::fs::read_dir(self.dir.path().join("leases/pods"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.parse::<IpAddr>().is_ok())
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    #[test]
    fn add_returns_a_cni_1_0_result_and_del_undoes_it_idempotently() {
        let s = Setup::new(false);
        let conf = s.conf("1.0.0", json!({"ipMasq": true}));
        let r = s.plugin.run(&s.env("ADD", "c1"), &conf).unwrap().unwrap();
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][0]["name"], "berth0");
        assert_eq!(
            r["interfaces"][1]["name"],
            veth_name(&s.env("", "c1").owner().unwrap())
        );
        assert_eq!(r["interfaces"][2]["name"], "eth0");
        assert_eq!(
            r["interfaces"][2]["sandbox"],
            s.dir.path().display().to_string()
        );
        assert_eq!(r["ips"][0]["address"], "10.7.0.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.7.0.1");
        assert_eq!(r["ips"][0]["interface"], 2);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(
            r["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "10.7.0.1"})
        );
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert_eq!(s.leases(), ["10.7.0.2"]);
        assert_eq!(*s.plugin.nat.rules.borrow(), ["berth:c1/eth0"]);

        let mut check = serde_json::from_slice::<Value>(&conf).unwrap();
        check["prevResult"] = r.clone();
        let check = check.to_string().into_bytes();
        s.plugin.run(&s.env("CHECK", "c1"), &check).unwrap();

        for _ in 0..2 {
            assert_eq!(s.plugin.run(&s.env("DEL", "c1"), &conf).unwrap(), None);
            assert!(s.leases().is_empty());
            assert!(s.plugin.nat.rules.borrow().is_empty());
            assert!(s.plugin.links.veth.borrow().is_none());
        }
        let err = s.plugin.run(&s.env("CHECK", "c1"), &check).unwrap_err();
        assert_eq!(err.code, code::CHECK_FAILED, "{err}");
    }

    #[test]
    fn nat_covers_the_first_address_of_each_family() {
        let s = Setup::new(false);
        let ranges = json!({"ranges": [[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd00:7::/64"}],
            [{"subnet": "fd00:8::/64"}]]});
        let conf = s.conf("1.0.0", json!({"ipMasq": true, "ipam": ranges}));
        s.plugin.run(&s.env("ADD", "c1"), &conf).unwrap().unwrap();
        let added = s.plugin.nat.added.borrow();
        let addrs: Vec<String> = added[0]
            .addresses
            .iter()
            .map(|(a, n)| format!("{a} in {}/{}", n.addr, n.prefix))
            .collect();
        assert_eq!(
            addrs,
            ["10.7.0.2 in 10.7.0.0/24", "fd00:7::2 in fd00:7::/64"]
        );
    }

    #[test]
    fn ipv6_only_pod_gets_no_nat_for_an_ipv4_host_ip_and_checks_clean() {
        let s = Setup::new(false);
        let conf = s.conf(
            "1.0.0",
            json!({"ipam": {"ranges": [[{"subnet": "fd00:7::/64"}]]},
                "capabilities": {"portMappings": true},
                "runtimeConfig": {"portMappings": [
                    {"hostPort": 8080, "containerPort": 80, "hostIP": "192.0.2.1"}]}}),
        );
        let r = s.plugin.run(&s.env("ADD", "c1"), &conf).unwrap().unwrap();
        assert!(s.plugin.nat.added.borrow().is_empty());
        let mut check = serde_json::from_slice::<Value>(&conf).unwrap();
        check["prevResult"] = r;
        s.plugin
            .run(&s.env("CHECK", "c1"), &check.to_string().into_bytes())
            .unwrap();
    }

    #[test]
    fn legacy_versions_get_ip_versions_in_the_result() {
        let s = Setup::new(false);
        let r = s
            .plugin
            .run(&s.env("ADD", "c1"), &s.conf("0.3.1", json!({})))
            .unwrap()
            .unwrap();
        assert_eq!(r["cniVersion"], "0.3.1");
        assert_eq!(r["ips"][0]["version"], "4");
    }

    #[test]
    fn failed_veth_releases_the_address() {
        let s = Setup::new(true);
        let err = s
            .plugin
            .run(&s.env("ADD", "c1"), &s.conf("1.0.0", json!({})))
            .unwrap_err();
        assert_eq!(err.code, code::LINK);
        assert!(err.msg.contains("boom"), "{err}");
        assert!(s.leases().is_empty(), "{:?}", s.leases());
        let calls = s.plugin.links.calls.borrow();
        assert!(calls.last().unwrap().starts_with("del bb"), "{calls:?}");
    }

    #[test]
    fn bad_input_gets_the_spec_error_codes() {
        let s = Setup::new(false);
        let err = s
            .plugin
            .run(&s.env("ADD", "c1"), &s.conf("1.0.0", json!({"mtu": "big"})))
            .unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains("mtu"), "{err}");
        let json = err.to_json("1.0.0");
        assert_eq!(json["code"], 7);

        let conf = s.conf("1.0.0", json!({}));
        for env in [
            s.env("ADD", ""),
            s.env("ADD", "bad id/with slash"),
            CniEnv {
                if_name: String::new(),
                ..s.env("DEL", "c1")
            },
            CniEnv {
                netns: None,
                ..s.env("ADD", "c1")
            },
            CniEnv {
                netns: Some("/nonexistent/netns".into()),
                ..s.env("ADD", "c1")
            },
            s.env("", "c1"),
            s.env("FROB", "c1"),
        ] {
            let err = s.plugin.run(&env, &conf).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{env:?}: {err}");
        }
        let err = s.plugin.run(&s.env("CHECK", "c1"), &conf).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains("prevResult"), "{err}");
        assert!(s.leases().is_empty());
    }

    #[test]
    fn exhausted_range_is_reported() {
        let s = Setup::new(false);
        let conf = s.conf(
            "1.0.0",
            json!({"ipam": {"ranges": [[{"subnet": "10.7.0.0/24", "rangeStart": "10.7.0.9", "rangeEnd": "10.7.0.9"}]]}}),
        );
        s.plugin.run(&s.env("ADD", "c1"), &conf).unwrap();
        let err = s.plugin.run(&s.env("ADD", "c2"), &conf).unwrap_err();
        assert_eq!(err.code, code::ADDRESSES_EXHAUSTED);
        assert!(err.msg.contains("10.7.0.9-10.7.0.9"), "{err}");
    }

    #[test]
    fn version_status_and_gc() {
        let s = Setup::new(false);
        let v = s.plugin.run(&s.env("VERSION", ""), b"").unwrap().unwrap();
        assert_eq!(v["supportedVersions"][0], "0.3.0");
        let conf = s.conf("1.1.0", json!({"ipMasq": true}));
        s.plugin.run(&s.env("STATUS", ""), &conf).unwrap();
        s.plugin.run(&s.env("ADD", "gone"), &conf).unwrap();
        let mut gc = serde_json::from_slice::<Value>(&conf).unwrap();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "kept", "ifname": "eth0"}]);
        s.plugin
            .run(&s.env("GC", ""), gc.to_string().as_bytes())
            .unwrap();
        assert!(s.leases().is_empty(), "{:?}", s.leases());
        assert!(s.plugin.nat.rules.borrow().is_empty());
        assert!(s.plugin.links.veth.borrow().is_none());
    }

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let o = |id: &str, ifn: &str| Owner {
            container_id: id.into(),
            if_name: ifn.into(),
        };
        let h = veth_name(&o("abc", "eth0"));
        assert!(h.len() <= 15 && h.starts_with("bb"), "{h}");
        assert_eq!(veth_name(&o("abc", "eth0")), h);
        assert_ne!(veth_name(&o("abc", "eth1")), h);
        assert_ne!(veth_name(&o("abd", "eth0")), h);
    }
}
