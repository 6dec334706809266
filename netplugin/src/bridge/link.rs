//! The links berth-bridge manages (bridge, veth pairs, addresses, routes) behind the [`Links`]
//! trait. [`NetlinkLinks`] speaks rtnetlink directly, with no helper process.
//!
//! A netlink socket acts in the network namespace of the thread that opened it, so every group
//! of requests runs on a thread of its own: host side on a thread spawned from the caller (it
//! starts in the caller's namespace), pod side on a thread that entered the pod's namespace with
//! `setns` and ends with its work, so that no pooled thread is ever left in a pod's namespace.
//! Each such thread drives rtnetlink's async API with a current-thread tokio runtime, which keeps
//! the trait synchronous and the caller free to be inside or outside a runtime.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::errno::Errno;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::bridge::ipam::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A request the kernel refused, or a reply that could not be read; `source` carries the
    /// errno when there is one.
    #[error("{what}: {source}")]
    Netlink { what: String, source: io::Error },
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
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

/// [`Links`] through rtnetlink.
#[derive(Debug, Clone, Default)]
pub struct NetlinkLinks;

fn netlink_err(what: &str, e: rtnetlink::Error) -> LinkError {
    let source = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    };
    LinkError::Netlink {
        what: what.to_string(),
        source,
    }
}

fn missing(what: &str) -> LinkError {
    LinkError::Netlink {
        what: what.to_string(),
        source: io::Error::from_raw_os_error(Errno::ENODEV as i32),
    }
}

fn is_errno(e: &rtnetlink::Error, errno: Errno) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == errno as i32)
}

/// Runs `f` with a netlink handle opened on a fresh thread, in the network namespace at `netns`
/// when one is given, else in the caller's.
fn run<R, F, Fut>(netns: Option<&Path>, f: F) -> Result<R, LinkError>
where
    R: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<R, LinkError>>,
{
    let netns = netns
        .map(|path| {
            std::fs::File::open(path)
                .map(|file| (path, file))
                .map_err(|source| LinkError::Netns {
                    path: path.to_path_buf(),
                    source,
                })
        })
        .transpose()?;
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some((path, file)) = &netns {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                    |e| LinkError::Netns {
                        path: path.to_path_buf(),
                        source: e.into(),
                    },
                )?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(LinkError::Socket)?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
                tokio::spawn(conn);
                f(handle).await
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LinkError::Socket(io::Error::other(
                "netlink thread panicked",
            )))
        })
    })
}

/// Brings the loopback interface of the network namespace at `netns` up, as a runtime must
/// whatever plugin chain it runs (containerd and CRI-O do the same).
pub fn loopback_up(netns: &Path) -> Result<(), LinkError> {
    let what = format!("lo in {}", netns.display());
    run(Some(netns), |h| async move {
        h.link()
            .set(LinkUnspec::new_with_name("lo").up().build())
            .execute()
            .await
            .map_err(|e| netlink_err(&what, e))
    })
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h.link().get().match_name(name).execute().try_next().await {
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
        r => r,
    }
}

async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h.link().get().match_index(index).execute().try_next().await {
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(None),
        r => r,
    }
}

async fn del_link_by_name(h: &Handle, name: &str) -> Result<(), rtnetlink::Error> {
    match h
        .link()
        .del_with_message(LinkUnspec::new_with_name(name).build())
        .execute()
        .await
    {
        Err(e) if is_errno(&e, Errno::ENODEV) => Ok(()),
        r => r,
    }
}

async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// Adds (or, with `replace`, keeps) `addr/prefix` on the link. IPv6 addresses skip duplicate
/// address detection: the allocator already made them unique, and a tentative address would not
/// be usable for the first second or two of the pod.
async fn add_address(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
    replace: bool,
) -> Result<(), rtnetlink::Error> {
    let mut req = h.address().add(index, addr, prefix);
    if addr.is_ipv6() {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if replace {
        req = req.replace();
    }
    req.execute().await
}

fn default_route(gateway: IpAddr, index: u32) -> RouteMessage {
    match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
    }
}

/// The veth pair, its pod end created directly in the pod's namespace under its final name:
/// moving a link between namespaces afterwards costs a synchronize_net (about 30 ms). The host
/// end joins the bridge as it is created.
fn veth_message(s: &VethSpec, bridge_index: u32, netns: RawFd) -> LinkMessage {
    let mut peer = LinkUnspec::new_with_name(&s.if_name).setns_by_fd(netns);
    let mut host = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(s.host_name.clone())
        .controller(bridge_index);
    if let Some(mtu) = s.mtu {
        peer = peer.mtu(mtu);
        host = host.mtu(mtu);
    }
    host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build()
}

