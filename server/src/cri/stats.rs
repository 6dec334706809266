//! ContainerStats, ListContainerStats, PodSandboxStats and ListPodSandboxStats: the stats
//! service's readings in CRI form. Filters match as ListContainers and ListPodSandbox do (id
//! prefixes, exact labels).

use std::sync::Arc;

use berth_proto::cri::{
    ContainerAttributes, ContainerStats as CriContainerStats, ContainerStatsFilter,
    ContainerStatsRequest, ContainerStatsResponse, CpuUsage as CriCpu, FilesystemIdentifier,
    FilesystemUsage, LinuxPodSandboxStats, ListContainerStatsRequest, ListContainerStatsResponse,
    ListPodSandboxStatsRequest, ListPodSandboxStatsResponse, MemoryUsage as CriMemory,
    NetworkInterfaceUsage, NetworkUsage as CriNetwork, PodSandboxAttributes,
    PodSandboxStats as CriPodStats, PodSandboxStatsFilter, PodSandboxStatsRequest,
    PodSandboxStatsResponse, ProcessUsage, UInt64Value,
};
use tracing::Instrument;

use crate::containers::service::Container;
use crate::error::Error;
use crate::sandbox::service::Sandbox;
use crate::stats::{
    ContainerStats, InterfaceUsage, LayerUsage, NetworkUsage, PodStats, ResourceUsage, Stats,
    StatsError,
};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StatsError> + Send + 'static,
) -> Result<T, Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Error::FailedPrecondition(format!("stats task failed: {e}")))?
        .map_err(Error::from)
}

fn value(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn cpu(u: &ResourceUsage) -> CriCpu {
    CriCpu {
        timestamp: u.timestamp_ns,
        usage_core_nano_seconds: value(u.cpu.total_ns),
        usage_nano_cores: u.cpu.nano_cores.and_then(value),
    }
}

fn memory(u: &ResourceUsage) -> CriMemory {
    let m = &u.memory;
    CriMemory {
        timestamp: u.timestamp_ns,
        working_set_bytes: value(m.working_set),
        available_bytes: m.available.and_then(value),
        usage_bytes: value(m.usage),
        rss_bytes: value(m.rss),
        page_faults: value(m.page_faults),
        major_page_faults: value(m.major_page_faults),
    }
}

fn layer(l: &LayerUsage) -> FilesystemUsage {
    FilesystemUsage {
        timestamp: l.timestamp_ns,
        fs_id: Some(FilesystemIdentifier {
            mountpoint: l.mountpoint.display().to_string(),
        }),
        used_bytes: value(l.bytes),
        inodes_used: value(l.inodes),
    }
}

fn interface(i: &InterfaceUsage) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(i.rx_bytes),
        rx_errors: value(i.rx_errors),
        tx_bytes: value(i.tx_bytes),
        tx_errors: value(i.tx_errors),
    }
}

fn network(n: &NetworkUsage) -> CriNetwork {
    CriNetwork {
        timestamp: n.timestamp_ns,
        default_interface: n.default_interface.as_ref().map(interface),
        interfaces: n.interfaces.iter().map(interface).collect(),
    }
}

fn container_stats(s: &ContainerStats) -> CriContainerStats {
    let r = &s.container.record;
    CriContainerStats {
        attributes: Some(ContainerAttributes {
            id: r.id.clone(),
            metadata: s.container.config.metadata.clone(),
            labels: r.labels.clone().into_iter().collect(),
            annotations: r.annotations.clone().into_iter().collect(),
        }),
        cpu: s.usage.as_ref().map(cpu),
        memory: s.usage.as_ref().map(memory),
        writable_layer: s.writable_layer.as_ref().map(layer),
        swap: None,
    }
}

fn pod_stats(s: &PodStats) -> CriPodStats {
    let r = &s.pod.record;
    let timestamp = s.usage.as_ref().map_or(0, |u| u.timestamp_ns);
    CriPodStats {
        attributes: Some(PodSandboxAttributes {
            id: r.id.clone(),
            metadata: s.pod.config.metadata.clone(),
            labels: r.labels.clone().into_iter().collect(),
            annotations: r.annotations.clone().into_iter().collect(),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: s.usage.as_ref().map(cpu),
            memory: s.usage.as_ref().map(memory),
            network: s.network.as_ref().map(network),
            process: s.processes.map(|n| ProcessUsage {
                timestamp,
                process_count: value(n),
            }),
            containers: s.containers.iter().map(container_stats).collect(),
        }),
        windows: None,
    }
}

fn container_matches(c: &Container, f: &ContainerStatsFilter) -> bool {
    let r = &c.record;
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && (f.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&f.pod_sandbox_id))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

fn pod_matches(p: &Sandbox, f: &PodSandboxStatsFilter) -> bool {
    let r = &p.record;
    (f.id.is_empty() || r.id.starts_with(&f.id))
        && f.label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

fn need_id(id: &str, what: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is required")));
    }
    Ok(())
}

