//! A real containerd for the shim's tests: its own root, state, socket and config in a
//! temp dir, hull's runtime registered as `io.containerd.hull.v2`, the built
//! `containerd-shim-hull-v2` found through PATH, hull's state under the test's
//! [`TestState`], and the demo image imported; or, for the CRI tests, its CRI plugin
//! with hull as runtime handler `hull`. Dropping it stops containerd and any shim it
//! left, so a failing test does not leak into the next.
//!
//! Which containerd: the host's (Debian 12's 1.6) unless `$HULL_TEST_CONTAINERD` names
//! another series ([`selected_release`]: `1.7`, `2.1`, unpacked by
//! scripts/containerd-versions); scripts/test runs the containerd and CRI suites once
//! per series. Version 2 speakers (1.x) run with a config written here; 2.x runs with
//! its own default config (version 3), changed only where a test instance must differ
//! ([`Containerd::start_cri_default_config`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{processes_mentioning, target_bin, TestState};

pub const RUNTIME: &str = "io.containerd.hull.v2";
pub const IMAGE: &str = "demo:latest";

/// containerd, ctr and the shim binary, or why the tests cannot run.
pub fn prerequisites() -> Result<(), String> {
    crate::run_prerequisites()?;
    let mut missing = Vec::new();
    for b in ["containerd", "ctr"] {
        if hull_runtime::host::find_binary(Path::new(b)).is_none() {
            missing.push(b.to_string());
        }
    }
    if !target_bin("containerd-shim-hull-v2").exists() {
        missing.push(format!(
            "{} (cargo build --workspace --bins)",
            target_bin("containerd-shim-hull-v2").display()
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing {} (apt-get install containerd)",
            missing.join(", ")
        ))
    }
}

/// Like `require_run`, for the containerd tests.
pub fn require_containerd(test: &str) -> bool {
    crate::require(test, prerequisites())
}

/// A containerd release unpacked by scripts/containerd-versions under
/// `$HULL_CACHE_DIR/containerd/<debian version>/root`.
#[derive(Debug, Clone)]
pub struct Release {
    /// Debian's version, e.g. `2.1.9+ds1-5`.
    pub version: String,
    /// Its `usr/bin` (containerd, ctr, containerd-shim-runc-v2).
    pub bin_dir: PathBuf,
}

/// The variable naming the containerd series the containerd and CRI tests run against.
pub const SERIES_ENV: &str = "HULL_TEST_CONTAINERD";

/// The containerd the containerd and CRI tests run against: with `$HULL_TEST_CONTAINERD`
/// unset, empty or `host`, the host's (None: `containerd` and `ctr` from PATH); with a
/// series `X.Y` (`1.7`, `2.1`), the newest X.Y.z unpacked by scripts/containerd-versions.
/// A series that is not unpacked fails the test: a run that asked for it must not
/// quietly test another containerd.
pub fn selected_release() -> Option<Release> {
    match std::env::var(SERIES_ENV).unwrap_or_default().as_str() {
        "" | "host" => None,
        series => Some(
            Release::find_series(series).unwrap_or_else(|e| panic!("{SERIES_ENV}={series}: {e}")),
        ),
    }
}

