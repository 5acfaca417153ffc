//! The warm pool (`[pool] size`) under a real containerd: `ctr run` tasks take pool
//! VMs (the task runs in the VM that was idle, charged to the task's cgroup within its
//! memory limit), the pool refills, a task the pool VM does not fit boots its own,
//! and a pool VM that dies, or whose keeper dies, leaves nothing behind; `hull pool
//! drain` empties the pool. A CRI pod takes a pool VM too: the VM's NIC is wired to
//! the pod's veth after the take, with the veth's MAC, and the pod is reached by IP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_tests::containerd::{Containerd, IMAGE, RUNTIME};
use hull_tests::{http_get, httpd, output_text, wait_for};

/// A member of `hull pool status`: (sandbox id, idle, keeper pid, size).
fn pool_members(c: &Containerd) -> Vec<(String, bool, i32, String)> {
    let out = hull(c)
        .args(["pool", "status"])
        .output()
        .expect("hull pool status");
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 5, "a member line: {l:?}");
            (
                w[0].to_string(),
                w[1] == "idle",
                w[3].parse().expect("keeper pid"),
                w[4].to_string(),
            )
        })
        .collect()
}

fn hull(c: &Containerd) -> Command {
    let mut h = c.state.hull();
    h.env(hull_runtime::config::CONFIG_ENV, c.hull_config_path());
    h
}

/// `hull pool fill --wait`: the pool's one VM, idle.
fn filled(c: &Containerd) -> (String, i32) {
    let out = hull(c)
        .args(["pool", "fill", "--wait", "240"])
        .output()
        .expect("hull pool fill");
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        pool_logs(c)
    );
    let members = pool_members(c);
    assert_eq!(members.len(), 1, "{members:?}");
    assert!(members[0].1, "idle: {members:?}");
    assert_eq!(members[0].3, "1x256MiB");
    (members[0].0.clone(), members[0].2)
}

fn pool_logs(c: &Containerd) -> String {
    let dir = c.state.path().join("pool");
    let mut text = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "log") {
            text.push_str(&format!("--- {} ---\n", e.path().display()));
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    text
}

