//! The checks, in order. Each returns Ok or a description of what was wrong.

use std::time::{Duration, Instant};

use hull_proto::*;
use serde_json::{json, Value};

use super::client::{base_spec, ctx, stdio, Agent};

type Check = Result<(), String>;

fn expect(cond: bool, what: impl FnOnce() -> String) -> Check {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn e2s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// Appends to a JSON array (a no-op on anything else).
fn push(v: &mut Value, item: Value) {
    if let Some(a) = v.as_array_mut() {
        a.push(item);
    }
}

fn with(mut spec: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut spec);
    spec
}

async fn sandbox(a: &Agent) -> Check {
    let mut s = Storage::new();
    s.driver = "virtiofs".into();
    s.source = "hullshare".into();
    s.fstype = "virtiofs".into();
    s.mount_point = "/run/hull/share".into();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "probe".into();
    req.hostname = "pod1".into();
    req.storages.push(s);
    a.c.create_sandbox(ctx(), &req).await.map_err(e2s)?;
    Ok(())
}

async fn echo(a: &Agent) -> Check {
    let o = a
        .run("echo", &base_spec(&["echo", "hello"]))
        .await
        .map_err(e2s)?;
    expect(o.out() == "hello\n" && o.status == 0, || format!("{o:?}"))
}

async fn exit3(a: &Agent) -> Check {
    let o = a
        .run("exit3", &base_spec(&["sh", "-c", "exit 3"]))
        .await
        .map_err(e2s)?;
    expect(o.status == 3, || format!("{o:?}"))
}

async fn out_err_apart(a: &Agent) -> Check {
    let o = a
        .run(
            "apart",
            &base_spec(&["sh", "-c", "echo out; echo err >&2; echo out2"]),
        )
        .await
        .map_err(e2s)?;
    expect(o.out() == "out\nout2\n" && o.err() == "err\n", || {
        format!("{o:?}")
    })
}

