//! Docker through hull (issue 18, item 7): `docker run --runtime io.containerd.hull.v2`
//! with Debian sid's dockerd 28 and containerd 2.x on this host. Each container runs in
//! its own microVM; what Docker shows of it (output, exit code, stdin, exec, stop) is
//! what runc would show.

use hull_tests::containerd::RUNTIME;
use hull_tests::docker::{self, Docker};
use hull_tests::output_text;

const IMAGE: &str = "hull-demo:latest";

fn start() -> Option<Docker> {
    let (release, containerd) = match docker::prerequisites() {
        Ok(found) => found,
        Err(why) => {
            hull_tests::require("docker", Err(why));
            return None;
        }
    };
    let d = Docker::start(&release, &containerd);
    d.import_demo(IMAGE);
    Some(d)
}

/// `docker run --rm --runtime hull --network none IMAGE ARGS...`.
fn run_args<'a>(extra: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME, "--network", "none"];
    a.extend_from_slice(extra);
    a.push(IMAGE);
    a.extend_from_slice(args);
    a
}

#[test]
fn docker_runs_containers_in_hull_microvms() {
    let Some(d) = start() else { return };

    // Output on both streams, the exit code, and nothing else on stderr.
    let out = d.docker(
        &run_args(&[], &["sh", "-c", "echo out; echo err >&2; exit 6"]),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}\n--- dockerd log ---\n{}",
        output_text(&out),
        d.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "err\n",
        "stderr holds only the workload's line"
    );

    // The container's kernel is the guest's, not the host's.
    let out = d.docker(&run_args(&[], &["uname", "-r"]), None);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .ends_with("-hull"),
        "not in a hull guest: {}",
        output_text(&out)
    );

    // stdin reaches the workload, and its end ends it.
    let out = d.docker(
        &run_args(&["-i"], &["tr", "a-z", "A-Z"]),
        Some(b"hello through hull\n"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HELLO THROUGH HULL\n",
        "{}",
        output_text(&out)
    );
    assert_eq!(out.status.code(), Some(0));

    // A detached container: exec into it, then stop it.
    let out = d.docker(
        &[
            "run",
            "-d",
            "--name",
            "hull-t1",
            "--runtime",
            RUNTIME,
            "--network",
            "none",
            IMAGE,
            "sleep",
            "100000",
        ],
        None,
    );
    assert!(out.status.success(), "{}\n{}", output_text(&out), d.log());
    let out = d.docker(
        &["exec", "hull-t1", "sh", "-c", "echo from exec; exit 3"],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");
    assert!(
        !d.state.processes().is_empty(),
        "the running container has a VM"
    );
    // PID 1 ignores SIGTERM: docker stop kills it after the grace period.
    let out = d.docker(&["stop", "-t", "2", "hull-t1"], None);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = d.docker(
        &[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "hull-t1",
        ],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "exited 137",
        "{}",
        output_text(&out)
    );
    let out = d.docker(&["rm", "hull-t1"], None);
    assert!(out.status.success(), "{}", output_text(&out));

    // Every container's VM is gone.
    d.state.assert_nothing_left();
}
