//! How big a pod's VM is: memory = limit + overhead (never below the config's size) and
//! vCPUs from the CPU quota, `hull run`'s rule, from the pod's resources when CRI gives
//! them, else the first container's. With a pod memory limit the VM is never larger
//! than that limit: a VM sized above its pod's cgroup gets the VMM OOM-killed on the
//! host. The host's own limits (the pod's cgroup and its parents) are applied on top by
//! [`super::host_cgroup::enter`].

use super::spec::ContainerSpec;
use super::ShimError;
use crate::config::Config;
use crate::sandbox::SandboxSpec;

/// CRI's pod-level resources on the sandbox container (containerd 1.7+).
pub const ANNOTATION_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANNOTATION_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANNOTATION_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// The smallest guest hull boots (kernel, agent, a small container).
pub const MIN_GUEST_MIB: u32 = 64;

/// The VM for a task or pod whose first container is `spec`.
pub fn sandbox_spec(config: &Config, spec: &ContainerSpec) -> Result<SandboxSpec, ShimError> {
    let num = |key: &str| {
        spec.annotation(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
    };
    let pod_memory = num(ANNOTATION_SANDBOX_MEMORY).map(|v| v as u64);
    let pod_cpus = match (
        num(ANNOTATION_SANDBOX_CPU_QUOTA),
        num(ANNOTATION_SANDBOX_CPU_PERIOD),
    ) {
        (Some(q), Some(p)) => Some(q as f64 / p as f64),
        _ => None,
    };
    let mut s = crate::run::prepare::sandbox_spec(
        config,
        pod_memory.or(spec.memory_limit()),
        pod_cpus.or(spec.cpus()),
        false,
    );
    if let Some(limit) = pod_memory {
        let limit_mib = u32::try_from(limit >> 20).unwrap_or(u32::MAX);
        if limit_mib < MIN_GUEST_MIB {
            return Err(ShimError::InvalidArgument(format!(
                "the pod's memory limit ({limit} bytes, {ANNOTATION_SANDBOX_MEMORY}) is below the smallest VM hull boots ({MIN_GUEST_MIB} MiB)"
            )));
        }
        s.memory_mib = s.memory_mib.min(limit_mib);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: serde_json::Value, memory: Option<i64>) -> ContainerSpec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "linux": {}
        });
        if let Some(m) = memory {
            v["linux"]["resources"] = serde_json::json!({"memory": {"limit": m}});
        }
        ContainerSpec::parse(&serde_json::to_vec(&v).expect("json")).expect("spec")
    }

    #[test]
    fn vm_size_from_pod_or_container_never_above_the_pod_limit() {
        let config = Config::default();
        let base = config.guest.memory_mib;
        let s = sandbox_spec(&config, &spec(serde_json::json!({}), None)).expect("plain");
        assert_eq!(s.memory_mib, base);
        // A container limit: limit + overhead.
        let s =
            sandbox_spec(&config, &spec(serde_json::json!({}), Some(512 << 20))).expect("limit");
        assert_eq!(s.memory_mib, 512 + 128);
        // A pod limit: the VM fits in it, whatever the config's default.
        let pod = |bytes: u64| {
            serde_json::json!({ANNOTATION_SANDBOX_MEMORY: bytes.to_string(),
            ANNOTATION_SANDBOX_CPU_QUOTA: "250000", ANNOTATION_SANDBOX_CPU_PERIOD: "100000"})
        };
        let s = sandbox_spec(&config, &spec(pod(1 << 30), None)).expect("pod 1G");
        assert_eq!((s.memory_mib, s.vcpus), (1024, 3));
        let s = sandbox_spec(&config, &spec(pod(128 << 20), None)).expect("pod 128M");
        assert_eq!(s.memory_mib, 128);
        let e = sandbox_spec(&config, &spec(pod(16 << 20), None)).expect_err("too small");
        assert!(e.to_string().contains(ANNOTATION_SANDBOX_MEMORY), "{e}");
    }
}
