//! OCI hooks, run by the shim on the host with the container's state on stdin.
//!
//! Where each stage runs, and why (runc's points in the lifecycle, hull's namespace):
//! - `prestart` (deprecated) and `createRuntime`: at Create, once the container exists
//!   in the guest; in the runtime namespace, the host's, as the spec says.
//! - `createContainer`: right after them. The spec runs it in the container's
//!   namespaces; a hull container's namespaces are in the guest, where a host binary
//!   does not exist, so it runs on the host (what it writes into the rootfs or a volume
//!   reaches the guest through the share; a mount it makes on the host does not).
//! - `startContainer`: at Start, before the container's process runs; on the host for
//!   the same reason (its path is taken as a host path, not the container's).
//! - `poststart`: after the process started; `poststop`: after the container is
//!   deleted.
//!
//! As in runc, a failing `prestart`, `createRuntime`, `createContainer` or
//! `startContainer` hook fails that step (the container is removed again at Create);
//! a failing `poststart` or `poststop` hook is logged and the lifecycle goes on. Each
//! hook gets exactly its own `args` (the first is its argv[0]) and `env` (nothing of
//! the shim's), and has a deadline: its `timeout`, else [`DEFAULT_TIMEOUT`]; past it,
//! it is killed and counts as failed.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use oci_spec::runtime::Hook;
use tokio::io::AsyncWriteExt;

/// Deadline of a hook without a `timeout` of its own (runc has none; a shim must not
/// wait for ever on a hook that hangs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a failing hook's error quotes of its stderr, at most.
const STDERR_QUOTED: usize = 512;

/// The lifecycle points hooks run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl Stage {
    /// The stage's name in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::CreateContainer => "createContainer",
            Stage::StartContainer => "startContainer",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    /// The container's `status` in the state its hooks get.
    fn status(self) -> &'static str {
        match self {
            Stage::Prestart | Stage::CreateRuntime | Stage::CreateContainer => "creating",
            Stage::StartContainer => "created",
            Stage::Poststart => "running",
            Stage::Poststop => "stopped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("invalid OCI spec: {stage} hook {index}: path {path:?} is not absolute")]
    RelativePath {
        stage: &'static str,
        index: usize,
        path: PathBuf,
    },
    #[error("invalid OCI spec: {stage} hook {index} ({path}): timeout {timeout} is not greater than zero")]
    BadTimeout {
        stage: &'static str,
        index: usize,
        path: PathBuf,
        timeout: i64,
    },
    #[error("{stage} hook {path} cannot be started: {source}")]
    Spawn {
        stage: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage} hook {path} failed ({how}){stderr}")]
    Failed {
        stage: &'static str,
        path: PathBuf,
        how: String,
        stderr: String,
    },
    #[error("{stage} hook {path} did not finish within {secs} s (killed)")]
    TimedOut {
        stage: &'static str,
        path: PathBuf,
        secs: u64,
    },
}

/// A container's hooks, checked (absolute paths, positive timeouts), and the
/// annotations their state carries.
#[derive(Debug, Clone, Default)]
pub struct ContainerHooks {
    by_stage: HashMap<&'static str, Vec<Hook>>,
    annotations: HashMap<String, String>,
}

