//! hull's values -> containerd's protocol types: task status, and the agent's cgroup v2
//! statistics -> `io.containerd.cgroups.v2.Metrics` (same fields, one to one).

use containerd_shim_protos::api::Status as TaskStatus;
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, HugeTlbStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, NetworkStat, PidsStat,
};
use containerd_shim_protos::protobuf::MessageField;

use super::process::Status;
use crate::agent_client::ContainerStats;

pub fn status(s: Status) -> TaskStatus {
    match s {
        Status::Created => TaskStatus::CREATED,
        Status::Running => TaskStatus::RUNNING,
        Status::Paused => TaskStatus::PAUSED,
        Status::Stopped => TaskStatus::STOPPED,
    }
}

pub fn metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    if let Some(c) = s.cpu.as_ref() {
        m.cpu = MessageField::some(CPUStat {
            usage_usec: c.usage_usec,
            user_usec: c.user_usec,
            system_usec: c.system_usec,
            nr_periods: c.nr_periods,
            nr_throttled: c.nr_throttled,
            throttled_usec: c.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(x) = s.memory.as_ref() {
        m.memory = MessageField::some(MemoryStat {
            usage: x.usage,
            usage_limit: x.usage_limit,
            swap_usage: x.swap_usage,
            swap_limit: x.swap_limit,
            anon: x.anon,
            file: x.file,
            kernel_stack: x.kernel_stack,
            slab: x.slab,
            sock: x.sock,
            shmem: x.shmem,
            file_mapped: x.file_mapped,
            file_dirty: x.file_dirty,
            file_writeback: x.file_writeback,
            pgfault: x.pgfault,
            pgmajfault: x.pgmajfault,
            inactive_anon: x.inactive_anon,
            active_anon: x.active_anon,
            inactive_file: x.inactive_file,
            active_file: x.active_file,
            unevictable: x.unevictable,
            ..Default::default()
        });
        m.memory_events = MessageField::some(MemoryEvents {
            low: x.low_events,
            high: x.high_events,
            max: x.max_events,
            oom: x.oom_events,
            oom_kill: x.oom_kill_events,
            ..Default::default()
        });
    }
    if let Some(p) = s.pids.as_ref() {
        m.pids = MessageField::some(PidsStat {
            current: p.current,
            limit: p.limit,
            ..Default::default()
        });
    }
    if let Some(io) = s.io.as_ref() {
        m.io = MessageField::some(IOStat {
            usage: io
                .usage
                .iter()
                .map(|e| IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    m.hugetlb = s
        .hugetlb
        .iter()
        .map(|h| HugeTlbStat {
            pagesize: h.pagesize.clone(),
            current: h.current,
            max: h.max,
            ..Default::default()
        })
        .collect();
    if let Some(n) = s.network.as_ref() {
        m.network = n
            .interfaces
            .iter()
            .map(|i| NetworkStat {
                name: i.name.clone(),
                rx_bytes: i.rx_bytes,
                rx_packets: i.rx_packets,
                rx_errors: i.rx_errors,
                rx_dropped: i.rx_dropped,
                tx_bytes: i.tx_bytes,
                tx_packets: i.tx_packets,
                tx_errors: i.tx_errors,
                tx_dropped: i.tx_dropped,
                ..Default::default()
            })
            .collect();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_map_one_to_one() {
        let mut s = ContainerStats::new();
        let mut mem = hull_proto::MemoryStats::new();
        mem.usage = 42;
        mem.oom_kill_events = 2;
        s.memory = MessageField::some(mem);
        let mut pids = hull_proto::PidsStats::new();
        pids.current = 3;
        s.pids = MessageField::some(pids);
        let m = metrics(&s);
        assert_eq!(m.memory.usage, 42);
        assert_eq!(m.memory_events.oom_kill, 2);
        assert_eq!(m.pids.current, 3);
        assert!(m.cpu.is_none());
        assert_eq!(status(Status::Paused), TaskStatus::PAUSED);
    }
}
