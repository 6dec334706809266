//! A container's Linux resources as ContainerStatus reports them: what its OCI spec applied,
//! in CRI terms, and how an UpdateContainerResources changes that.
//!
//! The report follows containerd: it is read back from what went to the runtime (the spec at
//! creation, the OCI resources of an update), not from what was asked, so berth's own changes
//! (the oom_score_adj floor, swap set to the memory limit, hugepage limits dropped without a
//! hugetlb controller) show as applied.

use berth_proto::cri::{HugepageLimit, LinuxContainerResources};
use oci_spec::runtime::{LinuxResources, Spec};

/// The resources a container was created with, from its spec: the process's oom_score_adj
/// and the Linux cgroup resources.
pub fn from_spec(spec: &Spec) -> LinuxContainerResources {
    let mut out = LinuxContainerResources {
        oom_score_adj: spec
            .process()
            .as_ref()
            .and_then(|p| p.oom_score_adj())
            .map_or(0, i64::from),
        ..Default::default()
    };
    if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        apply(&mut out, resources);
    }
    out
}

/// `current` after the runtime applied `update` (OCI resources as berth sends them: a field is
/// set only when the request set it). containerd's rule: a field the update sets replaces the
/// current value, one it leaves out keeps it; unified entries are replaced key by key. The
/// oom_score_adj is the process's, which an update never changes.
///
/// containerd appends an update's hugepage limits to the spec's, so a page size can be listed
/// twice and the last entry is the one in force; here an entry replaces the one of its page
/// size, which is the same limit listed once.
pub fn apply(current: &mut LinuxContainerResources, update: &LinuxResources) {
    if let Some(cpu) = update.cpu() {
        if let Some(period) = cpu.period() {
            current.cpu_period = i64::try_from(period).unwrap_or(i64::MAX);
        }
        if let Some(quota) = cpu.quota() {
            current.cpu_quota = quota;
        }
        if let Some(shares) = cpu.shares() {
            current.cpu_shares = i64::try_from(shares).unwrap_or(i64::MAX);
        }
        if let Some(cpus) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
            current.cpuset_cpus.clone_from(cpus);
        }
        if let Some(mems) = cpu.mems().as_ref().filter(|m| !m.is_empty()) {
            current.cpuset_mems.clone_from(mems);
        }
    }
    if let Some(memory) = update.memory() {
        if let Some(limit) = memory.limit() {
            current.memory_limit_in_bytes = limit;
        }
        if let Some(swap) = memory.swap() {
            current.memory_swap_limit_in_bytes = swap;
        }
    }
    for limit in update.hugepage_limits().iter().flatten() {
        let value = u64::try_from(limit.limit()).unwrap_or(0);
        match current
            .hugepage_limits
            .iter_mut()
            .find(|h| h.page_size == *limit.page_size())
        {
            Some(h) => h.limit = value,
            None => current.hugepage_limits.push(HugepageLimit {
                page_size: limit.page_size().clone(),
                limit: value,
            }),
        }
    }
    for (key, value) in update.unified().iter().flatten() {
        current.unified.insert(key.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxResourcesBuilder, ProcessBuilder, SpecBuilder,
    };

    use super::*;

    fn hugepage(page_size: &str, limit: i64) -> oci_spec::runtime::LinuxHugepageLimit {
        LinuxHugepageLimitBuilder::default()
            .page_size(page_size)
            .limit(limit)
            .build()
            .unwrap()
    }

    fn created() -> LinuxContainerResources {
        let resources = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .period(100_000u64)
                    .quota(50_000i64)
                    .shares(512u64)
                    .cpus("0")
                    .mems("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![hugepage("2MB", 0), hugepage("1GB", 0)])
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "60000000".to_string(),
            )]))
            .build()
            .unwrap();
        let spec = SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .oom_score_adj(-500)
                    .build()
                    .unwrap(),
            )
            .linux(
                LinuxBuilder::default()
                    .resources(resources)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        from_spec(&spec)
    }

    #[test]
    fn the_spec_is_read_back_in_cri_terms() {
        let r = created();
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 50_000, 512)
        );
        assert_eq!((r.cpuset_cpus.as_str(), r.cpuset_mems.as_str()), ("0", "0"));
        assert_eq!(
            (r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes),
            (64 << 20, 64 << 20)
        );
        assert_eq!(r.oom_score_adj, -500);
        assert_eq!(
            r.hugepage_limits,
            vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0
                },
            ]
        );
        assert_eq!(r.unified["memory.high"], "60000000");
    }

    #[test]
    fn a_spec_without_resources_reports_zeros() {
        let mut spec = SpecBuilder::default().build().unwrap();
        spec.set_linux(None);
        spec.set_process(None);
        assert_eq!(from_spec(&spec), LinuxContainerResources::default());
    }

    #[test]
    fn an_update_replaces_what_it_sets_and_keeps_the_rest() {
        let mut r = created();
        let update = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(20_000i64).build().unwrap())
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(128i64 << 20)
                    .swap(128i64 << 20)
                    .build()
                    .unwrap(),
            )
            .hugepage_limits(vec![hugepage("2MB", 4 << 20)])
            .unified(HashMap::from([("pids.max".to_string(), "10".to_string())]))
            .build()
            .unwrap();
        apply(&mut r, &update);
        assert_eq!(
            (r.cpu_period, r.cpu_quota, r.cpu_shares),
            (100_000, 20_000, 512)
        );
        assert_eq!((r.cpuset_cpus.as_str(), r.cpuset_mems.as_str()), ("0", "0"));
        assert_eq!(
            (r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes),
            (128 << 20, 128 << 20)
        );
        assert_eq!(r.oom_score_adj, -500, "an update never changes it");
        assert_eq!(r.hugepage_limits.len(), 2);
        assert_eq!(r.hugepage_limits[0].limit, 4 << 20);
        assert_eq!(r.unified.len(), 2);
        assert_eq!(r.unified["pids.max"], "10");
    }

    #[test]
    fn an_empty_update_changes_nothing() {
        let mut r = created();
        apply(&mut r, &LinuxResources::default());
        let empty = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().cpus("").build().unwrap())
            .memory(LinuxMemoryBuilder::default().build().unwrap())
            .build()
            .unwrap();
        apply(&mut r, &empty);
        assert_eq!(r, created());
    }
}
