//! Records filled in every field, so that a round trip that drops a field fails.

use std::collections::BTreeMap;

use berth_store::{
    ContainerRecord, ContainerState, ImageRecord, LeaseRecord, LeaseResource, SandboxRecord,
    SandboxState,
};

pub fn labels(prefix: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (format!("{prefix}/app"), "web".to_string()),
        (format!("{prefix}/tier"), "front".to_string()),
    ])
}

pub fn sandbox(id: &str) -> SandboxRecord {
    let mut record = SandboxRecord {
        id: id.to_string(),
        name: format!("pod-{id}"),
        namespace: "default".to_string(),
        uid: format!("uid-{id}"),
        attempt: 3,
        state: 0,
        created_at_ns: 1_700_000_000_000_000_000,
        labels: labels("l"),
        annotations: labels("a"),
        runtime_handler: "runc".to_string(),
        netns_path: format!("/run/netns/{id}"),
        log_directory: format!("/var/log/pods/{id}"),
        config: vec![0, 1, 2, 255],
        ips: vec!["10.88.0.5".to_string()],
        shim_address: format!("unix:///run/berth/shims/{id}/shim.sock"),
        shim_pid: 4242,
        pid_holder_pid: 4243,
    };
    record.set_state(SandboxState::Ready);
    record
}

pub fn container(id: &str, sandbox_id: &str) -> ContainerRecord {
    let mut record = ContainerRecord {
        id: id.to_string(),
        sandbox_id: sandbox_id.to_string(),
        name: format!("ctr-{id}"),
        attempt: 1,
        state: 0,
        image_ref: "sha256:0123".to_string(),
        created_at_ns: 1,
        started_at_ns: 2,
        finished_at_ns: 3,
        exit_code: -9,
        reason: "Error".to_string(),
        message: "killed".to_string(),
        labels: labels("l"),
        annotations: labels("a"),
        log_path: format!("{id}/0.log"),
        config: vec![42; 64],
        resources: Some(vec![7; 16]),
        resources_update: None,
    };
    record.set_state(ContainerState::Exited);
    record
}

pub fn image(id: &str) -> ImageRecord {
    ImageRecord {
        id: id.to_string(),
        repo_tags: vec![
            "docker.io/library/busybox:latest".to_string(),
            "b:1".to_string(),
        ],
        repo_digests: vec!["docker.io/library/busybox@sha256:abcd".to_string()],
        size: u64::MAX,
        pinned: true,
        config: b"{\"architecture\":\"amd64\"}".to_vec(),
    }
}

pub fn lease(id: &str) -> LeaseRecord {
    LeaseRecord {
        id: id.to_string(),
        created_at_ns: 10,
        expires_at_ns: 20,
        resources: vec![
            LeaseResource {
                kind: "content".to_string(),
                id: "sha256:aa".to_string(),
            },
            LeaseResource {
                kind: "snapshot".to_string(),
                id: "overlay/7".to_string(),
            },
        ],
    }
}