pub(super) async fn container(
    stats: Arc<Stats>,
    req: ContainerStatsRequest,
) -> Result<ContainerStatsResponse, Error> {
    need_id(&req.container_id, "container_id")?;
    let span = tracing::info_span!("ContainerStats", container.id = %req.container_id);
    let s = blocking(move || stats.container(&req.container_id))
        .instrument(span)
        .await?;
    Ok(ContainerStatsResponse {
        stats: Some(container_stats(&s)),
    })
}

pub(super) async fn list_containers(
    stats: Arc<Stats>,
    req: ListContainerStatsRequest,
) -> Result<ListContainerStatsResponse, Error> {
    let filter = req.filter.unwrap_or_default();
    let all = blocking(move || stats.containers(|c| container_matches(c, &filter))).await?;
    Ok(ListContainerStatsResponse {
        stats: all.iter().map(container_stats).collect(),
    })
}

pub(super) async fn pod(
    stats: Arc<Stats>,
    req: PodSandboxStatsRequest,
) -> Result<PodSandboxStatsResponse, Error> {
    need_id(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let span = tracing::info_span!("PodSandboxStats", pod.id = %req.pod_sandbox_id);
    let s = blocking(move || stats.pod(&req.pod_sandbox_id))
        .instrument(span)
        .await?;
    Ok(PodSandboxStatsResponse {
        stats: Some(pod_stats(&s)),
    })
}

pub(super) async fn list_pods(
    stats: Arc<Stats>,
    req: ListPodSandboxStatsRequest,
) -> Result<ListPodSandboxStatsResponse, Error> {
    let filter = req.filter.unwrap_or_default();
    let all = blocking(move || stats.pods(|p| pod_matches(p, &filter))).await?;
    Ok(ListPodSandboxStatsResponse {
        stats: all.iter().map(pod_stats).collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_proto::cri::{ContainerConfig, ContainerMetadata};
    use berth_store::ContainerRecord;

    use super::*;
    use crate::stats::{CpuUsage, MemoryUsage};

    fn ctr(id: &str, pod: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            record: ContainerRecord {
                id: id.into(),
                sandbox_id: pod.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                ..Default::default()
            },
            config: ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "web".into(),
                    attempt: 1,
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn container_filters_match_id_and_pod_prefixes_and_exact_labels() {
        let c = ctr("abc123", "pod9", &[("app", "web")]);
        let f = |id: &str, pod: &str, labels: &[(&str, &str)]| ContainerStatsFilter {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            label_selector: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(container_matches(&c, &f("", "", &[])));
        assert!(container_matches(&c, &f("abc", "pod", &[("app", "web")])));
        assert!(!container_matches(&c, &f("abd", "", &[])));
        assert!(!container_matches(&c, &f("", "pod8", &[])));
        assert!(!container_matches(&c, &f("", "", &[("app", "db")])));
    }

    #[test]
    fn a_running_container_reports_cpu_memory_and_layer_an_exited_one_its_layer() {
        let usage = ResourceUsage {
            timestamp_ns: 77,
            cpu: CpuUsage {
                total_ns: 1000,
                nano_cores: None,
            },
            memory: MemoryUsage {
                working_set: 10,
                available: None,
                usage: 12,
                rss: 5,
                page_faults: 3,
                major_page_faults: 0,
            },
        };
        let layer_usage = LayerUsage {
            timestamp_ns: 78,
            mountpoint: "/var/lib/berth/snapshots".into(),
            bytes: 4096,
            inodes: 3,
        };
        let running = container_stats(&ContainerStats {
            container: ctr("c1", "p1", &[("a", "b")]),
            usage: Some(usage),
            writable_layer: Some(layer_usage.clone()),
        });
        let attrs = running.attributes.unwrap();
        assert_eq!(attrs.id, "c1");
        assert_eq!(attrs.metadata.unwrap().name, "web");
        assert_eq!(attrs.labels["a"], "b");
        let cpu = running.cpu.unwrap();
        assert_eq!(cpu.timestamp, 77);
        assert_eq!(cpu.usage_core_nano_seconds, value(1000));
        assert_eq!(cpu.usage_nano_cores, None);
        let mem = running.memory.unwrap();
        assert_eq!(mem.working_set_bytes, value(10));
        assert_eq!(mem.available_bytes, None);
        let fs = running.writable_layer.unwrap();
        assert_eq!(fs.used_bytes, value(4096));
        assert_eq!(fs.inodes_used, value(3));
        assert_eq!(fs.fs_id.unwrap().mountpoint, "/var/lib/berth/snapshots");

        let exited = container_stats(&ContainerStats {
            container: ctr("c2", "p1", &[]),
            usage: None,
            writable_layer: Some(layer_usage),
        });
        assert!(exited.cpu.is_none() && exited.memory.is_none());
        assert!(exited.writable_layer.is_some());
    }
}
