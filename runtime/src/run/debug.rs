//! `hull debug exec SANDBOX -- CMD`: a command in the guest itself, outside any
//! container (the VM's root namespaces, as root), for debugging a pod.
//!
//! Only a sandbox booted with `[debug] exec = true` allows it: the agent was told so at
//! CreateSandbox and refuses otherwise (it is the policy point); hull checks the
//! sandbox's record first to say why before connecting. SANDBOX is a `hull run --name`
//! name, or a sandbox id (or unique id prefix) as `hull ps` lists them, containerd's
//! sandboxes included. Streams, `-t`/`-i`, signals and exit codes work as for `hull exec`.
//!
//! The guest has no tools of its own: the command is a guest path, typically a static
//! binary of a container's rootfs in the sandbox share, e.g.
//! `/run/hull/share/containers/<id>/rootfs/bin/busybox sh`.

use oci_spec::runtime::{Process, ProcessBuilder};

use super::{Attach, RunError, Signals};
use crate::agent_client::{AgentClient, ExitInfo, ProcessRef};
use crate::config::Config;
use crate::inspect;
use crate::sandbox::record::SandboxRecord;

/// The PATH of a debug process.
pub const DEBUG_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `hull debug exec` was asked for.
#[derive(Debug, Clone, Default)]
pub struct DebugExecOptions {
    /// A `hull run --name`, or a sandbox id or unique id prefix (`hull ps`).
    pub sandbox: String,
    pub tty: bool,
    pub interactive: bool,
    pub command: Vec<String>,
}

/// Runs the debug process and returns its exit once its output is drained.
pub async fn debug_exec(
    config: &Config,
    opts: &DebugExecOptions,
    signals: &mut Signals,
) -> Result<ExitInfo, RunError> {
    if opts.command.is_empty() {
        return Err(RunError::Usage(
            "hull debug exec needs a command after `--`".into(),
        ));
    }
    let record = debug_sandbox(config, &opts.sandbox)?;
    let json =
        serde_json::to_vec(&debug_process(opts)?).map_err(|e| RunError::Internal(e.to_string()))?;
    let agent = AgentClient::connect(&record.vsock_uds, config.boot.request_timeout())
        .await
        .map_err(RunError::agent("connecting to the sandbox's agent"))?;
    let exec_id = format!("debug-{}", crate::sandbox::state_dir::new_id());
    let how = Attach {
        tty: opts.tty,
        interactive: opts.interactive,
    };
    super::exec::start_and_attach(
        config,
        &agent,
        ProcessRef::exec("", &exec_id),
        json,
        how,
        signals,
    )
    .await
}

/// `hull debug crash-agent SANDBOX`: fault injection for `scripts/soak`. The agent
/// aborts after its reply; the guest kernel panics and the VM stops, and whatever runs
/// the sandbox (`hull run`, the containerd shim) must see its tasks exit and clean up.
pub async fn crash_agent(config: &Config, sandbox: &str) -> Result<(), RunError> {
    let record = debug_sandbox(config, sandbox)?;
    let agent = AgentClient::connect(&record.vsock_uds, config.boot.request_timeout())
        .await
        .map_err(RunError::agent("connecting to the sandbox's agent"))?;
    agent
        .debug_crash_agent()
        .await
        .map_err(RunError::agent("DebugCrashAgent"))
}

/// The record of `sandbox` (a name, id or unique id prefix), which must have been booted
/// with debug processes allowed.
fn debug_sandbox(config: &Config, sandbox: &str) -> Result<SandboxRecord, RunError> {
    let state = &config.runtime.state_dir;
    let dir = inspect::find(state, sandbox).map_err(|e| RunError::Usage(e.to_string()))?;
    let id = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RunError::Internal(format!("sandbox dir {} has no name", dir.display())))?;
    let record = SandboxRecord::load(state, &id).map_err(|e| RunError::Sandbox(e.into()))?;
    if !record.debug_exec {
        return Err(RunError::Refused(format!(
            "sandbox {id} was booted without debug processes; set `[debug] exec = true` in hull's config ({}) and start the sandbox again",
            crate::config::DEFAULT_CONFIG_PATH
        )));
    }
    Ok(record)
}

/// The OCI process the agent gets: the command, a root environment, cwd `/`, and
/// the terminal with hull's window size.
fn debug_process(opts: &DebugExecOptions) -> Result<Process, RunError> {
    let mut env = vec![format!("PATH={DEBUG_PATH}"), "HOME=/root".to_string()];
    if opts.tty {
        env.push("TERM=xterm".into());
    }
    let mut b = ProcessBuilder::default()
        .args(opts.command.clone())
        .env(env)
        .cwd("/")
        .terminal(opts.tty);
    if opts.tty {
        if let Some(size) = super::io::console_size() {
            b = b.console_size(size);
        }
    }
    b.build().map_err(|e| RunError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn unknown_sandboxes_and_empty_commands_are_named() {
        let state = tempfile::tempdir().expect("tmp");
        let mut config = Config::default();
        config.runtime.state_dir = state.path().to_path_buf();
        let mut signals = Signals::new();
        let mut opts = DebugExecOptions {
            sandbox: "nope".into(),
            command: vec!["true".into()],
            ..Default::default()
        };
        let e = debug_exec(&config, &opts, &mut signals)
            .await
            .expect_err("unknown");
        assert!(e.to_string().contains("no sandbox \"nope\""), "{e}");
        opts.command.clear();
        let e = debug_exec(&config, &opts, &mut signals)
            .await
            .expect_err("no command");
        assert!(e.to_string().contains("needs a command"), "{e}");
    }

    #[test]
    fn the_debug_process_runs_as_root_in_the_guest_root() {
        let opts = DebugExecOptions {
            sandbox: "x".into(),
            tty: true,
            command: vec!["/bin/x".into(), "-a".into()],
            ..Default::default()
        };
        let p = debug_process(&opts).expect("process");
        assert_eq!(
            p.args().clone().expect("args"),
            vec!["/bin/x".to_string(), "-a".to_string()]
        );
        assert_eq!(p.cwd().to_str(), Some("/"));
        assert_eq!(p.terminal(), Some(true));
        let env = p.env().clone().expect("env");
        assert!(
            env.iter().any(|e| e.starts_with("PATH=")) && env.contains(&"TERM=xterm".to_string()),
            "{env:?}"
        );
    }
}