/// `containerd config default` of `release` (None: the host's), as text.
pub fn default_config_text(release: Option<&Release>) -> String {
    let containerd = release.map_or_else(|| PathBuf::from("containerd"), Release::containerd);
    let out = run_cmd(
        {
            let mut c = Command::new("timeout");
            c.args(["-s", "KILL", "30"])
                .arg(&containerd)
                .args(["config", "default"]);
            c
        },
        None,
    );
    assert!(
        out.status.success(),
        "{} config default: {}",
        containerd.display(),
        crate::output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Release {
    /// The newest containerd `major`.x unpacked in the cache, or why there is none.
    pub fn find(major: u32) -> Result<Release, String> {
        Release::find_series(&major.to_string())
    }

    /// The newest containerd `series`.z (`series` is `2` or `1.7`) unpacked in the
    /// cache, or why there is none.
    pub fn find_series(series: &str) -> Result<Release, String> {
        let dir = hull_runtime::config::default_cache_dir().join("containerd");
        let how = "run scripts/containerd-versions (scripts/setup does)";
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| format!("no containerd releases in {}: {e} ({how})", dir.display()))?;
        let prefix = format!("{series}.");
        let mut found: Vec<(Vec<u64>, Release)> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|v| v.starts_with(&prefix))
            .map(|v| Release {
                bin_dir: dir.join(&v).join("root/usr/bin"),
                version: v,
            })
            // A release is complete once its sha256 stamp is written.
            .filter(|r| {
                r.bin_dir.join("containerd").exists()
                    && dir.join(&r.version).join("deb.sha256").exists()
            })
            .map(|r| (upstream_version(&r.version), r))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
            .pop()
            .map(|(_, r)| r)
            .ok_or_else(|| format!("no containerd {series}.x in {} ({how})", dir.display()))
    }

    /// The major version: 2 for `2.1.9+ds1-5`.
    pub fn major(&self) -> u64 {
        upstream_version(&self.version)
            .first()
            .copied()
            .unwrap_or(0)
    }

    pub fn containerd(&self) -> PathBuf {
        self.bin_dir.join("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.bin_dir.join("ctr")
    }

    /// `containerd config default` of this release, parsed.
    pub fn default_config(&self) -> toml::Table {
        let text = default_config_text(Some(self));
        text.parse::<toml::Table>().unwrap_or_else(|e| {
            panic!(
                "containerd {}'s default config is not TOML: {e}\n{text}",
                self.version
            )
        })
    }
}

/// The numbers of a Debian version's upstream part (`2.1.9+ds1-5` -> [2, 1, 9]).
fn upstream_version(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse().unwrap_or(0))
        .collect()
}

/// The table at `path` in `t`, which must exist: a default config without it is not
/// the layout these edits were made for.
fn table_at<'t>(t: &'t mut toml::Table, path: &[&str]) -> &'t mut toml::Table {
    path.iter().enumerate().fold(t, |t, (n, key)| {
        t.get_mut(*key)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| {
                panic!(
                    "containerd's default config has no table {}",
                    path[..=n].join(".")
                )
            })
    })
}

/// Sets `key` in the existing table `path`, which must already have it (the default
/// config lists every setting with its default).
fn replace(t: &mut toml::Table, path: &[&str], key: &str, value: impl Into<toml::Value>) {
    let table = table_at(t, path);
    assert!(
        table.contains_key(key),
        "containerd's default config has no {}.{key}",
        path.join(".")
    );
    table.insert(key.to_string(), value.into());
}

/// CRI's plugin that holds the runtimes and CNI settings in a config of `version`.
fn cri_runtime_plugin(version: i64) -> &'static str {
    if version >= 3 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    }
}

/// Points the containerd config `config` (a release's default, version 2 or 3) at a
/// test instance: its root, state, socket, NRI socket and `/opt` dir in `inst`'s dir,
/// CRI's CNI config and plugin dirs at `net`. Everything else stays as it was.
pub fn adapt_to_instance(config: &mut toml::Table, inst: &Instance, net: &crate::cni::CniNet) {
    let version = config
        .get("version")
        .and_then(toml::Value::as_integer)
        .expect("a containerd config with a version");
    let dir = inst.root.parent().expect("instance dir");
    replace(config, &[], "root", inst.root.display().to_string());
    replace(config, &[], "state", inst.state.display().to_string());
    replace(
        config,
        &["grpc"],
        "address",
        inst.address.display().to_string(),
    );
    let nri = ["plugins", "io.containerd.nri.v1.nri"];
    if has_key(config, &nri, "socket_path") {
        replace(
            config,
            &nri,
            "socket_path",
            dir.join("nri.sock").display().to_string(),
        );
    }
    let opt = ["plugins", "io.containerd.internal.v1.opt"];
    if has_key(config, &opt, "path") {
        replace(config, &opt, "path", dir.join("opt").display().to_string());
    }
    let cni = ["plugins", cri_runtime_plugin(version), "cni"];
    replace(config, &cni, "conf_dir", net.conf_dir.display().to_string());
    if version >= 3 {
        replace(
            config,
            &cni,
            "bin_dirs",
            vec![toml::Value::from(crate::cni::CNI_BIN)],
        );
    } else {
        replace(config, &cni, "bin_dir", crate::cni::CNI_BIN);
    }
}

fn has_key(t: &toml::Table, path: &[&str], key: &str) -> bool {
    path.iter()
        .try_fold(t, |t, k| t.get(*k).and_then(toml::Value::as_table))
        .is_some_and(|t| t.contains_key(key))
}