/// The `hull ps` row of sandbox `id`, split in columns.
fn ps_row(c: &Containerd, id: &str) -> Option<Vec<String>> {
    let out = c.state.hull().arg("ps").output().expect("hull ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(id))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

fn vm_pid(c: &Containerd, id: &str) -> i32 {
    let row = ps_row(c, id).unwrap_or_else(|| panic!("hull ps has no {id}"));
    row[2]
        .parse()
        .unwrap_or_else(|_| panic!("no VM pid in {row:?}"))
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
}

/// The task's memory cgroup dir (ctr puts task ID of namespace default at
/// `/default/ID`), and whether it is cgroup v1.
fn task_memory_cgroup(id: &str) -> (PathBuf, bool) {
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    let root = if v1 {
        Path::new("/sys/fs/cgroup/memory")
    } else {
        Path::new("/sys/fs/cgroup")
    };
    (root.join("default").join(id), v1)
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[test]
fn tasks_take_pool_vms_within_their_cgroup_and_the_pool_refills() {
    if !hull_tests::containerd::require_containerd(
        "tasks_take_pool_vms_within_their_cgroup_and_the_pool_refills",
    ) {
        return;
    }
    let c = Containerd::start_with_hull_config("[pool]\nsize = 1\n");
    let (first, _) = filled(&c);
    let row = ps_row(&c, &first).expect("the pool VM in hull ps");
    assert_eq!(row[4], "pool", "hull ps: {row:?}");

    // A task with a memory limit the pool VM fits (64 MiB + 128: below its 256 MiB)
    // takes it.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "67108864",
        IMAGE,
        "pool-p1",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        c.sandbox_of("pool-p1"),
        first,
        "pool-p1 runs in the pool VM"
    );
    assert_eq!(ps_row(&c, &first).expect("row")[4], "live");
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "pool-p1",
        "echo",
        "from-the-pool",
    ]);
    assert!(exec.status.success(), "{}", output_text(&exec));
    assert_eq!(
        String::from_utf8_lossy(&exec.stdout).trim(),
        "from-the-pool"
    );

    // Its VM's processes are in the task's cgroup. What the VM was charged while idle
    // stays charged to its pool cgroup (charges never move), so the limit a cold pod
    // would get (VM 256 MiB + host overhead 192 MiB) is lowered by exactly that: the
    // limit still bounds all the VM holds.
    let pid = vm_pid(&c, &first);
    let (cg, v1) = task_memory_cgroup("pool-p1");
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "VM pid {pid} not in {}: {procs}",
        cg.display()
    );
    let (limit_file, usage_file) = if v1 {
        ("memory.limit_in_bytes", "memory.usage_in_bytes")
    } else {
        ("memory.max", "memory.current")
    };
    let log = c.log();
    let lowered_line = log
        .lines()
        .find(|l| l.contains("memory limit lowered by what the VM holds outside this cgroup"))
        .unwrap_or_else(|| panic!("no lowered limit in the shim's log:\n{log}"));
    let field = |name: &str| -> u64 {
        lowered_line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {lowered_line:?}"))
    };
    let (cold_limit, precharged, lowered) = (field("limit"), field("precharged"), field("lowered"));
    assert_eq!(cold_limit, (256 + 192) << 20, "{lowered_line}");
    assert_eq!(lowered, cold_limit - precharged, "{lowered_line}");
    assert_eq!(read_u64(&cg.join(limit_file)), lowered);
    let usage = read_u64(&cg.join(usage_file));
    let rss = rss_bytes(pid);
    eprintln!(
        "pool VM in pool-p1's cgroup ({}): charged before the take {} MiB, in the pod's cgroup {} MiB, limit {} MiB, VM RSS {} MiB",
        if v1 { "v1" } else { "v2" },
        precharged >> 20,
        usage >> 20,
        lowered >> 20,
        rss >> 20
    );
    assert!(
        precharged >= rss / 2,
        "the idle VM's memory was charged to its pool cgroup: {precharged} of RSS {rss}"
    );
    assert!(usage <= lowered);
    // Its pool cgroup is gone.
    let pool_cg = cg
        .parent()
        .and_then(Path::parent)
        .expect("hierarchy root")
        .join("hull-pool")
        .join(&first);
    assert!(!pool_cg.exists(), "{} left", pool_cg.display());

    // The pool refills in the background with another VM.
    let second = wait_for("the pool to refill", Duration::from_secs(240), || {
        pool_members(&c)
            .into_iter()
            .find(|m| m.1 && m.0 != first)
            .map(|m| m.0)
    });

    // A task whose VM is bigger (512 MiB + 128) than any pool VM boots its own and
    // leaves the pool alone.
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        "536870912",
        IMAGE,
        "pool-p2",
        "echo",
        "big",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "big");
    assert!(
        pool_members(&c).iter().any(|m| m.0 == second && m.1),
        "the pool VM is still idle"
    );

    // A task whose VM only its Create can judge (containerd's runtime option names
    // another config file) takes the pool VM, finds it does not fit, destroys it and
    // boots its own; it runs all the same.
    let other = c.dir().join("other-hull.toml");
    std::fs::write(&other, "[pool]\nsize = 1\n").expect("other config");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        other.to_str().expect("utf-8 path"),
        IMAGE,
        "pool-p2b",
        "echo",
        "other",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "other");
    assert!(
        c.log().contains("the pool VM does not fit the pod"),
        "{}",
        c.log()
    );
    assert!(ps_row(&c, &second).is_none(), "the unfit pool VM is gone");

    // `ctr run --rm` through the pool: output and exit code.
    let third = wait_for("the pool to refill", Duration::from_secs(240), || {
        pool_members(&c).into_iter().find(|m| m.1).map(|m| m.0)
    });
    let out = c.run_rm("pool-p3", &["sh", "-c", "echo pooled; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pooled");
    assert!(ps_row(&c, &third).is_none(), "p3's pool VM went with it");

    // An idle pool VM that dies leaves the pool and leaves nothing.
    let (dying, _) = filled(&c);
    kill9(vm_pid(&c, &dying));
    wait_for("the dead pool VM to leave", Duration::from_secs(30), || {
        (pool_members(&c).iter().all(|m| m.0 != dying) && ps_row(&c, &dying).is_none())
            .then_some(())
    });

    // A keeper killed while idle takes its VM with it; `hull gc` removes its state.
    let (orphaned, keeper) = filled(&c);
    let orphan_vm = vm_pid(&c, &orphaned);
    kill9(keeper);
    wait_for("the orphaned VM to die", Duration::from_secs(30), || {
        (!Path::new(&format!("/proc/{orphan_vm}")).exists()).then_some(())
    });
    assert!(pool_members(&c).is_empty());
    let gc = c.state.hull().arg("gc").output().expect("hull gc");
    assert!(gc.status.success(), "{}", output_text(&gc));
    assert!(ps_row(&c, &orphaned).is_none(), "{}", output_text(&gc));

    // Drain: the idle VM is destroyed.
    let (drained, _) = filled(&c);
    let out = hull(&c)
        .args(["pool", "drain"])
        .output()
        .expect("hull pool drain");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "drained 1 pool VM(s)"
    );
    assert!(pool_members(&c).is_empty());

    c.kill_and_remove("pool-p1");
    c.assert_nothing_left();
    let left: Vec<_> = std::fs::read_dir(c.state.path().join("pool"))
        .expect("pool dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "fill.lock")
        .collect();
    assert!(left.is_empty(), "pool files left: {left:?}");
    // No pool VM's cgroup is left, whatever became of it.
    let (task_cg, _) = task_memory_cgroup("x");
    let pool_cgroups = task_cg
        .parent()
        .and_then(Path::parent)
        .expect("hierarchy root")
        .join("hull-pool");
    for id in [&first, &second, &third, &dying, &orphaned, &drained] {
        assert!(
            !pool_cgroups.join(id).exists(),
            "{}/{id} left",
            pool_cgroups.display()
        );
    }
}

