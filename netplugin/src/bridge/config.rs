//! The berth-bridge network configuration (the JSON a runtime writes on the plugin's stdin),
//! parsed by hand so that every error names the field at fault (CNI error code 7).
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0", "name": "pods", "type": "berth-bridge",
//!   "bridge": "berth0", "mtu": 1500, "hairpinMode": false, "ipMasq": true,
//!   "subnet": "10.88.0.0/16",
//!   "ipam": {"ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.0.10",
//!            "rangeEnd": "10.88.0.250", "gateway": "10.88.0.1"}]],
//!            "reserved": ["10.88.0.5"], "dataDir": "/var/lib/berth/cni"},
//!   "dns": {"nameservers": ["10.96.0.10"]},
//!   "capabilities": {"portMappings": true},
//!   "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
//! }
//! ```
//!
//! `subnet` may be given at the top level or in `ipam` as a shorthand for one range covering
//! the subnet; `dataDir` may be given at the top level or in `ipam`; leases live in
//! `<dataDir>/<name>` (host-local's layout), `dataDir` defaulting to `/var/lib/berth/cni`.
//!
//! Dual stack: each range set yields one address, so `[[{"subnet": "10.88.0.0/16"}],
//! [{"subnet": "fd00:88::/64"}]]` gives a pod one IPv4 and one IPv6 address, each with a
//! default route via its range's gateway. Masquerade and host ports apply to the IPv4 address.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::bridge::ipam::{IpNet, Range, to_u128};

/// The lease directory's parent when the config names none.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth/cni";
pub const DEFAULT_BRIDGE: &str = "berth0";

/// A configuration error: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One host port (portmap semantics: `hostIP` empty, 0.0.0.0 or :: means every local address of
/// both families; an IPv4 or IPv6 `hostIP` maps that family only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
}

/// A validated berth-bridge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConf {
    pub cni_version: String,
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub ip_masq: bool,
    /// Where this network's leases live: `<dataDir>/<name>`.
    pub lease_dir: PathBuf,
    /// Range sets: one address is allocated from each set.
    pub range_sets: Vec<Vec<Range>>,
    pub reserved: Vec<IpAddr>,
    pub dns: Option<Value>,
    pub port_mappings: Vec<PortMapping>,
    pub prev_result: Option<Value>,
}

impl BridgeConf {
    pub fn parse(bytes: &[u8]) -> Result<BridgeConf, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| err("(stdin)", format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err("(stdin)", "not a JSON object"))?;
        let cni_version = req_str(&v, "cniVersion")?;
        if !crate::SUPPORTED_CNI_VERSIONS.contains(&cni_version.as_str()) {
            return Err(err(
                "cniVersion",
                format!(
                    "unsupported version {cni_version:?} (supported: {})",
                    crate::SUPPORTED_CNI_VERSIONS.join(", ")
                ),
            ));
        }
        let name = req_str(&v, "name")?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(err("name", format!("{name:?} is not a valid network name")));
        }
        let bridge = opt_str(&v, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !valid_ifname(&bridge) {
            return Err(err(
                "bridge",
                format!(
                    "{bridge:?} is not a valid interface name (1 to 15 characters, no '/', ':' or space)"
                ),
            ));
        }
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => None,
            Some(m) => match m.as_u64() {
                Some(m) if (68..=65535).contains(&m) => Some(m as u32),
                _ => {
                    return Err(err(
                        "mtu",
                        format!("{m} is not an MTU between 68 and 65535"),
                    ));
                }
            },
        };
        let hairpin = opt_bool(&v, "hairpinMode")?.unwrap_or(false);
        let ip_masq = opt_bool(&v, "ipMasq")?.unwrap_or(false);
        let ipam = match obj.get("ipam") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(i @ Value::Object(_)) => i.clone(),
            Some(_) => return Err(err("ipam", "not an object")),
        };
        let data_dir = match (
            opt_str(&ipam, "dataDir").map_err(|e| prefix("ipam", e))?,
            opt_str(&v, "dataDir")?,
        ) {
            (Some(d), _) | (None, Some(d)) => PathBuf::from(d),
            (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let range_sets = parse_ranges(&v, &ipam)?;
        let reserved = match ipam.get("reserved") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    r.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| err(format!("ipam.reserved[{i}]"), "not an IP address"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(err("ipam.reserved", "not a list of addresses")),
        };
        let dns = obj.get("dns").filter(|d| !d.is_null()).cloned();
        let port_mappings = parse_port_mappings(&v)?;
        let prev_result = obj.get("prevResult").filter(|p| !p.is_null()).cloned();
        Ok(BridgeConf {
            lease_dir: data_dir.join(&name),
            cni_version,
            name,
            bridge,
            mtu,
            hairpin,
            ip_masq,
            range_sets,
            reserved,
            dns,
            port_mappings,
            prev_result,
        })
    }

    /// Whether results use the pre-1.0 layout (`version` on each IP).
    pub fn legacy_result(&self) -> bool {
        self.cni_version.starts_with("0.")
    }
}

