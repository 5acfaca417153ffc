//! A real dockerd running hull as a containerd shim (`docker run --runtime
//! io.containerd.hull.v2`; Docker 23 and later run containerd shims directly): Debian
//! sid's docker.io and docker-cli and containerd 2.x, unpacked by
//! scripts/containerd-versions, on this host. dockerd starts and manages its own
//! containerd; it gets its own data root, exec root and socket in a temp dir, the vfs
//! storage driver, and neither iptables nor a bridge (containers run with
//! `--network none`). Dropping it stops dockerd, its containerd and anything they
//! left, so a failing test does not leak into the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{run_cmd, Release};
use crate::{processes_mentioning, target_bin, TestState};

/// Docker unpacked by scripts/containerd-versions under `$HULL_CACHE_DIR/docker/sid`.
#[derive(Debug, Clone)]
pub struct DockerRelease {
    root: PathBuf,
}

impl DockerRelease {
    /// sid's Docker from the cache, or why it is not there.
    pub fn find() -> Result<DockerRelease, String> {
        let root = hull_runtime::config::default_cache_dir().join("docker/sid/root");
        if root.join("usr/sbin/dockerd").exists() && root.join("usr/bin/docker").exists() {
            Ok(DockerRelease { root })
        } else {
            Err(format!(
                "no dockerd and docker in {} (run scripts/containerd-versions; scripts/setup does)",
                root.display()
            ))
        }
    }

    fn dockerd(&self) -> PathBuf {
        self.root.join("usr/sbin/dockerd")
    }

    fn docker(&self) -> PathBuf {
        self.root.join("usr/bin/docker")
    }
}

/// What the Docker tests need: the VM parts, the shim, Docker and containerd 2.x.
pub fn prerequisites() -> Result<(DockerRelease, Release), String> {
    crate::run_prerequisites()?;
    let shim = target_bin("containerd-shim-hull-v2");
    if !shim.exists() {
        return Err(format!(
            "missing {} (cargo build --workspace --bins)",
            shim.display()
        ));
    }
    Ok((DockerRelease::find()?, Release::find(2)?))
}

pub struct Docker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub state: TestState,
    docker: PathBuf,
}

impl Docker {
    /// Starts dockerd with hull's shim and `containerd`'s binaries first in its PATH.
    pub fn start(release: &DockerRelease, containerd: &Release) -> Docker {
        let state = TestState::new();
        let dir = tempfile::Builder::new()
            .prefix("hull-docker-")
            .tempdir_in("/tmp")
            .expect("docker temp dir");
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(
            target_bin("containerd-shim-hull-v2"),
            bin.join("containerd-shim-hull-v2"),
        )
        .expect("shim symlink");
        std::fs::write(d.join("daemon.json"), "{}\n").expect("daemon.json");
        let path = format!(
            "{}:{}:{}:{}",
            bin.display(),
            release.root.join("usr/bin").display(),
            containerd.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("dockerd.log")).expect("log");
        let child = Command::new(release.dockerd())
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--storage-driver=vfs",
                "--log-level=debug",
            ])
            .env("PATH", path)
            .env("HULL_STATE_DIR", state.path())
            .env("HULL_CACHE_DIR", hull_runtime::config::default_cache_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", release.dockerd().display()));
        let docker = Docker {
            child: Some(child),
            dir,
            state,
            docker: release.docker(),
        };
        crate::wait_for("dockerd's socket", Duration::from_secs(60), || {
            docker
                .docker(&["version"], None)
                .status
                .success()
                .then_some(())
        });
        docker
    }

    /// `docker -H SOCKET ARGS...` with `stdin` (else /dev/null); killed after 180 s.
    pub fn docker(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = Command::new("timeout");
        c.args(["-s", "KILL", "180"])
            .arg(&self.docker)
            .arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args);
        run_cmd(c, stdin)
    }

    /// Imports the demo image's root filesystem (its one layer) as `name`.
    pub fn import_demo(&self, name: &str) {
        let layer = demo_layer(&crate::demo_image());
        let out = self.docker(&["import", layer.to_str().expect("utf8"), name], None);
        assert!(
            out.status.success(),
            "docker import: {}",
            crate::output_text(&out)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

/// The one layer blob of the OCI image layout `layout` (its first manifest).
fn demo_layer(layout: &Path) -> PathBuf {
    let json = |p: PathBuf| -> serde_json::Value {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let blob = |digest: &serde_json::Value| {
        let d = digest.as_str().expect("a digest");
        let (algo, hex) = d.split_once(':').expect("algo:hex");
        layout.join("blobs").join(algo).join(hex)
    };
    let index = json(layout.join("index.json"));
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "the demo image has one layer");
    blob(&layers[0]["digest"])
}

impl Drop for Docker {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        if let Some(mut child) = self.child.take() {
            // SIGTERM: dockerd stops its containers and its containerd.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever still runs from this instance's dirs (containerd, shims).
        for (pid, _) in processes_mentioning(&d.to_string_lossy()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in hull_runtime::sandbox::share::mounts_under(&d)
            .into_iter()
            .rev()
        {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