#[test]
fn a_cri_pod_takes_a_pool_vm_and_its_network_is_wired_into_it() {
    use hull_tests::cri::{self, Cri, HANDLER, IMAGE as CRI_IMAGE, PAUSE_IMAGE};
    if !cri::require_cri("a_cri_pod_takes_a_pool_vm_and_its_network_is_wired_into_it") {
        return;
    }
    let c = Containerd::start_cri_with_hull_config(PAUSE_IMAGE, "[pool]\nsize = 1\n");
    cri::import_images(&c);
    let (pooled, _) = filled(&c);
    let logs = cri::logs_dir();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut cri = Cri::connect(&c.socket()).await;
        cri.wait_for_image(PAUSE_IMAGE).await;
        cri.wait_for_image(CRI_IMAGE).await;
        let config = cri::pod_config("pool-web", logs.path());
        let pod = cri::run_pod(&mut cri, &config, HANDLER).await;
        let web = cri::start_container(
            &mut cri,
            &pod,
            &config,
            "web",
            &httpd("hello-from-a-pool-vm"),
            None,
        )
        .await;
        let ps = c.state.hull().arg("ps").output().expect("hull ps");
        let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
        let row = ps
            .lines()
            .find(|l| l.contains(pod.as_str()))
            .unwrap_or_else(|| panic!("hull ps has no pod {pod}:\n{ps}"));
        assert!(
            row.starts_with(&pooled),
            "the pod runs in the pool VM {pooled}: {row}"
        );
        assert!(
            c.log().contains("the pod runs in the pool VM"),
            "{}",
            c.log()
        );
        // The pod's IP, from the guest, reached from the host over CNI's bridge.
        let addr = cri::exec(&mut cri, &web, "ip -o -4 addr show eth0 | awk '{print $4}'").await;
        let ip = addr
            .trim()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(!ip.is_empty(), "eth0 has no IPv4 address: {addr:?}");
        let body = wait_for(
            "the pool pod's httpd from the host",
            Duration::from_secs(90),
            || http_get(&ip),
        );
        assert_eq!(body, "hello-from-a-pool-vm");
        // The guest's eth0 has the veth's MAC, not the one the pool VM booted with.
        let guest_mac = cri::exec(&mut cri, &web, "cat /sys/class/net/eth0/address").await;
        let netns = c
            .log()
            .lines()
            .find_map(|l| {
                l.contains("pod interface wired to a tap")
                    .then(|| l.split_whitespace().find_map(|w| w.strip_prefix("netns=")))
                    .flatten()
                    .map(str::to_string)
            })
            .expect("the shim logs the pod's netns");
        // (`ip`, not /sys: sysfs shows the netns it was mounted in.)
        let veth = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["ip", "-o", "link", "show", "eth0"])
            .output()
            .expect("nsenter");
        assert!(veth.status.success(), "{}", output_text(&veth));
        let veth = String::from_utf8_lossy(&veth.stdout).into_owned();
        let veth_mac = veth
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC in {veth:?}"));
        assert_eq!(guest_mac.trim(), veth_mac, "guest eth0 vs the pod's veth");
        cri::stop_and_remove_pod(&mut cri, &pod).await;
    });
    let out = hull(&c).args(["pool", "drain"]).output().expect("drain");
    assert!(out.status.success(), "{}", output_text(&out));
    c.assert_nothing_left();
}