fn mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

fn controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos)
            if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
    })
}

/// The gateway of a default route through the link `index`.
fn default_gateway(route: &RouteMessage, index: u32) -> Option<IpAddr> {
    if route.header.destination_prefix_length != 0
        || !route
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index))
    {
        return None;
    }
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(IpAddr::V4(*gw)),
        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => Some(IpAddr::V6(*gw)),
        _ => None,
    })
}

impl Links for NetlinkLinks {
    fn ensure_bridge(
        &self,
        bridge: &str,
        mtu: Option<u32>,
        gateways: &[(IpAddr, IpNet)],
    ) -> Result<String, LinkError> {
        let what = format!("bridge {bridge}");
        let what = what.as_str();
        let err = |e| netlink_err(what, e);
        run(None, |h| async move {
            let link = match link_by_name(&h, bridge).await.map_err(err)? {
                Some(link) => link,
                None => {
                    let mut add = LinkBridge::new(bridge);
                    if let Some(mtu) = mtu {
                        add = add.mtu(mtu);
                    }
                    // Two ADDs may race to create it: losing the race is fine.
                    match h.link().add(add.build()).execute().await {
                        Err(e) if is_errno(&e, Errno::EEXIST) => {}
                        r => r.map_err(err)?,
                    }
                    link_by_name(&h, bridge)
                        .await
                        .map_err(err)?
                        .ok_or_else(|| missing(what))?
                }
            };
            let index = link.header.index;
            set_up(&h, index).await.map_err(err)?;
            for (gw, net) in gateways {
                add_address(&h, index, *gw, net.prefix, true)
                    .await
                    .map_err(err)?;
            }
            Ok(mac(&link))
        })
    }