/// `config` (a containerd 2.x default config) with what a test instance must change
/// ([`adapt_to_instance`]), its pinned sandbox image, and hull as runtime `hull`
/// (runtime_type only, as a user adds it), made CRI's default runtime. Everything
/// else stays as the release ships it.
fn test_instance_config(
    mut config: toml::Table,
    inst: &Instance,
    net: &crate::cni::CniNet,
    sandbox_image: &str,
) -> toml::Table {
    let version = config.get("version").and_then(toml::Value::as_integer);
    assert_eq!(
        version,
        Some(3),
        "a containerd 2.x default config is version 3"
    );
    adapt_to_instance(&mut config, inst, net);
    let images = ["plugins", "io.containerd.cri.v1.images", "pinned_images"];
    replace(&mut config, &images, "sandbox", sandbox_image);
    let cri = ["plugins", "io.containerd.cri.v1.runtime", "containerd"];
    replace(&mut config, &cri, "default_runtime_name", "hull");
    let runtimes = table_at(
        &mut config,
        &[
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ],
    );
    let mut hull = toml::Table::new();
    hull.insert("runtime_type".into(), RUNTIME.into());
    runtimes.insert("hull".into(), hull.into());
    config
}

/// The host containerd's config (version 2) for a test instance in `dir`, with `plugins`.
fn host_config(dir: &Path, plugins: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{st}"
[grpc]
  address = "{sock}"
[debug]
  level = "debug"
{plugins}"#,
        root = dir.join("root").display(),
        st = dir.join("state").display(),
        sock = dir.join("c.sock").display(),
    )
}

/// CRI's plugin settings in a version 2 config (containerd 1.x) for a test instance:
/// hull is the runtime handler `hull` and the default, runc a second handler `runc`.
fn v2_cri_plugin(net: &crate::cni::CniNet, sandbox_image: &str) -> String {
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{conf}"
    bin_dir = "{bin}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "hull"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
    runtime_type = "{RUNTIME}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#,
        conf = net.conf_dir.display(),
        bin = crate::cni::CNI_BIN,
    )
}

fn toml_text(config: &toml::Table) -> String {
    toml::to_string(config).expect("containerd config to TOML")
}

/// The paths of one test containerd: its root, state and socket.
pub struct Instance {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
}

/// A config text made of an instance's paths and CNI network.
type ConfigFn<'a> = Box<dyn FnOnce(&Instance, &crate::cni::CniNet) -> String + 'a>;

/// How [`Containerd::launch`] configures containerd.
enum Flavor<'a> {
    /// The selected containerd with CRI, from a config made elsewhere.
    FromConfig(ConfigFn<'a>),
    /// The selected containerd without CRI.
    Plain,
    /// The selected containerd with CRI, config written here (1.x) or its own
    /// default config adapted (2.x).
    Cri {
        sandbox_image: &'a str,
        dual_stack: bool,
    },
    /// `release` with its own default config (see [`test_instance_config`]).
    DefaultConfig {
        release: &'a Release,
        sandbox_image: &'a str,
    },
}

pub struct Containerd {
    child: Option<Child>,
    /// The CRI tests' CNI network (after `child`: containerd goes first).
    pub cni: Option<crate::cni::CniNet>,
    dir: tempfile::TempDir,
    pub state: TestState,
    /// The ctr of this containerd's release (the host's: `ctr` in PATH).
    ctr: PathBuf,
    /// The release running (None: the host's containerd).
    release: Option<Release>,
}

impl Containerd {
    /// Starts containerd (without its CRI plugin) and imports the demo image.
    pub fn start() -> Containerd {
        let c = Containerd::launch(Flavor::Plain);
        c.import("default", &crate::demo_image(), "demo");
        c
    }

    /// Starts containerd with its CRI plugin on the same socket: hull is the runtime
    /// handler `hull` (`runtime_type = "io.containerd.hull.v2"`, also the default, as
    /// CRI needs its default runtime configured), pods' sandbox image is
    /// `sandbox_image` (to be imported into `k8s.io` before a pod runs: nothing is
    /// pulled), AppArmor is left alone, pods get their network from CNI (a bridge and
    /// subnet of this test, see [`crate::cni`]), and runc is a second handler `runc`
    /// (`restrict_oom_score_adj`, without which runc pods fail here).
    pub fn start_cri(sandbox_image: &str) -> Containerd {
        Containerd::launch(Flavor::Cri {
            sandbox_image,
            dual_stack: false,
        })
    }