fn prefix(p: &str, e: ConfigError) -> ConfigError {
    err(format!("{p}.{}", e.field), e.message)
}

fn req_str(v: &Value, key: &str) -> Result<String, ConfigError> {
    opt_str(v, key)?.ok_or_else(|| err(key, "missing"))
}

fn opt_str(v: &Value, key: &str) -> Result<Option<String>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(key, format!("expected a string, got {other}"))),
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>, ConfigError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(err(key, format!("expected true or false, got {other}"))),
    }
}

pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

fn parse_ranges(top: &Value, ipam: &Value) -> Result<Vec<Vec<Range>>, ConfigError> {
    if let Some(ranges) = ipam.get("ranges").filter(|r| !r.is_null()) {
        let sets = ranges
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| err("ipam.ranges", "expected a non-empty list of range lists"))?;
        let mut out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let field = format!("ipam.ranges[{i}]");
            let set = set
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| err(&field, "expected a non-empty list of ranges"))?;
            let mut ranges = Vec::new();
            for (j, r) in set.iter().enumerate() {
                ranges.push(parse_range(&format!("{field}[{j}]"), r)?);
            }
            out.push(ranges);
        }
        return Ok(out);
    }
    for (field, v) in [("ipam.subnet", ipam), ("subnet", top)] {
        if let Some(subnet) = v.get("subnet").filter(|s| !s.is_null()) {
            let range = serde_json::json!({"subnet": subnet, "gateway": v.get("gateway")});
            let range = parse_range(
                field.trim_end_matches(".subnet").trim_end_matches("subnet"),
                &range,
            )
            .map_err(|e| err(field, e.message))?;
            return Ok(vec![vec![range]]);
        }
    }
    Err(err(
        "subnet",
        "missing: give \"subnet\" or \"ipam\": {\"ranges\": [[{\"subnet\": ...}]]}",
    ))
}