impl ContainerHooks {
    /// The spec's `hooks`, or why they cannot run.
    pub fn from_spec(
        hooks: Option<&oci_spec::runtime::Hooks>,
        annotations: Option<&HashMap<String, String>>,
    ) -> Result<ContainerHooks, HookError> {
        let mut by_stage = HashMap::new();
        let annotations = annotations.cloned().unwrap_or_default();
        let Some(h) = hooks else {
            return Ok(ContainerHooks {
                by_stage,
                annotations,
            });
        };
        #[allow(deprecated)]
        let prestart = h.prestart();
        for (stage, list) in [
            (Stage::Prestart, prestart),
            (Stage::CreateRuntime, h.create_runtime()),
            (Stage::CreateContainer, h.create_container()),
            (Stage::StartContainer, h.start_container()),
            (Stage::Poststart, h.poststart()),
            (Stage::Poststop, h.poststop()),
        ] {
            let list = list.clone().unwrap_or_default();
            for (index, hook) in list.iter().enumerate() {
                check(stage, index, hook)?;
            }
            if !list.is_empty() {
                by_stage.insert(stage.name(), list);
            }
        }
        Ok(ContainerHooks {
            by_stage,
            annotations,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.by_stage.is_empty()
    }

    /// Runs the hooks of `stage` in order; the first that fails stops the rest.
    pub async fn run(&self, stage: Stage, state: &State<'_>) -> Result<(), HookError> {
        let Some(hooks) = self.by_stage.get(stage.name()) else {
            return Ok(());
        };
        let state_json = state.json(stage, &self.annotations);
        for hook in hooks {
            run_one(stage, hook, &state_json).await?;
        }
        Ok(())
    }

    /// Runs the hooks of `stage` whose failure only gets logged (poststart, poststop).
    pub async fn run_logged(&self, stage: Stage, state: &State<'_>) {
        if let Err(e) = self.run(stage, state).await {
            tracing::warn!(container = state.id, error = %e, "hook failed; going on");
        }
    }
}

fn check(stage: Stage, index: usize, hook: &Hook) -> Result<(), HookError> {
    if !hook.path().is_absolute() {
        return Err(HookError::RelativePath {
            stage: stage.name(),
            index,
            path: hook.path().clone(),
        });
    }
    if let Some(t) = hook.timeout() {
        if t <= 0 {
            return Err(HookError::BadTimeout {
                stage: stage.name(),
                index,
                path: hook.path().clone(),
                timeout: t,
            });
        }
    }
    Ok(())
}

/// The container's state as the runtime spec defines it, minus `status` (the stage's)
/// and the annotations (the hooks').
pub struct State<'a> {
    pub id: &'a str,
    pub pid: u32,
    pub bundle: &'a Path,
}

impl State<'_> {
    fn json(&self, stage: Stage, annotations: &HashMap<String, String>) -> Vec<u8> {
        let mut state = serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": stage.status(),
            "bundle": self.bundle,
        });
        if stage != Stage::Poststop {
            state["pid"] = self.pid.into();
        }
        if !annotations.is_empty() {
            state["annotations"] = serde_json::json!(annotations);
        }
        serde_json::to_vec(&state).unwrap_or_default()
    }
}

