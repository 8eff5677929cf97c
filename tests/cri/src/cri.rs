//! A CRI v1 client over containerd's unix socket: every call bounded by a timeout, every
//! failure naming the call, its subject and the runtime's status text.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// What can go wrong talking CRI.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the CRI socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}({what}) failed: {}: {}", .status.code(), .status.message())]
    Rpc { call: &'static str, what: String, status: tonic::Status },
    #[error("{call}({what}) got no answer within {secs} s")]
    Timeout { call: &'static str, what: String, secs: u64 },
    #[error("{call}({what}): the reply has no {field}")]
    Missing { call: &'static str, what: String, field: &'static str },
}

impl CriError {
    /// The gRPC status code of a failed call, if the runtime answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CriError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, CriError>;

/// A connected CRI client (runtime and image services on one channel).
#[derive(Clone)]
pub struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    timeout: Duration,
}

impl Cri {
    /// Connects to the unix socket `path`; each call may take up to `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Cri> {
        let sock = path.to_path_buf();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?)) }
            }))
            .await
            .map_err(|source| CriError::Connect { path: path.to_path_buf(), source })?;
        Ok(Cri { rt: RuntimeServiceClient::new(channel.clone()), img: ImageServiceClient::new(channel), timeout })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn call<T, F>(&self, call: &'static str, what: &str, limit: Duration, fut: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(CriError::Rpc { call, what: what.to_string(), status }),
            Err(_) => Err(CriError::Timeout { call, what: what.to_string(), secs: limit.as_secs() }),
        }
    }

    pub async fn version(&self) -> Result<VersionResponse> {
        self.call("Version", "", self.timeout, self.rt.clone().version(VersionRequest { version: "v1".into() })).await
    }

    pub async fn status(&self) -> Result<StatusResponse> {
        self.call("Status", "", self.timeout, self.rt.clone().status(StatusRequest { verbose: false })).await
    }

    pub async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let req = ImageStatusRequest { image: Some(ImageSpec { image: image.into(), ..Default::default() }), verbose: false };
        Ok(self.call("ImageStatus", image, self.timeout, self.img.clone().image_status(req)).await?.image)
    }

    pub async fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String> {
        let what = format!("{}, handler {handler}", config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default());
        let req = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        Ok(self.call("RunPodSandbox", &what, self.timeout, self.rt.clone().run_pod_sandbox(req)).await?.pod_sandbox_id)
    }

    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let req = StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("StopPodSandbox", id, self.timeout, self.rt.clone().stop_pod_sandbox(req)).await.map(drop)
    }

    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let req = RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("RemovePodSandbox", id, self.timeout, self.rt.clone().remove_pod_sandbox(req)).await.map(drop)
    }

    pub async fn pod_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        let r = self.call("PodSandboxStatus", id, self.timeout, self.rt.clone().pod_sandbox_status(req)).await?;
        r.status.ok_or(CriError::Missing { call: "PodSandboxStatus", what: id.into(), field: "status" })
    }

    pub async fn list_pods(&self, filter: PodSandboxFilter) -> Result<Vec<PodSandbox>> {
        let req = ListPodSandboxRequest { filter: Some(filter) };
        Ok(self.call("ListPodSandbox", "", self.timeout, self.rt.clone().list_pod_sandbox(req)).await?.items)
    }

    pub async fn create_container(&self, pod_id: &str, config: &ContainerConfig, pod_config: &PodSandboxConfig) -> Result<String> {
        let what = format!("{} in pod {pod_id}", config.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default());
        let req = CreateContainerRequest { pod_sandbox_id: pod_id.into(), config: Some(config.clone()), sandbox_config: Some(pod_config.clone()) };
        Ok(self.call("CreateContainer", &what, self.timeout, self.rt.clone().create_container(req)).await?.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let req = StartContainerRequest { container_id: id.into() };
        self.call("StartContainer", id, self.timeout, self.rt.clone().start_container(req)).await.map(drop)
    }

    /// Stops with a grace period of `grace_secs` before SIGKILL.
    pub async fn stop_container(&self, id: &str, grace_secs: i64) -> Result<()> {
        let req = StopContainerRequest { container_id: id.into(), timeout: grace_secs };
        let limit = self.timeout + Duration::from_secs(grace_secs.unsigned_abs());
        self.call("StopContainer", id, limit, self.rt.clone().stop_container(req)).await.map(drop)
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let req = RemoveContainerRequest { container_id: id.into() };
        self.call("RemoveContainer", id, self.timeout, self.rt.clone().remove_container(req)).await.map(drop)
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let req = ContainerStatusRequest { container_id: id.into(), verbose: false };
        let r = self.call("ContainerStatus", id, self.timeout, self.rt.clone().container_status(req)).await?;
        r.status.ok_or(CriError::Missing { call: "ContainerStatus", what: id.into(), field: "status" })
    }

    /// The containers of a pod.
    pub async fn list_containers(&self, pod_id: &str) -> Result<Vec<Container>> {
        let filter = ContainerFilter { pod_sandbox_id: pod_id.into(), ..Default::default() };
        let req = ListContainersRequest { filter: Some(filter) };
        Ok(self.call("ListContainers", pod_id, self.timeout, self.rt.clone().list_containers(req)).await?.containers)
    }

    /// ExecSync with the runtime's `timeout_secs` (0: none); the client waits that long plus
    /// its own per-call timeout.
    pub async fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<ExecSyncResponse> {
        let what = format!("{id}, {cmd:?}");
        let req = ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: timeout_secs };
        let limit = self.timeout + Duration::from_secs(timeout_secs.unsigned_abs());
        self.call("ExecSync", &what, limit, self.rt.clone().exec_sync(req)).await
    }

    pub async fn update_resources(&self, id: &str, linux: LinuxContainerResources) -> Result<()> {
        let req = UpdateContainerResourcesRequest { container_id: id.into(), linux: Some(linux), ..Default::default() };
        self.call("UpdateContainerResources", id, self.timeout, self.rt.clone().update_container_resources(req)).await.map(drop)
    }

    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let req = ContainerStatsRequest { container_id: id.into() };
        let r = self.call("ContainerStats", id, self.timeout, self.rt.clone().container_stats(req)).await?;
        r.stats.ok_or(CriError::Missing { call: "ContainerStats", what: id.into(), field: "stats" })
    }

    pub async fn list_container_stats(&self, filter: ContainerStatsFilter) -> Result<Vec<ContainerStats>> {
        let req = ListContainerStatsRequest { filter: Some(filter) };
        Ok(self.call("ListContainerStats", "", self.timeout, self.rt.clone().list_container_stats(req)).await?.stats)
    }

    pub async fn pod_stats(&self, id: &str) -> Result<PodSandboxStats> {
        let req = PodSandboxStatsRequest { pod_sandbox_id: id.into() };
        let r = self.call("PodSandboxStats", id, self.timeout, self.rt.clone().pod_sandbox_stats(req)).await?;
        r.stats.ok_or(CriError::Missing { call: "PodSandboxStats", what: id.into(), field: "stats" })
    }
}