fn parse_range(field: &str, r: &Value) -> Result<Range, ConfigError> {
    let f = |k: &str| {
        if field.is_empty() {
            k.to_string()
        } else {
            format!("{field}.{k}")
        }
    };
    let ip = |k: &str| -> Result<Option<IpAddr>, ConfigError> {
        match r.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .parse()
                .map(Some)
                .map_err(|_| err(f(k), format!("{s:?} is not an IP address"))),
            Some(other) => Err(err(
                f(k),
                format!("expected an address string, got {other}"),
            )),
        }
    };
    let subnet = match r.get("subnet") {
        Some(Value::String(s)) => IpNet::parse(s).map_err(|m| err(f("subnet"), m))?,
        _ => return Err(err(f("subnet"), "missing")),
    };
    let max_prefix = if subnet.is_ipv6() { 126 } else { 30 };
    if subnet.prefix > max_prefix {
        return Err(err(
            f("subnet"),
            format!("{subnet} is too small (a /{max_prefix} or larger is needed)"),
        ));
    }
    let first = subnet.first_host();
    let last = subnet.last_host();
    let inside = |k: &str, a: IpAddr| {
        if subnet.contains(a) {
            Ok(a)
        } else {
            Err(err(f(k), format!("{a} is outside {subnet}")))
        }
    };
    let start = ip("rangeStart")?
        .map(|a| inside("rangeStart", a))
        .transpose()?
        .unwrap_or(first);
    let end = ip("rangeEnd")?
        .map(|a| inside("rangeEnd", a))
        .transpose()?
        .unwrap_or(last);
    if to_u128(start) > to_u128(end) {
        return Err(err(
            f("rangeEnd"),
            format!("{end} is before rangeStart {start}"),
        ));
    }
    let gateway = ip("gateway")?
        .map(|a| inside("gateway", a))
        .transpose()?
        .unwrap_or(first);
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_port_mappings(v: &Value) -> Result<Vec<PortMapping>, ConfigError> {
    let enabled = v
        .pointer("/capabilities/portMappings")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(list) = v
        .pointer("/runtimeConfig/portMappings")
        .filter(|p| !p.is_null())
    else {
        return Ok(Vec::new());
    };
    if !enabled {
        return Ok(Vec::new());
    }
    let list = list
        .as_array()
        .ok_or_else(|| err("runtimeConfig.portMappings", "expected a list"))?;
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let field = |k: &str| format!("runtimeConfig.portMappings[{i}].{k}");
        let port = |k: &str| -> Result<u16, ConfigError> {
            m.get(k)
                .and_then(Value::as_u64)
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| err(field(k), "expected a port between 1 and 65535"))
        };
        let protocol = match m
            .get("protocol")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
        {
            None => Protocol::Tcp,
            Some(p) if p == "tcp" => Protocol::Tcp,
            Some(p) if p == "udp" => Protocol::Udp,
            Some(p) => return Err(err(field("protocol"), format!("{p:?} is not tcp or udp"))),
        };
        let host_ip = match m.get("hostIP").and_then(Value::as_str) {
            None | Some("") => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| err(field("hostIP"), format!("{s:?} is not an IP address")))?,
            )
            .filter(|ip| !ip.is_unspecified()),
        };
        out.push(PortMapping {
            host_port: port("hostPort")?,
            container_port: port("containerPort")?,
            protocol,
            host_ip,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn parse(v: Value) -> Result<BridgeConf, ConfigError> {
        BridgeConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn top_level_subnet_shorthand_gets_defaults() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.0.0", "name": "pods", "type": "berth-bridge", "subnet": "10.44.0.0/24"
        }))
        .unwrap();
        assert_eq!(c.bridge, "berth0");
        assert_eq!(c.lease_dir, PathBuf::from("/var/lib/berth/cni/pods"));
        let r = &c.range_sets[0][0];
        assert_eq!(r.gateway, IpAddr::V4(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(r.start, IpAddr::V4(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(r.end, IpAddr::V4(Ipv4Addr::new(10, 44, 0, 254)));
        assert!(!c.hairpin && !c.ip_masq && c.mtu.is_none());
    }

    #[test]
    fn host_local_style_ranges_and_port_mappings() {
        let c = parse(serde_json::json!({
            "cniVersion": "0.4.0", "name": "pods", "bridge": "br-x", "mtu": 1400,
            "hairpinMode": true, "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": "/tmp/d", "reserved": ["10.1.0.7"],
                     "ranges": [[{"subnet": "10.1.0.0/16", "rangeStart": "10.1.0.5",
                                  "rangeEnd": "10.1.0.9", "gateway": "10.1.0.254"}]]},
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "UDP", "hostIP": "127.0.0.1"},
                {"hostPort": 8081, "containerPort": 81},
                {"hostPort": 8082, "containerPort": 82, "hostIP": "fd00::1"},
                {"hostPort": 8083, "containerPort": 83, "hostIP": "::"}
            ]}
        }))
        .unwrap();
        assert!(c.legacy_result());
        assert_eq!(c.lease_dir, PathBuf::from("/tmp/d/pods"));
        assert_eq!(c.mtu, Some(1400));
        let r = &c.range_sets[0][0];
        assert_eq!(
            (r.start, r.end),
            ("10.1.0.5".parse().unwrap(), "10.1.0.9".parse().unwrap())
        );
        assert_eq!(r.gateway, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 254)));
        assert_eq!(c.reserved, vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 7))]);
        assert_eq!(c.port_mappings.len(), 4);
        assert_eq!(c.port_mappings[0].protocol, Protocol::Udp);
        assert_eq!(c.port_mappings[0].host_ip, Some(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(c.port_mappings[1].protocol, Protocol::Tcp);
        assert_eq!(c.port_mappings[2].host_ip, "fd00::1".parse().ok());
        assert_eq!(
            c.port_mappings[3].host_ip, None,
            "unspecified: every address"
        );
    }

    #[test]
    fn dual_stack_ranges_parse() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.1.0", "name": "pods",
            "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:5::/64"}]],
                     "reserved": ["fd00:5::9"]}
        }))
        .unwrap();
        let v6 = &c.range_sets[1][0];
        assert_eq!(v6.gateway.to_string(), "fd00:5::1");
        assert_eq!(v6.end.to_string(), "fd00:5::ffff:ffff:ffff:fffe");
        assert_eq!(c.reserved[0].to_string(), "fd00:5::9");
    }

    #[test]
    fn port_mappings_need_the_capability() {
        let c = parse(serde_json::json!({
            "cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/24",
            "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1}]}
        }))
        .unwrap();
        assert!(c.port_mappings.is_empty());
    }

    #[test]
    fn invalid_fields_are_named() {
        let base = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/24"});
        let cases: Vec<(Value, &str)> = vec![
            (
                serde_json::json!({"name": "n", "subnet": "10.1.0.0/24"}),
                "cniVersion",
            ),
            (
                serde_json::json!({"cniVersion": "2.0.0", "name": "n", "subnet": "10.1.0.0/24"}),
                "cniVersion",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "subnet": "10.1.0.0/24"}),
                "name",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n"}),
                "subnet",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/33"}),
                "subnet",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "subnet": "10.1.0.0/31"}),
                "subnet",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "subnet": "fd00::/127"}),
                "subnet",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "fd00::/64", "gateway": "10.0.0.1"}]]}}),
                "ipam.ranges[0][0].gateway",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": []}}),
                "ipam.ranges",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]}}),
                "ipam.ranges[0][0].rangeStart",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "x"}]]}}),
                "ipam.ranges[0][0].gateway",
            ),
            (
                serde_json::json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]}}),
                "rangeEnd",
            ),
        ];
        for (v, field) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.field.contains(field), "{v}: {e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        for (key, bad, field) in [
            (
                "bridge",
                serde_json::json!("a-name-that-is-too-long"),
                "bridge",
            ),
            ("bridge", serde_json::json!(3), "bridge"),
            ("mtu", serde_json::json!(10), "mtu"),
            ("hairpinMode", serde_json::json!("yes"), "hairpinMode"),
            ("ipMasq", serde_json::json!(1), "ipMasq"),
            ("ipam", serde_json::json!([]), "ipam"),
        ] {
            let mut v = base.clone();
            v[key] = bad;
            let e = parse(v).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut v = base.clone();
        v["capabilities"] = serde_json::json!({"portMappings": true});
        v["runtimeConfig"] =
            serde_json::json!({"portMappings": [{"hostPort": 0, "containerPort": 80}]});
        assert_eq!(
            parse(v).unwrap_err().field,
            "runtimeConfig.portMappings[0].hostPort"
        );
        assert_eq!(BridgeConf::parse(b"nope").unwrap_err().field, "(stdin)");
    }
}
