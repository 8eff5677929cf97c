//! Agent statistics → containerd's cgroup v2 `Metrics` (what `ctr task metrics` decodes).

use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use husk_protocol::agent::StatsResponse;

/// Type URL containerd registers for cgroup v2 metrics.
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Converts agent stats to cgroup v2 metrics.
pub fn to_metrics(s: &StatsResponse) -> Metrics {
    let mut m = Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = Some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        })
        .into();
    }
    if let Some(mem) = s.memory.as_ref() {
        let st = |k: &str| mem.stat.get(k).copied().unwrap_or(0);
        m.memory = Some(MemoryStat {
            usage: mem.usage_bytes,
            usage_limit: mem.limit_bytes,
            swap_usage: mem.swap_usage_bytes,
            anon: st("anon"),
            file: st("file"),
            kernel_stack: st("kernel_stack"),
            slab: st("slab"),
            sock: st("sock"),
            shmem: st("shmem"),
            file_mapped: st("file_mapped"),
            file_dirty: st("file_dirty"),
            file_writeback: st("file_writeback"),
            anon_thp: st("anon_thp"),
            inactive_anon: st("inactive_anon"),
            active_anon: st("active_anon"),
            inactive_file: st("inactive_file"),
            active_file: st("active_file"),
            unevictable: st("unevictable"),
            slab_reclaimable: st("slab_reclaimable"),
            slab_unreclaimable: st("slab_unreclaimable"),
            pgfault: st("pgfault"),
            pgmajfault: st("pgmajfault"),
            ..Default::default()
        })
        .into();
        m.memory_events = Some(MemoryEvents { oom: mem.oom_events, oom_kill: mem.oom_kill_events, ..Default::default() }).into();
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = Some(PidsStat { current: p.current, limit: p.limit, ..Default::default() }).into();
    }
    if let Some(io) = s.io.as_ref() {
        let usage = io
            .devices
            .iter()
            .map(|d| IOEntry {
                major: d.major.into(),
                minor: d.minor.into(),
                rbytes: d.read_bytes,
                wbytes: d.write_bytes,
                rios: d.read_ios,
                wios: d.write_ios,
                ..Default::default()
            })
            .collect();
        m.io = Some(IOStat { usage, ..Default::default() }).into();
    }
    m
}

/// The metrics packed as containerd expects them in `StatsResponse.stats`.
pub fn to_any(s: &StatsResponse) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    let value = to_metrics(s).write_to_bytes()?;
    Ok(Any { type_url: METRICS_V2_TYPE.into(), value, ..Default::default() })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use husk_protocol::agent::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn agent_stats_map_to_cgroup_v2_metrics() {
        let mut mem = MemoryStats { usage_bytes: 4096, limit_bytes: 1 << 20, oom_kill_events: 2, ..Default::default() };
        mem.stat.insert("anon".into(), 100);
        let s = StatsResponse {
            cpu: Some(CpuStats { usage_usec: 5, ..Default::default() }).into(),
            memory: Some(mem).into(),
            pids: Some(PidsStats { current: 3, limit: 0, ..Default::default() }).into(),
            ..Default::default()
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_V2_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!((m.memory.usage, m.memory.usage_limit, m.memory.anon), (4096, 1 << 20, 100));
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.pids.current, 3);
    }
}
