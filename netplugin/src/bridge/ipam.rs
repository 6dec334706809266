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
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// An IPv4 subnet: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn parse(s: &str) -> Result<Ipv4Net, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR subnet (a.b.c.d/len)"))?;
        if a.contains(':') {
            return Err(format!("{s:?}: IPv6 is not supported yet"));
        }
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a CIDR subnet (a.b.c.d/len)"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?;
        Ok(Ipv4Net { addr, prefix }.network())
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The same prefix with the host bits cleared.
    pub fn network(self) -> Ipv4Net {
        Ipv4Net {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn first_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network().addr) + 1)
    }

    pub fn last_host(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.broadcast()) - 1)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Addresses `start..=end` of `subnet`, handed out with `gateway` as their gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub subnet: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
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
    pub address: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
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
    fn leases(&self) -> io::Result<Vec<(Ipv4Addr, Owner)>>;
    /// Records the lease; `false` when the address is already leased.
    fn reserve(&self, ip: Ipv4Addr, owner: &Owner) -> io::Result<bool>;
    fn release(&self, ip: Ipv4Addr) -> io::Result<()>;
    fn last_reserved(&self, set: usize) -> io::Result<Option<Ipv4Addr>>;
    fn set_last_reserved(&self, set: usize, ip: Ipv4Addr) -> io::Result<()>;
    /// For error messages.
    fn path(&self) -> PathBuf;
}

/// The allocator for one network.
pub struct Ipam<S> {
    store: S,
    network: String,
    range_sets: Vec<Vec<Range>>,
    reserved: Vec<Ipv4Addr>,
}

impl<S: LeaseStore> Ipam<S> {
    pub fn new(
        store: S,
        network: &str,
        range_sets: Vec<Vec<Range>>,
        reserved: Vec<Ipv4Addr>,
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
        let candidates: Vec<(usize, u32)> = set
            .iter()
            .enumerate()
            .flat_map(|(i, r)| (u32::from(r.start)..=u32::from(r.end)).map(move |a| (i, a)))
            .collect();
        let last = self
            .store
            .last_reserved(set_idx)
            .map_err(self.store_err())?;
        let begin = last
            .and_then(|l| candidates.iter().position(|(_, a)| *a == u32::from(l)))
            .map(|p| p + 1)
            .unwrap_or(0);
        let n = candidates.len();
        for k in 0..n {
            let (ri, a) = candidates[(begin + k) % n];
            let r = &set[ri];
            let ip = Ipv4Addr::from(a);
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
        Err(IpamError::Exhausted {
            network: self.network.clone(),
            ranges: set
                .iter()
                .map(|r| format!("{}-{}", r.start, r.end))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Releases every address `owner` holds; releasing nothing is success.
    pub fn release(&self, owner: &Owner) -> Result<Vec<Ipv4Addr>, IpamError> {
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
    pub fn leased(&self, owner: &Owner) -> Result<Vec<Ipv4Addr>, IpamError> {
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
    pub fn retain(
        &self,
        keep: impl Fn(&Owner) -> bool,
    ) -> Result<Vec<(Ipv4Addr, Owner)>, IpamError> {
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

fn alloc(r: &Range, ip: Ipv4Addr) -> Allocation {
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

    fn leases(&self) -> io::Result<Vec<(Ipv4Addr, Owner)>> {
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
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            match std::fs::read_to_string(entry.path()) {
                Ok(s) => out.push((ip, Owner::decode(&s))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(ip, _)| u32::from(*ip));
        Ok(out)
    }

    fn reserve(&self, ip: Ipv4Addr, owner: &Owner) -> io::Result<bool> {
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

    fn release(&self, ip: Ipv4Addr) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(ip.to_string())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn last_reserved(&self, set: usize) -> io::Result<Option<Ipv4Addr>> {
        match std::fs::read_to_string(self.dir.join(format!("last_reserved_ip.{set}"))) {
            Ok(s) => Ok(s.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn set_last_reserved(&self, set: usize, ip: Ipv4Addr) -> io::Result<()> {
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
        leases: RefCell<BTreeMap<u32, Owner>>,
        last: RefCell<BTreeMap<usize, Ipv4Addr>>,
    }

    impl LeaseStore for MemStore {
        type Lock = ();
        fn lock(&self) -> io::Result<()> {
            Ok(())
        }
        fn leases(&self) -> io::Result<Vec<(Ipv4Addr, Owner)>> {
            Ok(self
                .leases
                .borrow()
                .iter()
                .map(|(k, v)| (Ipv4Addr::from(*k), v.clone()))
                .collect())
        }
        fn reserve(&self, ip: Ipv4Addr, owner: &Owner) -> io::Result<bool> {
            let mut l = self.leases.borrow_mut();
            if l.contains_key(&u32::from(ip)) {
                return Ok(false);
            }
            l.insert(u32::from(ip), owner.clone());
            Ok(true)
        }
        fn release(&self, ip: Ipv4Addr) -> io::Result<()> {
            self.leases.borrow_mut().remove(&u32::from(ip));
            Ok(())
        }
        fn last_reserved(&self, set: usize) -> io::Result<Option<Ipv4Addr>> {
            Ok(self.last.borrow().get(&set).copied())
        }
        fn set_last_reserved(&self, set: usize, ip: Ipv4Addr) -> io::Result<()> {
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
        let subnet = Ipv4Net::parse(subnet).unwrap();
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
        let n = Ipv4Net::parse("10.1.2.3/24").unwrap();
        assert_eq!(n.to_string(), "10.1.2.0/24");
        assert_eq!(n.broadcast(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(n.first_host(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(n.last_host(), Ipv4Addr::new(10, 1, 2, 254));
        assert!(
            n.contains(Ipv4Addr::new(10, 1, 2, 200)) && !n.contains(Ipv4Addr::new(10, 1, 3, 1))
        );
        assert!(Ipv4Net::parse("10.0.0.0").is_err());
        assert!(Ipv4Net::parse("10.0.0.0/40").is_err());
        assert!(Ipv4Net::parse("fd00::/64").unwrap_err().contains("IPv6"));
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
        assert_eq!(a[0].gateway, Ipv4Addr::new(10, 0, 0, 1));
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
            vec![Ipv4Addr::new(10, 0, 0, 10)]
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
            vec![Ipv4Addr::new(10, 0, 0, 2)]
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
        let mut all: Vec<Ipv4Addr> = threads
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
