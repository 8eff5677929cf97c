//! The size of a pod's VM. containerd's CRI plugin passes what kubelet computed for the pod
//! (the sum of its containers' limits, `LinuxPodSandboxConfig.resources`) as annotations of the
//! sandbox container; the VM gets the configured base (`[vm] vcpus`, `memory`: the guest's own
//! kernel, agent and page cache) plus that, and a pod asking for more than `[vm] max_vcpus` /
//! `max_memory` is refused. A `ctr run` container (no annotations) gets the base.

use std::collections::HashMap;

use husk_config::{MemSize, VmDefaults};

use crate::error::{Result, ShimError};

/// CPU CFS quota of the pod (µs per period), from kubelet through containerd.
pub const CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// CPU CFS period of the pod (µs).
pub const CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// Memory limit of the pod (bytes).
pub const MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// Guest memory is handed out in these steps (the guest's memory model likes 2 MiB).
const MEMORY_STEP: u64 = 2 << 20;

/// vCPUs and memory of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory.
    pub memory: MemSize,
}

fn number(annotations: &HashMap<String, String>, key: &str) -> Result<i64> {
    match annotations.get(key) {
        None => Ok(0),
        Some(v) => v.trim().parse::<i64>().map_err(|_| ShimError::invalid(format!("annotation {key}"), format!("{v:?} is not a number"))),
    }
}

/// The VM size for a sandbox with `annotations`, bounded by `vm`'s maxima.
pub fn vm_size(annotations: &HashMap<String, String>, vm: &VmDefaults) -> Result<VmSize> {
    let quota = number(annotations, CPU_QUOTA)?;
    let period = number(annotations, CPU_PERIOD)?;
    let memory = number(annotations, MEMORY)?;
    let extra_cpus = if quota > 0 {
        let period = if period > 0 { period } else { 100_000 };
        u32::try_from((quota + period - 1) / period).unwrap_or(u32::MAX)
    } else {
        0
    };
    let vcpus = vm.vcpus.saturating_add(extra_cpus);
    if vcpus > vm.max_vcpus {
        return Err(ShimError::invalid(
            "pod resources",
            format!(
                "the pod needs {vcpus} vCPUs ({} base + {extra_cpus} for {CPU_QUOTA}={quota} per {CPU_PERIOD}={period}), more than [vm] max_vcpus = {}",
                vm.vcpus, vm.max_vcpus
            ),
        ));
    }
    let extra = u64::try_from(memory.max(0)).unwrap_or(0);
    let total = vm.memory.bytes().saturating_add(extra).div_ceil(MEMORY_STEP).saturating_mul(MEMORY_STEP);
    if total > vm.max_memory.bytes() {
        return Err(ShimError::invalid(
            "pod resources",
            format!("the pod needs {} of memory ({} base + {MEMORY}={extra}), more than [vm] max_memory = {}", MemSize(total), vm.memory, vm.max_memory),
        ));
    }
    Ok(VmSize { vcpus, memory: MemSize(total) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn base_plus_what_the_pod_asks() {
        let vm = VmDefaults::default();
        assert_eq!(vm_size(&HashMap::new(), &vm).unwrap(), VmSize { vcpus: 1, memory: vm.memory });
        let s = vm_size(&ann(&[(CPU_QUOTA, "150000"), (CPU_PERIOD, "100000"), (MEMORY, "134217728")]), &vm).unwrap();
        assert_eq!(s.vcpus, 3);
        assert_eq!(s.memory.bytes(), vm.memory.bytes() + (128 << 20));
        // CRI's "no limit" values.
        let s = vm_size(&ann(&[(CPU_QUOTA, "0"), (CPU_PERIOD, "100000"), (MEMORY, "0")]), &vm).unwrap();
        assert_eq!((s.vcpus, s.memory), (1, vm.memory));
        let s = vm_size(&ann(&[(MEMORY, "1000")]), &vm).unwrap();
        assert_eq!(s.memory.bytes() % MEMORY_STEP, 0);
    }

    #[test]
    fn too_much_is_refused_naming_the_cause() {
        let vm = VmDefaults::default();
        let e = vm_size(&ann(&[(CPU_QUOTA, "6400000"), (CPU_PERIOD, "100000")]), &vm).unwrap_err().to_string();
        assert!(e.contains("max_vcpus = 8") && e.contains(CPU_QUOTA), "{e}");
        let e = vm_size(&ann(&[(MEMORY, &(64u64 << 30).to_string())]), &vm).unwrap_err().to_string();
        assert!(e.contains("max_memory") && e.contains(MEMORY), "{e}");
        let e = vm_size(&ann(&[(MEMORY, "lots")]), &vm).unwrap_err().to_string();
        assert!(e.contains("\"lots\""), "{e}");
    }
}