async fn run_one(stage: Stage, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(&path);
    if let Some(argv0) = args.first() {
        cmd.arg0(argv0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for kv in hook.env().iter().flatten() {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => cmd.env(k, v),
            _ => continue,
        };
    }
    let secs = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .map_or(DEFAULT_TIMEOUT.as_secs(), |t| t);
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        stage: stage.name(),
        path: path.clone(),
        source,
    })?;
    tracing::info!(stage = stage.name(), hook = %path.display(), "running hook");
    let finished = tokio::time::timeout(Duration::from_secs(secs), async {
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its state may close stdin first: not an error.
            let _ = stdin.write_all(state_json).await;
        }
        child.wait_with_output().await
    })
    .await;
    let output = match finished {
        // Dropping the child's future killed it (kill_on_drop).
        Err(_) => {
            return Err(HookError::TimedOut {
                stage: stage.name(),
                path,
                secs,
            })
        }
        Ok(Err(source)) => {
            return Err(HookError::Spawn {
                stage: stage.name(),
                path,
                source,
            })
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    let how = match (output.status.code(), output.status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "no status".into(),
    };
    let text = String::from_utf8_lossy(&output.stderr);
    let text = text.trim();
    let stderr = if text.is_empty() {
        String::new()
    } else {
        let start = text.len().saturating_sub(STDERR_QUOTED);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        format!(": {}", &text[start..])
    };
    Err(HookError::Failed {
        stage: stage.name(),
        path,
        how,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(path: &str, args: &[&str], env: &[&str], timeout: Option<i64>) -> Hook {
        let mut h = Hook::default();
        h.set_path(PathBuf::from(path));
        h.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        h.set_env(Some(env.iter().map(|s| s.to_string()).collect()));
        h.set_timeout(timeout);
        h
    }

    fn hooks(stage: Stage, list: Vec<Hook>) -> ContainerHooks {
        let mut h = oci_spec::runtime::Hooks::default();
        match stage {
            Stage::CreateRuntime => h.set_create_runtime(Some(list)),
            Stage::Poststop => h.set_poststop(Some(list)),
            _ => unreachable!("only the stages these tests use"),
        };
        let annotations = HashMap::from([("k".to_string(), "v".to_string())]);
        ContainerHooks::from_spec(Some(&h), Some(&annotations)).expect("valid hooks")
    }

    fn state(bundle: &Path) -> State<'_> {
        State {
            id: "c1",
            pid: 42,
            bundle,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_hook_gets_the_state_its_args_and_only_its_env_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = dir.path().join("log");
        let script = format!(
            "printf '%s|%s|%s|%s\\n' \"$(tr '\\0' '\\n' < /proc/$$/cmdline | head -1)\" \"$1\" \"$MARK\" \"$HOME\" >> {0}; cat >> {0}; echo >> {0}",
            log.display()
        );
        let list = vec![
            hook(
                "/bin/sh",
                &["first", "-c", &script, "sh", "a1"],
                &["MARK=one"],
                None,
            ),
            hook(
                "/bin/sh",
                &["second", "-c", &script, "sh", "a2"],
                &["MARK=two"],
                Some(5),
            ),
        ];
        let h = hooks(Stage::CreateRuntime, list);
        runtime()
            .block_on(h.run(Stage::CreateRuntime, &state(dir.path())))
            .expect("hooks pass");
        let text = std::fs::read_to_string(&log).expect("log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[0], "first|a1|one|",
            "argv[0], args, env; HOME not inherited"
        );
        assert_eq!(lines[2], "second|a2|two|");
        let state: serde_json::Value = serde_json::from_str(lines[1]).expect("state JSON");
        assert_eq!(state["id"], "c1");
        assert_eq!(state["status"], "creating");
        assert_eq!(state["pid"], 42);
        assert_eq!(state["bundle"], dir.path().to_string_lossy().as_ref());
        assert_eq!(state["annotations"]["k"], "v");
        assert_eq!(state["ociVersion"], "1.0.2");
    }

    #[test]
    fn a_failing_hook_is_named_with_its_status_and_stderr_and_stops_the_rest() {
        let dir = tempfile::tempdir().expect("tmp");
        let after = dir.path().join("after");
        let list = vec![
            hook(
                "/bin/sh",
                &["sh", "-c", "echo no GPU here >&2; exit 3"],
                &[],
                None,
            ),
            hook(
                "/bin/sh",
                &["sh", "-c", &format!("touch {}", after.display())],
                &[],
                None,
            ),
        ];
        let h = hooks(Stage::CreateRuntime, list);
        let e = runtime()
            .block_on(h.run(Stage::CreateRuntime, &state(dir.path())))
            .expect_err("the hook fails");
        let text = e.to_string();
        assert!(
            text.contains("createRuntime hook /bin/sh failed (exit status 3): no GPU here"),
            "{text}"
        );
        assert!(!after.exists(), "the next hook did not run");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_and_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let h = hooks(
            Stage::Poststop,
            vec![hook("/bin/sleep", &["sleep", "30"], &[], Some(1))],
        );
        let start = std::time::Instant::now();
        let e = runtime()
            .block_on(h.run(Stage::Poststop, &state(dir.path())))
            .expect_err("the hook times out");
        assert!(start.elapsed() < Duration::from_secs(20));
        assert!(
            e.to_string()
                .contains("poststop hook /bin/sleep did not finish within 1 s"),
            "{e}"
        );
    }

    #[test]
    fn hooks_the_shim_cannot_run_are_refused_by_name() {
        let mut h = oci_spec::runtime::Hooks::default();
        h.set_start_container(Some(vec![hook("bin/relative", &[], &[], None)]));
        let e = ContainerHooks::from_spec(Some(&h), None).expect_err("relative");
        assert!(
            e.to_string().contains("startContainer hook 0")
                && e.to_string().contains("bin/relative"),
            "{e}"
        );
        let mut h = oci_spec::runtime::Hooks::default();
        h.set_poststart(Some(vec![hook("/bin/true", &[], &[], Some(0))]));
        let e = ContainerHooks::from_spec(Some(&h), None).expect_err("zero timeout");
        assert!(e.to_string().contains("timeout 0"), "{e}");
        assert!(ContainerHooks::from_spec(None, None)
            .expect("none")
            .is_empty());
    }

    #[test]
    fn the_state_says_the_stage_status_and_no_pid_after_stop() {
        let bundle = PathBuf::from("/b");
        let s = State {
            id: "x",
            pid: 7,
            bundle: &bundle,
        };
        let none = HashMap::new();
        let v: serde_json::Value =
            serde_json::from_slice(&s.json(Stage::StartContainer, &none)).expect("json");
        assert_eq!(
            (v["status"].as_str(), v["pid"].as_u64()),
            (Some("created"), Some(7))
        );
        assert!(v.get("annotations").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(&s.json(Stage::Poststop, &none)).expect("json");
        assert_eq!(v["status"], "stopped");
        assert!(v.get("pid").is_none());
    }
}
