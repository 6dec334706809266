//! Address management with host-local semantics: ranges of a subnet, leases persisted on disk
//! (one file per address, named after it, holding `<container id>\r\n<ifname>`), round-robin
//! allocation after the last allocated address, release by container id and ifname.
//!
//! The allocation logic is pure and runs against the [`LeaseStore`] trait; [`DiskStore`] is the
//! real store, whose `lock` file is held with `flock` across each allocation and release, so
//! concurrent ADDs (separate plugin processes) never hand out an address twice.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// An IPv4 or IPv6 subnet: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// An address as a number, for arithmetic on either family.
pub fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `v` of the family of `like`.
fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let bad = || format!("{s:?} is not a CIDR subnet (a.b.c.d/len or x:y::/len)");
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?;
        Ok(IpNet { addr, prefix }.network())
    }

    fn bits(self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(self) -> u128 {
        let all = if self.addr.is_ipv4() {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        if self.prefix == 0 {
            0
        } else {
            all & (all << (self.bits() - self.prefix))
        }
    }

    pub fn is_ipv6(self) -> bool {
        self.addr.is_ipv6()
    }

    /// The same prefix with the host bits cleared.
    pub fn network(self) -> IpNet {
        IpNet {
            addr: from_u128(to_u128(self.addr) & self.mask(), self.addr),
            prefix: self.prefix,
        }
    }

    /// The last address of the subnet (IPv4's broadcast; never handed out in either family).
    pub fn broadcast(self) -> IpAddr {
        let all = if self.addr.is_ipv4() {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        from_u128(to_u128(self.addr) | (!self.mask() & all), self.addr)
    }

    pub fn contains(self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4()
            && to_u128(a) & self.mask() == to_u128(self.addr) & self.mask()
    }

    pub fn first_host(self) -> IpAddr {
        from_u128(to_u128(self.network().addr) + 1, self.addr)
    }

    pub fn last_host(self) -> IpAddr {
        from_u128(to_u128(self.broadcast()) - 1, self.addr)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How many addresses one allocation looks at before it calls a range set exhausted: every
/// address of an IPv4 /12, and a bounded walk of an IPv6 range, which is never full.
const MAX_SCAN: u128 = 1 << 20;

/// Addresses `start..=end` of `subnet`, handed out with `gateway` as their gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.start.is_ipv4()
            && (to_u128(self.start)..=to_u128(self.end)).contains(&to_u128(a))
    }
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    pub if_name: String,
}

impl Owner {
    fn encode(&self) -> String {
        format!("{}\r\n{}", self.container_id, self.if_name)
    }

    fn decode(s: &str) -> Owner {
        let mut lines = s.trim().lines();
        Owner {
            container_id: lines.next().unwrap_or("").trim().to_string(),
            if_name: lines.next().unwrap_or("").trim().to_string(),
        }
    }
}

/// One allocated address with its subnet and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub address: IpAddr,
    pub subnet: IpNet,
    pub gateway: IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {ranges} of network {network}")]
    Exhausted { network: String, ranges: String },
    #[error("lease store {path}: {source}")]
    Store { path: PathBuf, source: io::Error },
}

/// Where leases live. Every call but `lock` happens while the lock is held.
pub trait LeaseStore {
    type Lock;
    /// Exclusive access to the store until the returned value is dropped.
    fn lock(&self) -> io::Result<Self::Lock>;
    fn leases(&self) -> io::Result<Vec<(IpAddr, Owner)>>;
    /// Records the lease; `false` when the address is already leased.
    fn reserve(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool>;
    fn release(&self, ip: IpAddr) -> io::Result<()>;
    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>>;
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()>;
    /// For error messages.
    fn path(&self) -> PathBuf;
}

/// The allocator for one network.
pub struct Ipam<S> {
    store: S,
    network: String,
    range_sets: Vec<Vec<Range>>,
    reserved: Vec<IpAddr>,
}

impl<S: LeaseStore> Ipam<S> {
    pub fn new(
        store: S,
        network: &str,
        range_sets: Vec<Vec<Range>>,
        reserved: Vec<IpAddr>,
    ) -> Self {
        Ipam {
            store,
            network: network.to_string(),
            range_sets,
            reserved,
        }
    }

    fn store_err(&self) -> impl Fn(io::Error) -> IpamError + '_ {
        move |source| IpamError::Store {
            path: self.store.path(),
            source,
        }
    }

    /// One address per range set for `owner`. An owner that already holds addresses gets them
    /// back (a repeated ADD is idempotent). On exhaustion nothing stays allocated.
    pub fn allocate(&self, owner: &Owner) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.store.lock().map_err(self.store_err())?;
        let leases = self.store.leases().map_err(self.store_err())?;
        let mut out = Vec::new();
        for (set_idx, set) in self.range_sets.iter().enumerate() {
            if let Some(a) = leases
                .iter()
                .filter(|(_, o)| o == owner)
                .find_map(|(ip, _)| {
                    set.iter()
                        .find(|r| r.subnet.contains(*ip))
                        .map(|r| alloc(r, *ip))
                })
            {
                out.push(a);
                continue;
            }
            match self.allocate_in(set_idx, set, owner) {
                Ok(a) => out.push(a),
                Err(e) => {
                    for a in &out {
                        let _ = self.store.release(a.address);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn allocate_in(
        &self,
        set_idx: usize,
        set: &[Range],
        owner: &Owner,
    ) -> Result<Allocation, IpamError> {
        let last = self
            .store
            .last_reserved(set_idx)
            .map_err(self.store_err())?;
        // Round robin: start after the last allocated address, in the range that holds it,
        // then go on through the following ranges and wrap around.
        let (first_range, first_addr) = last
            .and_then(|l| {
                set.iter().enumerate().find_map(|(i, r)| {
                    let v = to_u128(l);
                    (r.contains(l) && v < to_u128(r.end)).then_some((i, v + 1))
                })
            })
            .or_else(|| {
                last.and_then(|l| set.iter().position(|r| r.contains(l)))
                    .map(|i| ((i + 1) % set.len(), to_u128(set[(i + 1) % set.len()].start)))
            })
            .unwrap_or((0, set.first().map(|r| to_u128(r.start)).unwrap_or(0)));
        let mut scanned: u128 = 0;
        // Each range once from its start, the first one twice (from the round-robin point to
        // its end, and at the end from its start up to that point).
        for k in 0..=set.len() {
            let ri = (first_range + k) % set.len();
            let r = &set[ri];
            let (from, to) = match k {
                0 => (first_addr, to_u128(r.end)),
                k if k == set.len() => (to_u128(r.start), first_addr.saturating_sub(1)),
                _ => (to_u128(r.start), to_u128(r.end)),
            };
            let mut v = from;
            while v <= to && from <= to {
                if scanned >= MAX_SCAN {
                    return Err(self.exhausted(set));
                }
                scanned += 1;
                let ip = from_u128(v, r.start);
                v += 1;
                if ip == r.gateway
                    || ip == r.subnet.network().addr
                    || ip == r.subnet.broadcast()
                    || self.reserved.contains(&ip)
                    || set.iter().any(|o| o.gateway == ip)
                {
                    continue;
                }
                if self.store.reserve(ip, owner).map_err(self.store_err())? {
                    self.store
                        .set_last_reserved(set_idx, ip)
                        .map_err(self.store_err())?;
                    return Ok(alloc(r, ip));
                }
            }
        }
        Err(self.exhausted(set))
    }

    fn exhausted(&self, set: &[Range]) -> IpamError {
        IpamError::Exhausted {
            network: self.network.clone(),
            ranges: set
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Releases every address `owner` holds; releasing nothing is success.
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.store.lock().map_err(self.store_err())?;
        let mut released = Vec::new();
        for (ip, o) in self.store.leases().map_err(self.store_err())? {
            if &o == owner {
                self.store.release(ip).map_err(self.store_err())?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// The addresses `owner` holds.
    pub fn leased(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.store.lock().map_err(self.store_err())?;
        Ok(self
            .store
            .leases()
            .map_err(self.store_err())?
            .into_iter()
            .filter(|(_, o)| o == owner)
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Releases every lease whose owner `keep` rejects (CNI GC); returns what was released.
    pub fn retain(&self, keep: impl Fn(&Owner) -> bool) -> Result<Vec<(IpAddr, Owner)>, IpamError> {
        let _lock = self.store.lock().map_err(self.store_err())?;
        let mut released = Vec::new();
        for (ip, o) in self.store.leases().map_err(self.store_err())? {
            if !keep(&o) {
                self.store.release(ip).map_err(self.store_err())?;
                released.push((ip, o));
            }
        }
        Ok(released)
    }
}

fn alloc(r: &Range, ip: IpAddr) -> Allocation {
    Allocation {
        address: ip,
        subnet: r.subnet,
        gateway: r.gateway,
    }
}

/// Leases as files in one directory, host-local's layout: `<ip>` per lease, `last_reserved_ip.<n>`
/// per range set, and `lock`.
#[derive(Debug, Clone)]
pub struct DiskStore {
    dir: PathBuf,
}

impl DiskStore {
    pub fn new(dir: &Path) -> DiskStore {
        DiskStore {
            dir: dir.to_path_buf(),
        }
    }
}

impl LeaseStore for DiskStore {
    type Lock = Flock<File>;

    fn lock(&self) -> io::Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
    }

    fn leases(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            match std::fs::read_to_string(entry.path()) {
                Ok(s) => out.push((ip, Owner::decode(&s))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(ip, _)| (ip.is_ipv6(), to_u128(*ip)));
        Ok(out)
    }

    fn reserve(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        let path = self.dir.join(ip.to_string());
        // create_new: even a writer that ignores the lock cannot take a leased address.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(owner.encode().as_bytes())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn release(&self, ip: IpAddr) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
        match std::fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set}"))) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
        std::fs::write(
            self.dir.join(format!("last_reserved_ip.{set}")),
            ip.to_string(),
        )
    }

    fn path(&self) -> PathBuf {
        self.dir.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// An in-memory store: the allocation logic without a file system.
    #[derive(Default)]
    struct MemStore {
        leases: RefCell<BTreeMap<IpAddr, Owner>>,
        last: RefCell<BTreeMap<usize, IpAddr>>,
    }

    impl LeaseStore for MemStore {
        type Lock = ();
        fn lock(&self) -> io::Result<()> {
            Ok(())
        }
        fn leases(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
            Ok(self
                .leases
                .borrow()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect())
        }
        fn reserve(&self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
            let mut l = self.leases.borrow_mut();
            if l.contains_key(&ip) {
                return Ok(false);
            }
            l.insert(ip, owner.clone());
            Ok(true)
        }
        fn release(&self, ip: IpAddr) -> io::Result<()> {
            self.leases.borrow_mut().remove(&ip);
            Ok(())
        }
        fn last_reserved(&self, set: usize) -> io::Result<Option<IpAddr>> {
            Ok(self.last.borrow().get(&set).copied())
        }
        fn set_last_reserved(&self, set: usize, ip: IpAddr) -> io::Result<()> {
            self.last.borrow_mut().insert(set, ip);
            Ok(())
        }
        fn path(&self) -> PathBuf {
            "mem".into()
        }
    }

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            if_name: "eth0".into(),
        }
    }

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> Range {
        let subnet = IpNet::parse(subnet).unwrap();
        Range {
            subnet,
            start: start
                .map(|s| s.parse().unwrap())
                .unwrap_or(subnet.first_host()),
            end: end
                .map(|s| s.parse().unwrap())
                .unwrap_or(subnet.last_host()),
            gateway: subnet.first_host(),
        }
    }

    fn ips(a: &[Allocation]) -> Vec<String> {
        a.iter().map(|a| a.address.to_string()).collect()
    }

    #[test]
    fn subnet_arithmetic() {
        let n = IpNet::parse("10.1.2.3/24").unwrap();
        assert_eq!(n.to_string(), "10.1.2.0/24");
        assert_eq!(n.broadcast(), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 255)));
        assert_eq!(n.first_host(), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 1)));
        assert_eq!(n.last_host(), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 254)));
        assert!(
            n.contains(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 200)))
                && !n.contains(IpAddr::V4(Ipv4Addr::new(10, 1, 3, 1)))
        );
        assert!(IpNet::parse("10.0.0.0").is_err());
        assert!(IpNet::parse("10.0.0.0/40").is_err());
        let v6 = IpNet::parse("fd00:1::5/64").unwrap();
        assert_eq!(v6.to_string(), "fd00:1::/64");
        assert_eq!(v6.first_host().to_string(), "fd00:1::1");
        assert_eq!(v6.last_host().to_string(), "fd00:1::ffff:ffff:ffff:fffe");
        assert!(v6.contains("fd00:1::9".parse().unwrap()));
        assert!(
            !v6.contains("10.0.0.1".parse().unwrap()) && !n.contains("fd00:1::9".parse().unwrap())
        );
        assert!(IpNet::parse("fd00::/129").is_err());
    }

    #[test]
    fn allocates_in_order_skipping_gateway_and_reserved() {
        let ipam = Ipam::new(
            MemStore::default(),
            "n",
            vec![vec![range("10.0.0.0/29", None, None)]],
            vec!["10.0.0.3".parse().unwrap()],
        );
        let got: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .flat_map(|id| ips(&ipam.allocate(&owner(id)).unwrap()))
            .collect();
        // .0 network, .1 gateway, .3 reserved, .7 broadcast.
        assert_eq!(got, ["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let a = ipam.allocate(&owner("a")).unwrap();
        assert_eq!(
            ips(&a),
            ["10.0.0.2"],
            "a repeated ADD gets its address back"
        );
        assert_eq!(a[0].gateway, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn explicit_range_covering_network_and_broadcast_still_skips_them() {
        let mut r = range("10.0.0.0/30", Some("10.0.0.0"), Some("10.0.0.3"));
        r.gateway = "10.0.0.2".parse().unwrap();
        let ipam = Ipam::new(MemStore::default(), "n", vec![vec![r]], vec![]);
        assert_eq!(ips(&ipam.allocate(&owner("a")).unwrap()), ["10.0.0.1"]);
        assert!(matches!(
            ipam.allocate(&owner("b")),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn round_robin_continues_after_the_last_allocated_and_wraps() {
        let ipam = Ipam::new(
            MemStore::default(),
            "n",
            vec![vec![range(
                "10.0.0.0/24",
                Some("10.0.0.10"),
                Some("10.0.0.12"),
            )]],
            vec![],
        );
        assert_eq!(ips(&ipam.allocate(&owner("a")).unwrap()), ["10.0.0.10"]);
        assert_eq!(ips(&ipam.allocate(&owner("b")).unwrap()), ["10.0.0.11"]);
        assert_eq!(
            ipam.release(&owner("a")).unwrap(),
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10))]
        );
        // .10 is free again, but the next one is .12 (after the last allocated), then .10.
        assert_eq!(ips(&ipam.allocate(&owner("c")).unwrap()), ["10.0.0.12"]);
        assert_eq!(ips(&ipam.allocate(&owner("d")).unwrap()), ["10.0.0.10"]);
    }

    #[test]
    fn release_is_by_owner_and_idempotent() {
        let ipam = Ipam::new(
            MemStore::default(),
            "n",
            vec![vec![range("10.0.0.0/24", None, None)]],
            vec![],
        );
        ipam.allocate(&owner("a")).unwrap();
        let other_if = Owner {
            container_id: "a".into(),
            if_name: "net1".into(),
        };
        ipam.allocate(&other_if).unwrap();
        assert_eq!(ipam.release(&owner("a")).unwrap().len(), 1);
        assert!(ipam.release(&owner("a")).unwrap().is_empty());
        assert_eq!(
            ipam.leased(&other_if).unwrap().len(),
            1,
            "the other ifname keeps its lease"
        );
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_leaves_nothing_behind() {
        let ipam = Ipam::new(
            MemStore::default(),
            "pods",
            vec![
                vec![range("10.0.0.0/24", None, None)],
                vec![range("10.0.1.0/24", Some("10.0.1.2"), Some("10.0.1.2"))],
            ],
            vec![],
        );
        assert_eq!(
            ips(&ipam.allocate(&owner("a")).unwrap()),
            ["10.0.0.2", "10.0.1.2"]
        );
        let err = ipam.allocate(&owner("b")).unwrap_err().to_string();
        assert!(
            err.contains("no free address")
                && err.contains("pods")
                && err.contains("10.0.1.2-10.0.1.2"),
            "{err}"
        );
        assert!(
            ipam.leased(&owner("b")).unwrap().is_empty(),
            "the first set's address was rolled back"
        );
    }

    #[test]
    fn dual_stack_sets_get_one_address_of_each_family() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(
            DiskStore::new(dir.path()),
            "n",
            vec![
                vec![range("10.0.0.0/24", None, None)],
                vec![range("fd00:1::/64", None, None)],
            ],
            vec![],
        );
        assert_eq!(
            ips(&ipam.allocate(&owner("a")).unwrap()),
            ["10.0.0.2", "fd00:1::2"]
        );
        assert_eq!(
            ips(&ipam.allocate(&owner("b")).unwrap()),
            ["10.0.0.3", "fd00:1::3"]
        );
        assert!(
            dir.path().join("fd00:1::2").exists(),
            "host-local's file names"
        );
        assert_eq!(
            ips(&ipam.allocate(&owner("a")).unwrap()),
            ["10.0.0.2", "fd00:1::2"],
            "a repeated ADD gets both back"
        );
        assert_eq!(ipam.release(&owner("a")).unwrap().len(), 2);
        assert_eq!(ipam.leased(&owner("b")).unwrap().len(), 2);
    }

    #[test]
    fn round_robin_moves_on_to_the_next_range_of_a_set() {
        let ipam = Ipam::new(
            MemStore::default(),
            "n",
            vec![vec![
                range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11")),
                range("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.10")),
            ]],
            vec![],
        );
        let got: Vec<String> = ["a", "b", "c"]
            .iter()
            .flat_map(|id| ips(&ipam.allocate(&owner(id)).unwrap()))
            .collect();
        assert_eq!(got, ["10.0.0.10", "10.0.0.11", "10.0.1.10"]);
        ipam.release(&owner("a")).unwrap();
        assert_eq!(
            ips(&ipam.allocate(&owner("d")).unwrap()),
            ["10.0.0.10"],
            "wraps around"
        );
        assert!(ipam.allocate(&owner("e")).is_err());
    }

    #[test]
    fn disk_store_uses_host_local_layout_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sets = vec![vec![range("10.0.0.0/24", None, None)]];
        let ipam = Ipam::new(DiskStore::new(dir.path()), "n", sets.clone(), vec![]);
        assert_eq!(ips(&ipam.allocate(&owner("a")).unwrap()), ["10.0.0.2"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("10.0.0.2")).unwrap(),
            "a\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("last_reserved_ip.0")).unwrap(),
            "10.0.0.2"
        );
        drop(ipam);

        // A new process: the state comes from disk.
        let ipam = Ipam::new(DiskStore::new(dir.path()), "n", sets, vec![]);
        assert_eq!(
            ipam.leased(&owner("a")).unwrap(),
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))]
        );
        assert_eq!(ips(&ipam.allocate(&owner("b")).unwrap()), ["10.0.0.3"]);
        assert_eq!(ips(&ipam.allocate(&owner("a")).unwrap()), ["10.0.0.2"]);
        ipam.release(&owner("a")).unwrap();
        ipam.release(&owner("b")).unwrap();
        assert!(!dir.path().join("10.0.0.2").exists() && !dir.path().join("10.0.0.3").exists());
        let released = ipam.retain(|_| false).unwrap();
        assert!(released.is_empty());
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let sets = vec![vec![range("10.0.0.0/25", None, None)]]; // 125 free addresses
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                let sets = sets.clone();
                std::thread::spawn(move || {
                    // One store per thread: a separate open file description, as separate
                    // plugin processes would have, so flock really serializes them.
                    let ipam = Ipam::new(DiskStore::new(dir.path()), "n", sets, vec![]);
                    (0..4)
                        .map(|i| ipam.allocate(&owner(&format!("c{t}-{i}"))).unwrap()[0].address)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(all.len(), 64);
        all.sort();
        let unique = all.len();
        all.dedup();
        assert_eq!(all.len(), unique, "an address was handed out twice");
    }
}