    /// [`Containerd::start_cri`] with a dual-stack CNI network (IPv4 and IPv6).
    pub fn start_cri_dual_stack(sandbox_image: &str) -> Containerd {
        Containerd::launch(Flavor::Cri {
            sandbox_image,
            dual_stack: true,
        })
    }

    /// Starts containerd `release` (2.x) with its own default config (`containerd
    /// config default`), changed only where a test instance must differ: root, state,
    /// sockets and `/opt` dir in the test's dir, CRI's CNI dirs (the test's network),
    /// the pinned sandbox image `sandbox_image`, and runtime `hull` added and made CRI's
    /// default. Everything else, such as unprivileged ports and ICMP, CDI and NRI, is
    /// as the release ships it. Its ctr is used for [`Containerd::ctr`].
    pub fn start_cri_default_config(release: &Release, sandbox_image: &str) -> Containerd {
        Containerd::launch(Flavor::DefaultConfig {
            release,
            sandbox_image,
        })
    }

    /// Starts the host's containerd (its CRI plugin on) from the config text `config`
    /// makes of this instance's own paths and CNI network, instead of the harness's: for
    /// tests of a config made elsewhere (`hull install-containerd`'s). The text must use
    /// those paths for containerd's root, state, socket and CNI dirs.
    pub fn start_from_config(
        config: impl FnOnce(&Instance, &crate::cni::CniNet) -> String,
    ) -> Containerd {
        Containerd::launch(Flavor::FromConfig(Box::new(config)))
    }

    /// [`Containerd::start`] with hull's config file made of `hull_config` (its path in
    /// `HULL_CONFIG` for containerd, so for the shims and pool VMs it starts).
    pub fn start_with_hull_config(hull_config: &str) -> Containerd {
        let c = Containerd::launch_with(Flavor::Plain, Some(hull_config));
        c.import("default", &crate::demo_image(), "demo");
        c
    }

    /// [`Containerd::start_cri`] with hull's config file made of `hull_config` (see
    /// [`Containerd::start_with_hull_config`]).
    pub fn start_cri_with_hull_config(sandbox_image: &str, hull_config: &str) -> Containerd {
        Containerd::launch_with(
            Flavor::Cri {
                sandbox_image,
                dual_stack: false,
            },
            Some(hull_config),
        )
    }

    /// The hull config file of [`Containerd::start_with_hull_config`].
    pub fn hull_config_path(&self) -> PathBuf {
        self.dir.path().join("hull.toml")
    }

    fn launch(flavor: Flavor<'_>) -> Containerd {
        Containerd::launch_with(flavor, None)
    }