    fn add_veth(&self, s: &VethSpec) -> Result<VethMacs, LinkError> {
        let netns = std::fs::File::open(&s.netns).map_err(|source| LinkError::Netns {
            path: s.netns.clone(),
            source,
        })?;
        let what = format!(
            "veth {} (peer {} in {})",
            s.host_name,
            s.if_name,
            s.netns.display()
        );
        let what = what.as_str();
        let err = |e| netlink_err(what, e);
        let host = run(None, |h| async move {
            let bridge = link_by_name(&h, &s.bridge)
                .await
                .map_err(|e| netlink_err(&format!("bridge {}", s.bridge), e))?
                .ok_or_else(|| missing(&format!("bridge {}", s.bridge)))?;
            let add = || veth_message(s, bridge.header.index, netns.as_raw_fd());
            match h.link().add(add()).execute().await {
                // A host end left by an ADD that crashed half-way: remove it and try once more
                // (if the pod already has an interface of that name, the retry reports it).
                Err(e)
                    if is_errno(&e, Errno::EEXIST)
                        && link_by_name(&h, &s.host_name).await.map_err(err)?.is_some() =>
                {
                    del_link_by_name(&h, &s.host_name).await.map_err(err)?;
                    h.link().add(add()).execute().await.map_err(err)?;
                }
                r => r.map_err(err)?,
            }
            let link = link_by_name(&h, &s.host_name)
                .await
                .map_err(err)?
                .ok_or_else(|| missing(what))?;
            // The alias lets GC find the pair from the host; bridge port settings need
            // RTM_NEWLINK on a link that already has its master.
            let mut change = LinkUnspec::new_with_index(link.header.index)
                .alias(s.alias.clone())
                .up();
            if s.hairpin {
                change = change.set_port_kind(InfoPortKind::Bridge).set_port_data(
                    InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)]),
                );
            }
            h.link()
                .change(change.build())
                .execute()
                .await
                .map_err(err)?;
            Ok(mac(&link))
        })?;

        let what = format!("{} in {}", s.if_name, s.netns.display());
        let what = what.as_str();
        let err = |e| netlink_err(what, e);
        let container = run(Some(&s.netns), |h| async move {
            let link = link_by_name(&h, &s.if_name)
                .await
                .map_err(err)?
                .ok_or_else(|| missing(what))?;
            let index = link.header.index;
            set_up(&h, index).await.map_err(err)?;
            for (addr, net) in &s.addresses {
                add_address(&h, index, *addr, net.prefix, false)
                    .await
                    .map_err(err)?;
            }
            for gw in &s.gateways {
                h.route()
                    .add(default_route(*gw, index))
                    .execute()
                    .await
                    .map_err(err)?;
            }
            Ok(mac(&link))
        })?;
        Ok(VethMacs { host, container })
    }

    fn del_host_link(&self, name: &str) -> Result<(), LinkError> {
        run(None, |h| async move {
            del_link_by_name(&h, name)
                .await
                .map_err(|e| netlink_err(&format!("link {name}"), e))
        })
    }

    fn host_link(&self, name: &str) -> Result<Option<HostLink>, LinkError> {
        let what = format!("link {name}");
        let what = what.as_str();
        let err = |e| netlink_err(what, e);
        run(None, |h| async move {
            let Some(link) = link_by_name(&h, name).await.map_err(err)? else {
                return Ok(None);
            };
            let master = match controller(&link) {
                Some(index) => link_by_index(&h, index)
                    .await
                    .map_err(err)?
                    .and_then(|m| name_of(&m)),
                None => None,
            };
            Ok(Some(HostLink {
                master,
                alias: alias(&link).map(String::from),
            }))
        })
    }

    fn pod_iface(&self, netns: &Path, if_name: &str) -> Result<Option<PodIface>, LinkError> {
        let what = format!("{if_name} in {}", netns.display());
        let what = what.as_str();
        let err = |e| netlink_err(what, e);
        run(Some(netns), |h| async move {
            let Some(link) = link_by_name(&h, if_name).await.map_err(err)? else {
                return Ok(None);
            };
            let index = link.header.index;
            let addresses = h
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_filter_map(|a| async move {
                    if a.header.scope == AddressScope::Link
                        || !matches!(a.header.family, AddressFamily::Inet | AddressFamily::Inet6)
                    {
                        return Ok(None);
                    }
                    // IPv4 names the interface's own address IFA_LOCAL; IPv6 has only
                    // IFA_ADDRESS.
                    let local = a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = local.or_else(|| {
                        a.attributes.iter().find_map(|at| match at {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    });
                    Ok(addr.map(|ip| (ip, a.header.prefix_len)))
                })
                .try_collect()
                .await
                .map_err(err)?;
            let mut default_gateways = Vec::new();
            for family in [
                RouteMessageBuilder::<Ipv4Addr>::new().build(),
                RouteMessageBuilder::<Ipv6Addr>::new().build(),
            ] {
                let routes: Vec<RouteMessage> = h
                    .route()
                    .get(family)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(err)?;
                default_gateways.extend(routes.iter().filter_map(|r| default_gateway(r, index)));
            }
            Ok(Some(PodIface {
                addresses,
                default_gateways,
            }))
        })
    }

    fn host_links_with_alias(&self, prefix: &str) -> Result<Vec<(String, String)>, LinkError> {
        run(None, |h| async move {
            let links: Vec<LinkMessage> = h
                .link()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(|e| netlink_err("links", e))?;
            Ok(links
                .iter()
                .filter(|l| is_veth(l))
                .filter_map(|l| {
                    let alias = alias(l)?;
                    alias
                        .starts_with(prefix)
                        .then(|| Some((name_of(l)?, alias.to_string())))?
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_lowercase_colon_separated_hex() {
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::Address(vec![
            0x02, 0xab, 0x00, 0x01, 0xfe, 0x0f,
        ]));
        assert_eq!(mac(&link), "02:ab:00:01:fe:0f");
        assert_eq!(mac(&LinkMessage::default()), "");
    }

    #[test]
    fn veth_request_enslaves_the_host_end_and_creates_the_peer_in_the_pod_netns() {
        let spec = VethSpec {
            bridge: "br0".into(),
            host_name: "vethhost".into(),
            netns: PathBuf::from("/run/netns/p"),
            if_name: "eth0".into(),
            mtu: Some(1400),
            hairpin: false,
            alias: "berth:n:c/eth0".into(),
            addresses: Vec::new(),
            gateways: Vec::new(),
        };
        let msg = veth_message(&spec, 42, 9);
        let attrs = &msg.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("vethhost".into())));
        assert!(attrs.contains(&LinkAttribute::Controller(42)));
        assert!(attrs.contains(&LinkAttribute::Mtu(1400)));
        let peer = attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .unwrap();
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(9)));
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(is_veth(&msg));
    }

    #[test]
    fn default_gateway_only_from_default_routes_through_the_interface() {
        let gw: Ipv4Addr = "10.1.0.1".parse().unwrap();
        let route = default_route(IpAddr::V4(gw), 7);
        assert_eq!(default_gateway(&route, 7), Some(IpAddr::V4(gw)));
        assert_eq!(default_gateway(&route, 8), None);
        let mut subnet = route.clone();
        subnet.header.destination_prefix_length = 24;
        assert_eq!(default_gateway(&subnet, 7), None);
    }
}
