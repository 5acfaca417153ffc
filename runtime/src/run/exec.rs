//! `hull exec NAME -- CMD`: one more process in the container of a running `hull run`.
//!
//! The sandbox is found by its `sandbox.json` record; the process inherits the
//! container's own process settings (capabilities, rlimits, no_new_privileges, AppArmor
//! and SELinux labels, env, cwd, user) from the container's `config.json` in the share,
//! with the command and any flags given here on top, as `runc exec` does. hull then
//! talks to the agent over its own vsock connection, streams stdio and exits with the
//! process's status. The sandbox itself is left alone: its owner tears it down.

use std::path::PathBuf;

use oci_spec::runtime::{Process, Spec, UserBuilder};

use super::{attach, Attach, RunError, Signals};
use crate::agent_client::{AgentClient, ExitInfo, ProcessRef};
use crate::config::Config;
use crate::sandbox::record::SandboxRecord;
use crate::sandbox::share::Share;
use crate::sandbox::state_dir::VMS_DIR;
use crate::spec::units;

/// What `hull exec` was asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The sandbox (and container) name given to `hull run --name`.
    pub name: String,
    pub tty: bool,
    pub interactive: bool,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub command: Vec<String>,
}

/// Runs the process and returns its exit once its output is drained.
pub async fn exec(
    config: &Config,
    opts: &ExecOptions,
    signals: &mut Signals,
) -> Result<ExitInfo, RunError> {
    if opts.command.is_empty() {
        return Err(RunError::Usage(
            "hull exec needs a command after `--`".into(),
        ));
    }
    for e in &opts.env {
        units::check_env(e)?;
    }
    let record = SandboxRecord::load(&config.runtime.state_dir, &opts.name)
        .map_err(|e| RunError::Sandbox(e.into()))?;
    let state_dir = config.runtime.state_dir.join(VMS_DIR).join(&record.id);
    let container = opts.name.as_str();
    let process = process_for(&state_dir, container, opts)?;
    let json = serde_json::to_vec(&process).map_err(|e| RunError::Internal(e.to_string()))?;

    let agent = AgentClient::connect(&record.vsock_uds, config.boot.request_timeout())
        .await
        .map_err(RunError::agent("connecting to the sandbox's agent"))?;
    let exec_id = format!("exec-{}", crate::sandbox::state_dir::new_id());
    let how = Attach {
        tty: opts.tty,
        interactive: opts.interactive,
    };
    start_and_attach(
        config,
        &agent,
        ProcessRef::exec(container, &exec_id),
        json,
        how,
        signals,
    )
    .await
}

/// Starts an exec'd process (`process_json`: an OCI Process) in the agent and attaches
/// hull's stdio to it until it exits. Shared by `hull exec` and `hull debug exec` (whose
/// processes have an empty container id).
pub(super) async fn start_and_attach(
    config: &Config,
    agent: &AgentClient,
    target: ProcessRef,
    process_json: Vec<u8>,
    how: Attach,
    signals: &mut Signals,
) -> Result<ExitInfo, RunError> {
    agent
        .exec_process(
            &target.container_id,
            &target.exec_id,
            process_json,
            &how.stdio(),
        )
        .await
        .map_err(RunError::agent("starting the process"))?;
    attach(agent, &target, how, signals, config.boot.shutdown_timeout()).await
}

/// The container's process, with this exec's command, terminal, env, cwd and user.
fn process_for(
    state_dir: &std::path::Path,
    container: &str,
    opts: &ExecOptions,
) -> Result<Process, RunError> {
    let dir =
        Share::container_dir_of(state_dir, container).map_err(|e| RunError::Sandbox(e.into()))?;
    let path = dir.join("config.json");
    let spec = Spec::load(&path).map_err(|e| RunError::Rootfs {
        path: path.clone(),
        why: format!("cannot read the container's spec: {e}"),
    })?;
    let mut process = spec.process().clone().ok_or_else(|| RunError::Rootfs {
        path: path.clone(),
        why: "the container's spec has no process".into(),
    })?;
    process.set_args(Some(opts.command.clone()));
    process.set_terminal(Some(opts.tty));
    process.set_console_size(if opts.tty {
        super::io::console_size()
    } else {
        None
    });
    let env = units::merge_env(&process.env().clone().unwrap_or_default(), &opts.env);
    process.set_env(Some(env));
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(RunError::Usage(format!(
                "--workdir {w:?} must be an absolute path"
            )));
        }
        process.set_cwd(PathBuf::from(w));
    }
    if let Some(u) = &opts.user {
        let rootfs = dir.join("rootfs");
        let (uid, gid) = units::resolve_user(u, Some(&rootfs))?;
        let user = UserBuilder::default()
            .uid(uid)
            .gid(gid)
            .build()
            .map_err(|e| RunError::Internal(e.to_string()))?;
        process.set_user(user);
    }
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_process_inherits_the_containers_settings() {
        let state = tempfile::tempdir().expect("tmp");
        let dir = Share::container_dir_of(state.path(), "c1").expect("dir");
        std::fs::create_dir_all(dir.join("rootfs")).expect("mkdir");
        let mut spec = Spec::default();
        let mut p = spec.process().clone().expect("default process");
        p.set_env(Some(vec!["PATH=/bin".into(), "A=1".into()]));
        p.set_no_new_privileges(Some(true));
        spec.set_process(Some(p));
        spec.save(dir.join("config.json")).expect("save");
        let opts = ExecOptions {
            name: "c1".into(),
            tty: true,
            env: vec!["A=2".into(), "B=3".into()],
            workdir: Some("/tmp".into()),
            user: Some("7:8".into()),
            command: vec!["id".into()],
            ..Default::default()
        };
        let got = process_for(state.path(), "c1", &opts).expect("process");
        assert_eq!(got.args().clone().expect("args"), vec!["id".to_string()]);
        assert_eq!(got.terminal(), Some(true));
        assert_eq!(got.no_new_privileges(), Some(true));
        assert_eq!(got.cwd().to_str(), Some("/tmp"));
        assert_eq!((got.user().uid(), got.user().gid()), (7, 8));
        let env = got.env().clone().expect("env");
        assert!(
            env.contains(&"A=2".to_string()) && env.contains(&"B=3".to_string()),
            "{env:?}"
        );
        assert!(env.contains(&"PATH=/bin".to_string()), "{env:?}");
        assert_eq!(
            env.iter().filter(|e| e.starts_with("A=")).count(),
            1,
            "{env:?}"
        );
    }

    #[test]
    fn a_container_without_spec_is_named() {
        let state = tempfile::tempdir().expect("tmp");
        let opts = ExecOptions {
            name: "c1".into(),
            command: vec!["id".into()],
            ..Default::default()
        };
        let e = process_for(state.path(), "c1", &opts).expect_err("no spec");
        assert!(e.to_string().contains("config.json"), "{e}");
    }
}