    fn launch_with(flavor: Flavor<'_>, hull_config: Option<&str>) -> Containerd {
        let state = TestState::new();
        let dir = tempfile::Builder::new()
            .prefix("hull-ctd-")
            .tempdir_in("/tmp")
            .expect("containerd temp dir");
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        std::os::unix::fs::symlink(
            target_bin("containerd-shim-hull-v2"),
            bin.join("containerd-shim-hull-v2"),
        )
        .expect("shim symlink");
        let inst = Instance {
            root: d.join("root"),
            state: d.join("state"),
            address: d.join("c.sock"),
        };
        let mut cni = None;
        let selected = selected_release();
        let (release, config) = match flavor {
            Flavor::DefaultConfig {
                release,
                sandbox_image,
            } => {
                let net = crate::cni::CniNet::create(d);
                let config =
                    test_instance_config(release.default_config(), &inst, &net, sandbox_image);
                cni = Some(net);
                (Some(release.clone()), toml_text(&config))
            }
            Flavor::FromConfig(make) => {
                let net = crate::cni::CniNet::create(d);
                let config = make(&inst, &net);
                cni = Some(net);
                (selected, config)
            }
            Flavor::Plain => (
                selected,
                host_config(d, "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"),
            ),
            Flavor::Cri {
                sandbox_image,
                dual_stack,
            } => {
                let net = if dual_stack {
                    crate::cni::CniNet::create_dual_stack(d)
                } else {
                    crate::cni::CniNet::create(d)
                };
                let config = match &selected {
                    Some(r) if r.major() >= 2 => {
                        let mut config =
                            test_instance_config(r.default_config(), &inst, &net, sandbox_image);
                        // What the 1.x config below sets too.
                        let rt = ["plugins", "io.containerd.cri.v1.runtime"];
                        replace(&mut config, &rt, "disable_apparmor", true);
                        replace(&mut config, &rt, "restrict_oom_score_adj", true);
                        replace(&mut config, &rt, "netns_mounts_under_state_dir", true);
                        toml_text(&config)
                    }
                    _ => host_config(d, &v2_cri_plugin(&net, sandbox_image)),
                };
                cni = Some(net);
                (selected, config)
            }
        };
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        // The shim first; then the release's own binaries (its runc shim), if any.
        let mut path = bin.display().to_string();
        if let Some(r) = &release {
            path = format!("{path}:{}", r.bin_dir.display());
        }
        let path = format!("{path}:{}", std::env::var("PATH").unwrap_or_default());
        let containerd = release
            .as_ref()
            .map_or_else(|| PathBuf::from("containerd"), Release::containerd);
        let ctr = release
            .as_ref()
            .map_or_else(|| PathBuf::from("ctr"), Release::ctr);
        let mut command = Command::new(&containerd);
        if let Some(text) = hull_config {
            let file = d.join("hull.toml");
            std::fs::write(&file, text).expect("hull config");
            command.env(hull_runtime::config::CONFIG_ENV, file);
        }
        let child = command
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("HULL_STATE_DIR", state.path())
            .env("HULL_CACHE_DIR", hull_runtime::config::default_cache_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", containerd.display()));
        let c = Containerd {
            child: Some(child),
            cni,
            dir,
            state,
            ctr,
            release,
        };
        crate::wait_for("containerd's socket", Duration::from_secs(60), || {
            c.ctr(&["version"]).status.success().then_some(())
        });
        c
    }

    /// Imports the OCI image layout `layout` into containerd namespace `namespace` as
    /// `<base_name>:<tag>` for each tag of the layout.
    pub fn import(&self, namespace: &str, layout: &Path, base_name: &str) {
        let tar = self
            .dir
            .path()
            .join(format!("{}.tar", base_name.replace('/', "_")));
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(layout)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success(), "tar of {} failed", layout.display());
        let out = self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--base-name",
            base_name,
            tar.to_str().expect("utf8"),
        ]);
        assert!(
            out.status.success(),
            "image import: {}",
            crate::output_text(&out)
        );
        let _ = std::fs::remove_file(&tar);
    }

    /// `ctr run -d --runtime io.containerd.hull.v2 demo:latest ID ARGS...`, which must
    /// succeed (the task runs on).
    pub fn run_detached(&self, id: &str, args: &[&str]) {
        let mut a = vec!["run", "-d", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        let out = self.ctr(&a);
        assert!(
            out.status.success(),
            "ctr run -d {id}: {}",
            crate::output_text(&out)
        );
    }

    /// The release running (None: the host's containerd).
    pub fn release(&self) -> Option<&Release> {
        self.release.as_ref()
    }

    /// The ctr binary of this containerd's release.
    pub fn ctr_binary(&self) -> &Path {
        &self.ctr
    }

    /// containerd's own dir (root, state, socket, config, log) of this test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    /// The socket the shim of task `id` (namespace "default") serves on, as the shim
    /// crate names it: the sha256 of containerd's address, the namespace and the id,
    /// under /run/containerd/s.
    pub fn shim_socket(&self, id: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let key = format!("{}/default/{id}", self.socket().display());
        let hex: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PathBuf::from("/run/containerd/s").join(hex)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a SOCKET ARGS...`, stdin from /dev/null.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with_stdin(args, None)
    }

    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        // A hung ctr must fail the test, not hang it.
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "120"])
            .arg(&self.ctr)
            .arg("-a")
            .arg(self.socket())
            .args(args);
        run_cmd(cmd, stdin)
    }

    /// `ctr run --rm --runtime hull IMAGE ID ARGS...`.
    pub fn run_rm(&self, id: &str, args: &[&str]) -> Output {
        let mut a = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        a.extend_from_slice(args);
        self.ctr(&a)
    }

    /// `ctr run -d` of task `id` running `sleep 1000`, booted with a hull config that
    /// allows debug processes (`[debug] exec = true`).
    pub fn run_debuggable(&self, id: &str) {
        let cfg = self.state.path().join("debug.toml");
        std::fs::write(&cfg, "[debug]\nexec = true\n").expect("config");
        let cfg_s = cfg.to_str().expect("utf8");
        let out = self.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            cfg_s,
            IMAGE,
            id,
            "sleep",
            "1000",
        ]);
        assert!(out.status.success(), "{}", crate::output_text(&out));
    }

    /// The id of the sandbox running task `id`, as `hull ps` lists it.
    pub fn sandbox_of(&self, id: &str) -> String {
        let ps = self.state.hull().arg("ps").output().expect("hull ps");
        let text = String::from_utf8_lossy(&ps.stdout).into_owned();
        let row = text
            .lines()
            .find(|l| l.contains(&format!(" {id}")))
            .unwrap_or_else(|| panic!("hull ps does not list {id}: {}", crate::output_text(&ps)));
        row.split_whitespace()
            .next()
            .expect("sandbox id")
            .to_string()
    }

    /// The status column of `ctr task ls` for `id`, if listed.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(id))
            .and_then(|w| w.get(2).cloned())
    }

    /// SIGKILLs task `id`, waits until it is stopped, deletes it and its container.
    pub fn kill_and_remove(&self, id: &str) {
        assert!(self
            .ctr(&["task", "kill", "-s", "SIGKILL", id])
            .status
            .success());
        crate::wait_for("the task to stop", Duration::from_secs(30), || {
            (self.task_status(id).as_deref() == Some("STOPPED")).then_some(())
        });
        let out = self.ctr(&["task", "delete", id]);
        assert!(out.status.success(), "{}", crate::output_text(&out));
        assert!(self.ctr(&["containers", "rm", id]).status.success());
    }

    /// Kills the shim of task `id` (the only shim running) with SIGKILL and waits until
    /// containerd has noticed and forgotten the task.
    pub fn kill_shim(&self, id: &str) {
        let shims = self.shims();
        assert_eq!(shims.len(), 1, "one shim: {shims:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shims[0].0),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill the shim");
        crate::wait_for(
            "containerd to clean up the task",
            Duration::from_secs(30),
            || self.task_status(id).is_none().then_some(()),
        );
    }

    /// SIGKILLs containerd itself and reaps it; its shims live on, and nothing runs
    /// `shim delete` for a task whose shim dies from now on.
    pub fn kill_containerd(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Shim processes of this containerd: those it started, and pool VM keepers that
    /// serve one of its tasks (in the task's bundle, under containerd's dir).
    pub fn shims(&self) -> Vec<(i32, String)> {
        let mut shims: Vec<(i32, String)> =
            processes_mentioning(&format!("-address {}", self.socket().display()))
                .into_iter()
                .filter(|(_, c)| c.contains("containerd-shim-hull-v2"))
                .collect();
        for (pid, cmd) in crate::processes_in_dir(self.dir.path()) {
            if cmd.contains("containerd-shim-hull-v2") && !shims.iter().any(|(p, _)| *p == pid) {
                shims.push((pid, cmd));
            }
        }
        shims
    }

    /// Nothing of hull is left: no VM process, dir or mount, no shim, and no mount
    /// under containerd's dirs but its own snapshots' (none once tasks are deleted).
    pub fn assert_nothing_left(&self) {
        self.state.assert_nothing_left();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let shims = self.shims();
            let mounts = hull_runtime::sandbox::share::mounts_under(&self.dir.path().join("state"));
            if shims.is_empty() && mounts.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "left behind: shims {shims:?}, mounts {mounts:?}\n--- containerd log ---\n{}",
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `cmd` to the end with `stdin` (or /dev/null); its output.
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("start command");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("command output");
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A failed test shows what containerd and the shims logged (shim panics and
        // exits land there, not in the test's output).
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log (last 80 lines) ---\n{}",
                tail(&self.log(), 80)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Shims outlive containerd by design; a failed test's must not outlive us, nor
        // its idle pool VMs' keepers (they run in the state dir's pool dir).
        let keepers = crate::processes_in_dir(self.state.path())
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("pool-keep"));
        for (pid, _) in self.shims().into_iter().chain(keepers) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        for m in hull_runtime::sandbox::share::mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for m in hull_runtime::sandbox::share::mounts_under(self.state.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