#[test]
fn a_task_takes_the_pool_vm_of_its_size() {
    if !hull_tests::containerd::require_containerd("a_task_takes_the_pool_vm_of_its_size") {
        return;
    }
    let c = Containerd::start_with_hull_config(
        "[pool]\nsize = 1\n[[pool.class]]\nvcpus = 2\nmemory_mib = 512\nsize = 1\n",
    );
    let out = hull(&c)
        .args(["pool", "fill", "--wait", "240"])
        .output()
        .expect("hull pool fill");
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        pool_logs(&c)
    );
    let members = pool_members(&c);
    assert_eq!(members.len(), 2, "{members:?}");
    let big = members
        .iter()
        .find(|m| m.3 == "2x512MiB")
        .unwrap_or_else(|| panic!("no 2x512MiB VM: {members:?}"))
        .0
        .clone();
    // 2 CPUs and 384 MiB + 128 MiB of overhead: a 2 x 512 MiB VM.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpus",
        "2",
        "--memory-limit",
        "402653184",
        IMAGE,
        "pool-big",
        "sleep",
        "1000",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.sandbox_of("pool-big"), big, "the 2 x 512 MiB pool VM");
    let nproc = c.ctr(&["task", "exec", "--exec-id", "n", "pool-big", "nproc"]);
    assert_eq!(
        String::from_utf8_lossy(&nproc.stdout).trim(),
        "2",
        "{}",
        output_text(&nproc)
    );
    // The default-size VM is still idle; the 2 x 512 MiB one is refilled.
    wait_for(
        "the 2 x 512 MiB VM to be refilled",
        Duration::from_secs(240),
        || {
            let m = pool_members(&c);
            (m.len() == 2
                && m.iter().all(|m| m.1)
                && m.iter().any(|m| m.3 == "2x512MiB" && m.0 != big))
            .then_some(())
        },
    );
    c.kill_and_remove("pool-big");
    let out = hull(&c).args(["pool", "drain"]).output().expect("drain");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "drained 2 pool VM(s)"
    );
    c.assert_nothing_left();
}
