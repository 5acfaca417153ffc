//! ResizePty and Update observed in the guest (issue 21, item 5), through CRI as a
//! kubelet and kubectl drive them:
//! - `kubectl exec -it` sends the terminal's size on the resize channel: `stty size` in
//!   the exec'd shell shows it (not the 24x80 a terminal gets by default);
//! - UpdateContainerResources changes the container's memory limit and CPU quota: its
//!   cgroup in the guest shows the new values.

use hull_tests::containerd::Containerd;
use hull_tests::cri::{self, within, Cri, HANDLER, PAUSE_IMAGE};
use hull_tests::kube_stream;
use k8s_cri::v1::{LinuxContainerConfig, LinuxContainerResources, UpdateContainerResourcesRequest};

const MIB: i64 = 1024 * 1024;

/// The memory.max and cpu.max of the container's own cgroup (v2) in the guest.
const CGROUP_FILES: &str =
    "cg=/sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup); cat $cg/memory.max $cg/cpu.max";

#[test]
fn a_terminal_resize_and_a_resource_update_reach_the_container() {
    if !cri::require_cri("a_terminal_resize_and_a_resource_update_reach_the_container") {
        return;
    }
    let c = Containerd::start_cri(PAUSE_IMAGE);
    cri::import_images(&c);
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(cri::IMAGE).await;
        let config = cri::pod_config("hull-resize", logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let app = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "app",
            "exec sleep 100000",
            Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 128 * MIB,
                    cpu_period: 100_000,
                    cpu_quota: 50_000,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await;

        // The terminal of `kubectl exec -it` is 123 columns by 45 rows.
        let url = cri::exec_tty_url(&mut cri, &app).await;
        let s = tokio::task::spawn_blocking(move || {
            kube_stream::session_sized(&url, Some((123, 45)), Some(b"stty size; exit\n"), |_| false)
        })
        .await
        .expect("exec -it");
        assert!(
            s.stdout_text().contains("45 123\r\n"),
            "stty size in the exec'd shell: {:?} (status {:?})",
            s.stdout_text(),
            s.status
        );

        // Update: the limits as created, then as updated.
        let before = cri::exec(&mut cri, &app, CGROUP_FILES).await;
        assert_eq!(before, format!("{}\n50000 100000\n", 128 * MIB));
        within(
            "UpdateContainerResources",
            cri.runtime
                .update_container_resources(UpdateContainerResourcesRequest {
                    container_id: app.clone(),
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: 200 * MIB,
                        cpu_period: 100_000,
                        cpu_quota: 25_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
        )
        .await
        .expect("UpdateContainerResources");
        let after = cri::exec(&mut cri, &app, CGROUP_FILES).await;
        assert_eq!(after, format!("{}\n25000 100000\n", 200 * MIB));

        cri::stop_and_remove_pod(&mut cri, &pod).await;
    });
    drop(rt);
    c.assert_nothing_left();
}