async fn isolation(a: &Agent) -> Check {
    // The guest kernel has no /proc/kcore; /proc/version stands in for a masked path.
    let script = "echo pid=$$; hostname; wc -c </proc/version; echo $FOO; pwd; id; umask";
    let spec = with(base_spec(&["sh", "-c", script]), |s| {
        push(&mut s["process"]["env"], json!("FOO=bar"));
        s["process"]["cwd"] = json!("/tmp");
        s["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 63});
        push(&mut s["linux"]["maskedPaths"], json!("/proc/version"));
    });
    let o = a.run("iso", &spec).await.map_err(e2s)?;
    let want = "pid=1\nbox\n0\nbar\n/tmp\nuid=1000 gid=1000 groups=10,20\n0077\n";
    expect(o.out() == want && o.status == 0, || {
        format!("want {want:?}, got {o:?}")
    })
}

async fn readonly_rootfs(a: &Agent) -> Check {
    let spec = with(base_spec(&["sh", "-c", "touch /newfile"]), |s| {
        s["root"]["readonly"] = json!(true);
    });
    let o = a.run("ro", &spec).await.map_err(e2s)?;
    expect(o.status != 0 && o.err().contains("Read-only"), || {
        format!("{o:?}")
    })
}

async fn caps_dropped(a: &Agent) -> Check {
    let spec = with(
        base_spec(&["sh", "-c", "touch /tmp/f && chown 1 /tmp/f"]),
        |s| {
            let caps = json!(["CAP_DAC_OVERRIDE"]);
            s["process"]["capabilities"] =
                json!({"bounding": caps, "effective": caps, "permitted": caps});
        },
    );
    let o = a.run("caps", &spec).await.map_err(e2s)?;
    expect(
        o.status != 0 && o.err().contains("Operation not permitted"),
        || format!("{o:?}"),
    )
}

async fn seccomp(a: &Agent) -> Check {
    let spec = with(base_spec(&["sh", "-c", "mkdir /tmp/d"]), |s| {
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let o = a.run("seccomp", &spec).await.map_err(e2s)?;
    expect(
        o.status != 0 && o.err().contains("Operation not permitted"),
        || format!("{o:?}"),
    )
}

/// containerd's default profile (`contrib/seccomp/seccomp_default.go`) for containerd's
/// default capabilities, as the runtime's spec generator (`runtime/src/spec/seccomp.rs`)
/// makes it, in OCI JSON.
const CONTAINERD_DEFAULT_SECCOMP: &str = include_str!("containerd_default_seccomp.json");

/// The default profile loads (the shell, fork and exec work, the filter is on) and is
/// enforced: with CAP_SYS_ADMIN granted, sethostname is still refused by the filter.
async fn default_seccomp_profile(a: &Agent) -> Check {
    let profile: Value = serde_json::from_str(CONTAINERD_DEFAULT_SECCOMP).map_err(e2s)?;
    let script = "echo ok | cat; grep Seccomp: /proc/self/status; hostname blocked";
    let spec = with(base_spec(&["sh", "-c", script]), |s| {
        s["linux"]["seccomp"] = profile;
        for set in ["bounding", "effective", "permitted"] {
            push(
                &mut s["process"]["capabilities"][set],
                json!("CAP_SYS_ADMIN"),
            );
        }
    });
    let o = a.run("dflt-seccomp", &spec).await.map_err(e2s)?;
    expect(
        o.out().starts_with("ok\nSeccomp:\t2\n")
            && o.status != 0
            && o.err().contains("Operation not permitted"),
        || format!("{o:?}"),
    )
}

async fn process_attrs(a: &Agent) -> Check {
    let script = "cat /proc/self/oom_score_adj; ulimit -n; cat /proc/sys/kernel/shm_rmid_forced; \
                  grep -E '^(NoNewPrivs|CapEff)' /proc/self/status; echo x >/dev/null && echo devnull-ok";
    let spec = with(base_spec(&["sh", "-c", script]), |s| {
        s["process"]["oomScoreAdj"] = json!(500);
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
        s["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
        let caps = json!(["CAP_KILL"]);
        s["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps,
                                              "inheritable": caps, "ambient": caps});
    });
    let o = a.run("attrs", &spec).await.map_err(e2s)?;
    let want = "500\n123\n1\nCapEff:\t0000000000000020\nNoNewPrivs:\t1\ndevnull-ok\n";
    expect(o.out() == want, || format!("want {want:?} got {o:?}"))
}

/// The device cgroup (an eBPF program on cgroup v2): a node the spec does not allow
/// can be created (CAP_MKNOD) but not opened.
async fn devices(a: &Agent) -> Check {
    let script =
        "mknod /tmp/kmsg c 1 11 && (echo y >/tmp/kmsg && echo open-ok || echo open-denied); \\
                  echo x >/dev/null && head -c 3 /dev/zero | wc -c";
    let o = a
        .run("devices", &base_spec(&["sh", "-c", script]))
        .await
        .map_err(e2s)?;
    expect(o.out() == "open-denied\n3\n", || format!("{o:?}"))
}

/// Volumes as `hull run -v` makes them: host dirs in the share, bind-mounted; `ro`
/// enforced in the guest; what the container writes to a rw volume is on the host.
async fn volumes(a: &Agent) -> Check {
    let share =
        std::env::var("HULL_PROBE_SHARE").map_err(|_| "HULL_PROBE_SHARE not set".to_string())?;
    let script = "echo written >/data/rw/out; cat /data/ro/in; touch /data/ro/x";
    let spec = with(base_spec(&["sh", "-c", script]), |s| {
        push(
            &mut s["mounts"],
            json!({"destination": "/data/rw", "type": "bind", "source": "/run/hull/share/vol-rw", "options": ["rbind", "rw"]}),
        );
        push(
            &mut s["mounts"],
            json!({"destination": "/data/ro", "type": "bind", "source": "/run/hull/share/vol-ro", "options": ["rbind", "ro"]}),
        );
    });
    let o = a.run("vol", &spec).await.map_err(e2s)?;
    let host = std::fs::read_to_string(format!("{share}/vol-rw/out")).unwrap_or_default();
    expect(
        o.out() == "from-host\n"
            && o.err().contains("Read-only")
            && o.status != 0
            && host == "written\n",
        || format!("{o:?}, host file {host:?}"),
    )
}

/// The init process on a terminal: output through the pty, resize before start.
async fn init_tty(a: &Agent) -> Check {
    let spec = with(base_spec(&["sh", "-c", "stty size; tty"]), |s| {
        s["process"]["terminal"] = json!(true);
    });
    a.create("itty", &spec, stdio(false, true))
        .await
        .map_err(e2s)?;
    let mut rz = ResizeTtyRequest::new();
    rz.container_id = "itty".into();
    rz.rows = 24;
    rz.columns = 80;
    a.c.resize_tty(ctx(), &rz).await.map_err(e2s)?;
    a.start("itty").await.map_err(e2s)?;
    let o = a.collect("itty", "").await.map_err(e2s)?;
    a.remove("itty").await.map_err(e2s)?;
    expect(
        o.out().starts_with("24 80\r\n/dev/pts/0") && o.status == 0,
        || format!("{o:?}"),
    )
}

/// A user namespace when the spec asks for one.
async fn user_namespace(a: &Agent) -> Check {
    let spec = with(
        base_spec(&["sh", "-c", "id -u; cat /proc/self/uid_map"]),
        |s| {
            push(&mut s["linux"]["namespaces"], json!({"type": "user"}));
            s["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            s["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    );
    let o = a.run("userns", &spec).await.map_err(e2s)?;
    let map: Vec<String> = o.out().split_whitespace().map(String::from).collect();
    expect(map == ["0", "0", "100000", "65536"], || format!("{o:?}"))
}

/// A container's own storages: mounted before it is created (here a tmpfs its spec
/// bind-mounts), unmounted when it is removed.
async fn container_storage(a: &Agent) -> Check {
    let spec = |script: &str| {
        with(base_spec(&["sh", "-c", script]), |s| {
            push(
                &mut s["mounts"],
                json!({"destination": "/scratch", "type": "bind", "source": "/run/hull/ctr/stor1", "options": ["rbind"]}),
            );
        })
    };
    let mut st = Storage::new();
    st.driver = "tmpfs".into();
    st.mount_point = "/run/hull/ctr/stor1".into();
    st.options = vec!["size=1m".into()];
    let mut req = CreateContainerRequest::new();
    req.container_id = "stor".into();
    req.oci_spec_json = serde_json::to_vec(&spec(
        "echo hi >/scratch/f && cat /scratch/f && grep /scratch /proc/mounts | cut -d' ' -f3",
    ))
    .map_err(e2s)?;
    req.storages.push(st);
    req.stdio = protobuf::MessageField::some(stdio(false, false));
    a.c.create_container(ctx(), &req).await.map_err(e2s)?;
    a.start("stor").await.map_err(e2s)?;
    let o = a.collect("stor", "").await.map_err(e2s)?;
    a.remove("stor").await.map_err(e2s)?;
    expect(o.out() == "hi\ntmpfs\n", || format!("{o:?}"))?;
    let o = a
        .run("stor2", &spec("ls /scratch | wc -l"))
        .await
        .map_err(e2s)?;
    expect(o.out().trim() == "0", || {
        format!("still mounted after removal: {o:?}")
    })
}

async fn stdin_echo(a: &Agent) -> Check {
    a.create("cat", &base_spec(&["cat"]), stdio(true, false))
        .await
        .map_err(e2s)?;
    a.start("cat").await.map_err(e2s)?;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = async {
        a.write_stdin("cat", "", &data).await?;
        a.close_stdin("cat", "").await
    };
    let (w, o) = tokio::join!(writer, a.collect("cat", ""));
    a.remove("cat").await.map_err(e2s)?;
    w.map_err(e2s)?;
    let o = o.map_err(e2s)?;
    expect(o.stdout == data && o.status == 0, || {
        format!("got {} bytes, status {}", o.stdout.len(), o.status)
    })
}

async fn sigkill(a: &Agent) -> Check {
    a.create("kill", &base_spec(&["sleep", "100"]), stdio(false, false))
        .await
        .map_err(e2s)?;
    a.start("kill").await.map_err(e2s)?;
    a.signal("kill", "", 9, false).await.map_err(e2s)?;
    let o = a.collect("kill", "").await.map_err(e2s)?;
    a.remove("kill").await.map_err(e2s)?;
    expect(o.status == 137, || format!("{o:?}"))
}

/// A missing command fails CreateContainer with "not found", and leaves nothing behind:
/// the same id can be created again (and a created, never started one removed).
async fn not_found(a: &Agent) -> Check {
    let r = a
        .create("nf", &base_spec(&["no-such-command"]), stdio(false, false))
        .await;
    match r {
        Err(ttrpc::Error::RpcStatus(s))
            if s.code() == ttrpc::Code::INVALID_ARGUMENT
                && s.message().contains("command not found") =>
        {
            println!("probe:   error was: {}", s.message());
        }
        other => return Err(format!("{other:?}")),
    }
    a.create("nf", &base_spec(&["true"]), stdio(false, false))
        .await
        .map_err(e2s)?;
    a.remove("nf").await.map_err(e2s)?;
    Ok(())
}

/// Runs last: no container's cgroup is left (seen without a cgroup namespace).
async fn nothing_left(a: &Agent) -> Check {
    let spec = with(
        base_spec(&["sh", "-c", "cd /sys/fs/cgroup/hull && ls -d */"]),
        |s| {
            if let Some(ns) = s["linux"]["namespaces"].as_array_mut() {
                ns.retain(|n| n["type"] != "cgroup");
            }
        },
    );
    let o = a.run("left", &spec).await.map_err(e2s)?;
    expect(o.out() == "left/\n", || format!("{o:?}"))
}

async fn sandbox_twice(a: &Agent) -> Check {
    match a
        .c
        .create_sandbox(ctx(), &CreateSandboxRequest::new())
        .await
    {
        Err(ttrpc::Error::RpcStatus(s)) if s.code() == ttrpc::Code::ALREADY_EXISTS => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn memory_oom(a: &Agent) -> Check {
    let spec = with(
        base_spec(&["sh", "-c", "echo start; tail /dev/zero"]),
        |s| {
            s["linux"]["resources"]["memory"] =
                json!({"limit": 16 * 1024 * 1024, "swap": 16 * 1024 * 1024});
        },
    );
    let oom = {
        let c = a.c.clone();
        tokio::spawn(async move { c.get_oom_event(ctx(), &GetOomEventRequest::new()).await })
    };
    let o = a.run("oom", &spec).await.map_err(e2s)?;
    let ev = tokio::time::timeout(Duration::from_secs(10), oom)
        .await
        .map_err(e2s)?
        .map_err(e2s)?
        .map_err(e2s)?;
    expect(
        o.status == 137 && o.oom_killed && ev.container_id == "oom",
        || format!("{o:?} event {ev:?}"),
    )
}

async fn pids_and_cpu(a: &Agent) -> Check {
    let script = "cd /sys/fs/cgroup; cat cpu.max pids.max cpu.weight cpuset.cpus memory.max; \\
                  for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait";
    let spec = with(base_spec(&["sh", "-c", script]), |s| {
        s["linux"]["resources"]["pids"] = json!({"limit": 5});
        s["linux"]["resources"]["cpu"] =
            json!({"quota": 50000, "period": 100000, "shares": 2048, "cpus": "1"});
        s["linux"]["resources"]["memory"] = json!({"limit": 64 << 20});
    });
    let o = a.run("pids", &spec).await.map_err(e2s)?;
    // cpu.weight from shares: any value but the default 100 (the conversion formula is
    // libcgroups'; 2048 gives 174 there).
    let lines: Vec<&str> = o
        .stdout
        .split(|b| *b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap_or(""))
        .collect();
    let memory = (64u64 << 20).to_string();
    expect(
        lines.len() >= 5
            && lines[..2] == ["50000 100000", "5"]
            && lines[2] != "100"
            && lines[3..5] == ["1", memory.as_str()]
            && o.err().contains("fork"),
        || format!("{o:?} {:?}", o.out()),
    )
}

async fn exec_and_tty(a: &Agent) -> Check {
    a.create("long", &base_spec(&["sleep", "1000"]), stdio(false, false))
        .await
        .map_err(e2s)?;
    a.start("long").await.map_err(e2s)?;
    let result = exec_and_tty_inner(a).await;
    let _ = a.remove("long").await.map_err(e2s);
    result
}

async fn exec_and_tty_inner(a: &Agent) -> Check {
    let process = |args: &[&str], terminal: bool| {
        let mut p = base_spec(args)["process"].clone();
        p["terminal"] = json!(terminal);
        push(&mut p["env"], json!("TERM=xterm"));
        serde_json::to_vec(&p).unwrap_or_default()
    };
    let mut req = ExecProcessRequest::new();
    req.container_id = "long".into();
    req.exec_id = "e1".into();
    req.process_json = process(
        &["sh", "-c", "echo exec; cat /proc/1/cmdline | tr '\\0' ' '"],
        false,
    );
    req.stdio = protobuf::MessageField::some(stdio(false, false));
    a.c.exec_process(ctx(), &req).await.map_err(e2s)?;
    let o = a.collect("long", "e1").await.map_err(e2s)?;
    expect(o.out() == "exec\nsleep 1000 " && o.status == 0, || {
        format!("exec: {o:?}")
    })?;

    // ListProcesses and Stats while it runs.
    let mut creq = ContainerRequest::new();
    creq.container_id = "long".into();
    let list = a.c.list_processes(ctx(), &creq).await.map_err(e2s)?;
    expect(
        list.processes
            .iter()
            .any(|p| p.pid == 1 && p.args == ["sleep", "1000"]),
        || format!("list: {list:?}"),
    )?;
    let stats = a.c.stats_container(ctx(), &creq).await.map_err(e2s)?;
    expect(stats.pids.current >= 1 && stats.memory.usage > 0, || {
        format!("stats: {stats:?}")
    })?;

    // A terminal exec: `stty size` after a resize, and stdin through the pty.
    req.exec_id = "t1".into();
    req.process_json = process(&["sh", "-c", "read x; stty size; echo got:$x; tty"], true);
    req.stdio = protobuf::MessageField::some(stdio(true, true));
    a.c.exec_process(ctx(), &req).await.map_err(e2s)?;
    let mut rz = ResizeTtyRequest::new();
    rz.container_id = "long".into();
    rz.exec_id = "t1".into();
    rz.rows = 33;
    rz.columns = 101;
    a.c.resize_tty(ctx(), &rz).await.map_err(e2s)?;
    a.write_stdin("long", "t1", b"hi\n").await.map_err(e2s)?;
    let o = a.collect("long", "t1").await.map_err(e2s)?;
    let out = o.out();
    expect(
        out.contains("33 101") && out.contains("got:hi") && out.contains("/dev/pts/"),
        || format!("tty: {o:?}"),
    )?;

    // Pause/resume, update, signal all.
    a.c.pause_container(ctx(), &creq).await.map_err(e2s)?;
    a.c.resume_container(ctx(), &creq).await.map_err(e2s)?;
    let mut up = UpdateContainerRequest::new();
    up.container_id = "long".into();
    up.resources_json = br#"{"pids":{"limit":42}}"#.to_vec();
    a.c.update_container(ctx(), &up).await.map_err(e2s)?;
    req.exec_id = "e2".into();
    req.process_json = process(&["cat", "/sys/fs/cgroup/pids.max"], false);
    req.stdio = protobuf::MessageField::some(stdio(false, false));
    a.c.exec_process(ctx(), &req).await.map_err(e2s)?;
    let o = a.collect("long", "e2").await.map_err(e2s)?;
    expect(o.out() == "42\n", || format!("update: {o:?}"))?;
    // PID 1 of a PID namespace ignores SIGTERM without a handler: SIGKILL to all.
    a.signal("long", "", 9, true).await.map_err(e2s)?;
    let o = a.collect("long", "").await.map_err(e2s)?;
    expect(o.status == 137, || format!("signal all: {o:?}"))
}

async fn big_output(a: &Agent) -> Check {
    let mib = 64;
    let t = Instant::now();
    let o = a
        .run(
            "big",
            &base_spec(&[
                "sh",
                "-c",
                &format!("head -c {} /dev/zero | tr '\\0' x; echo -n end", mib << 20),
            ]),
        )
        .await
        .map_err(e2s)?;
    println!("probe:   {mib} MiB in {} ms", t.elapsed().as_millis());
    let n = o.stdout.len();
    expect(
        n == (mib << 20) + 3
            && o.stdout.ends_with(b"xend")
            && o.stdout[..n - 3].iter().all(|b| *b == b'x'),
        || format!("got {n} bytes"),
    )
}

async fn bad_spec(a: &Agent) -> Check {
    let r = a.create("bad", &base_spec(&[]), stdio(false, false)).await;
    match r {
        Err(ttrpc::Error::RpcStatus(s)) if s.message().contains("args is empty") => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

pub async fn run_all(a: &Agent, only: Option<&str>) -> usize {
    macro_rules! checks {
        ($($name:ident),* $(,)?) => {{
            let mut failures = 0;
            $(
                let name = stringify!($name);
                if name == "sandbox" || only.is_none_or(|o| o.split(',').any(|x| x == name)) {
                    let t = Instant::now();
                    match $name(a).await {
                        Ok(()) => println!("PASS {name} ({} ms)", t.elapsed().as_millis()),
                        Err(e) => {
                            failures += 1;
                            println!("FAIL {name}: {e}");
                        }
                    }
                }
            )*
            failures
        }};
    }
    checks!(
        sandbox,
        echo,
        exit3,
        out_err_apart,
        isolation,
        readonly_rootfs,
        caps_dropped,
        seccomp,
        default_seccomp_profile,
        process_attrs,
        devices,
        volumes,
        container_storage,
        init_tty,
        user_namespace,
        stdin_echo,
        sigkill,
        not_found,
        bad_spec,
        memory_oom,
        pids_and_cpu,
        exec_and_tty,
        big_output,
        sandbox_twice,
        nothing_left,
    )
}
