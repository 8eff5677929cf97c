//! Pod and container configurations as kubelet sends them.

use std::path::PathBuf;

use k8s_cri::v1::*;

/// The namespaces kubelet asks for: the pod's network and IPC, and the pod's PID namespace
/// (shareProcessNamespace), another container's (`target`: NamespaceMode TARGET, as for an
/// ephemeral debug container) or one per container.
fn namespaces(share_pid: bool, target: Option<&str>) -> NamespaceOption {
    let pid = match (target, share_pid) {
        (Some(_), _) => NamespaceMode::Target,
        (None, true) => NamespaceMode::Pod,
        (None, false) => NamespaceMode::Container,
    };
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        target_id: target.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// A pod of one run: names, where its logs go, and the namespaces kubelet asks for.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name (unique per run and handler).
    pub name: String,
    /// Pod UID; also names its cgroup (kubelet: /kubepods/besteffort/pod<uid>).
    pub uid: String,
    pub namespace: String,
    pub hostname: String,
    pub log_dir: PathBuf,
    pub dns: Option<DnsConfig>,
    /// One PID namespace for the whole pod (shareProcessNamespace).
    pub share_pid: bool,
    /// The pod's port mappings (hostPort of its containers' ports).
    pub port_mappings: Vec<PortMapping>,
    /// What kubelet sums from the containers' limits (LinuxPodSandboxConfig.resources).
    pub resources: Option<LinuxContainerResources>,
}

impl PodSpec {
    /// The cgroup parent kubelet (cgroupfs driver) gives a BestEffort pod.
    pub fn cgroup_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }

    pub fn config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata { name: self.name.clone(), uid: self.uid.clone(), namespace: self.namespace.clone(), attempt: 0 }),
            hostname: self.hostname.clone(),
            log_directory: self.log_dir.display().to_string(),
            dns_config: self.dns.clone(),
            port_mappings: self.port_mappings.clone(),
            labels: [("io.kubernetes.pod.name".to_string(), self.name.clone()), ("husk-cri/run".to_string(), self.namespace.clone())].into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(LinuxSandboxSecurityContext { namespace_options: Some(namespaces(self.share_pid, None)), ..Default::default() }),
                resources: self.resources.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container of a pod: its command and what kubelet would set from the pod spec.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub user: Option<(i64, i64)>,
    pub readonly_rootfs: bool,
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    pub memory_limit: Option<i64>,
    pub share_pid: bool,
    /// Another container whose PID namespace this one joins (NamespaceMode TARGET).
    pub pid_target: Option<String>,
    /// Volumes as kubelet passes them (host path, container path, read-only).
    pub mounts: Vec<Mount>,
}

impl ContainerSpec {
    /// A container running `sh -c SCRIPT`.
    pub fn sh(name: &str, image: &str, script: &str) -> ContainerSpec {
        ContainerSpec::cmd(name, image, &["sh", "-c", script])
    }

    /// A container running `argv`.
    pub fn cmd(name: &str, image: &str, argv: &[&str]) -> ContainerSpec {
        ContainerSpec { name: name.into(), image: image.into(), command: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    /// Adds a volume: `host` at `container`, read-only if `readonly` (private propagation,
    /// kubelet's default).
    pub fn mount(&mut self, host: &std::path::Path, container: &str, readonly: bool) -> &mut Self {
        self.mounts.push(Mount { container_path: container.into(), host_path: host.display().to_string(), readonly, ..Default::default() });
        self
    }

    /// The log file, relative to the pod's log directory (kubelet: <name>/<attempt>.log).
    pub fn log_path(&self) -> String {
        format!("{}/0.log", self.name)
    }

    pub fn config(&self) -> ContainerConfig {
        let mut sc = LinuxContainerSecurityContext {
            readonly_rootfs: self.readonly_rootfs,
            namespace_options: Some(namespaces(self.share_pid, self.pid_target.as_deref())),
            ..Default::default()
        };
        if let Some((uid, gid)) = self.user {
            sc.run_as_user = Some(Int64Value { value: uid });
            sc.run_as_group = Some(Int64Value { value: gid });
        }
        if !self.add_caps.is_empty() || !self.drop_caps.is_empty() {
            sc.capabilities = Some(Capability { add_capabilities: self.add_caps.clone(), drop_capabilities: self.drop_caps.clone(), ..Default::default() });
        }
        let resources = LinuxContainerResources { memory_limit_in_bytes: self.memory_limit.unwrap_or(0), ..Default::default() };
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: self.name.clone(), attempt: 0 }),
            image: Some(ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: self.command.clone(),
            mounts: self.mounts.clone(),
            log_path: self.log_path(),
            labels: [("io.kubernetes.container.name".to_string(), self.name.clone())].into(),
            linux: Some(LinuxContainerConfig { resources: Some(resources), security_context: Some(sc) }),
            ..Default::default()
        }
    }
}
