//! CRI latency as kubelet sees it: gRPC calls on one open connection, with no crictl process
//! started per call (crictl's start-up and its extra ImageStatus add 20 to 30 ms a call, the
//! same for both runtimes, which flattens their ratio).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use berth_proto::cri::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxPodSandboxConfig, ListContainerStatsRequest,
    ListPodSandboxStatsRequest, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A CRI RuntimeService client on a unix socket, driven from synchronous code.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl CriClient {
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path: PathBuf = socket.to_path_buf();
        let channel = rt
            .block_on(
                // The URI is required by tonic and ignored: the connector dials the socket.
                Endpoint::from_static("http://cri.invalid").connect_with_connector(
                    tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }),
                ),
            )
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(CriClient {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "bench".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            log_directory: log_dir.join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox; the pod id and the call's time.
    pub fn run_pod(&mut self, config: &PodSandboxConfig) -> Result<(String, Duration)> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            ..Default::default()
        };
        let start = Instant::now();
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(req))?
            .into_inner()
            .pod_sandbox_id;
        Ok((id, start.elapsed()))
    }

    /// CreateContainer + StartContainer of `image` sleeping in pod `pod`.
    pub fn start_container(
        &mut self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        name: &str,
        image: &str,
    ) -> Result<(String, Duration)> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig::default()),
            ..Default::default()
        };
        let create = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let start = Instant::now();
        let id = self
            .rt
            .block_on(self.client.create_container(create))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))?;
        Ok((id, start.elapsed()))
    }

    /// ExecSync of `true`.
    pub fn exec_sync(&mut self, id: &str) -> Result<Duration> {
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            timeout: 10,
        };
        let start = Instant::now();
        let resp = self.rt.block_on(self.client.exec_sync(req))?.into_inner();
        anyhow::ensure!(resp.exit_code == 0, "exec exited {}", resp.exit_code);
        Ok(start.elapsed())
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub fn remove_pod(&mut self, id: &str) -> Result<Duration> {
        let start = Instant::now();
        self.rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        self.rt
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))?;
        Ok(start.elapsed())
    }

    /// ListContainerStats of every container: how many came back and how long it took.
    pub fn list_container_stats(&mut self) -> Result<(usize, Duration)> {
        let start = Instant::now();
        let resp = self
            .rt
            .block_on(
                self.client
                    .list_container_stats(ListContainerStatsRequest::default()),
            )?
            .into_inner();
        Ok((resp.stats.len(), start.elapsed()))
    }

    /// ListPodSandboxStats of every pod: how many came back and how long it took.
    pub fn list_pod_stats(&mut self) -> Result<(usize, Duration)> {
        let start = Instant::now();
        let resp = self
            .rt
            .block_on(
                self.client
                    .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()),
            )?
            .into_inner();
        Ok((resp.stats.len(), start.elapsed()))
    }
}
