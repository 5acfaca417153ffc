//! The container's seccomp filter on its init and on every exec'd process.
//!
//! libcontainer 0.7 builds an exec's ("tenant") spec from the process alone: its
//! `linux` section keeps namespaces, cgroup path, personality and time offsets, and
//! drops `linux.seccomp`, so without this module `kubectl exec` and `ctr task exec`
//! processes would run unfiltered (`Seccomp: 0` beside the init's `Seccomp: 2`). And
//! libcontainer compiles a profile anew for every process, the slowest step of a
//! container's creation in the guest; the agent loads a program compiled once per
//! profile instead ([`super::seccomp_bpf`]), for the init as for execs.
//!
//! The agent loads the filter through libcontainer's executor hook, which runs in
//! the new process after it joined the container's namespaces and cgroup, set its
//! rlimits, user and capabilities, right before `execve`, in the order runc uses:
//! - with `noNewPrivileges`, the filter is loaded there (loading needs no privilege);
//! - without it, loading needs CAP_SYS_ADMIN: the process is created with CAP_SYS_ADMIN
//!   and CAP_SETPCAP added to its sets ([`ExecSeccomp::for_process`]), loads the filter,
//!   then drops to exactly the capabilities its spec asks for, as the container's init
//!   did (libcontainer loads the init's filter before dropping its capabilities too).

use std::collections::HashMap;
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, Process, Spec,
};

use super::seccomp_bpf::{self, CompiledFilter, SeccompBpfError};

/// What may go wrong before the process is created.
#[derive(Debug, thiserror::Error)]
pub enum ExecSeccompError {
    #[error("the container's seccomp profile uses SCMP_ACT_NOTIFY, which hull does not support for exec'd processes")]
    NotifyProfile,
    #[error(transparent)]
    Compile(#[from] SeccompBpfError),
}

/// Loads the container's filter, then (when it was needed for loading) drops the
/// capabilities added for it, then runs the command as libcontainer's default executor does.
#[derive(Clone)]
pub struct ExecSeccomp {
    filter: Arc<CompiledFilter>,
    /// The process's own capabilities, when extra ones were added for the load.
    drop_to: Option<LinuxCapabilities>,
}

/// The capabilities loading a filter needs without no_new_privs, and dropping the
/// extra ones after it.
const LOAD_CAPS: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

impl ExecSeccomp {
    /// The executor for `process` in a container whose seccomp profile is `profile`,
    /// and the process as libcontainer must create it.
    pub fn for_process(
        profile: &LinuxSeccomp,
        process: &Process,
    ) -> Result<(ExecSeccomp, Process), ExecSeccompError> {
        if profile.default_action() == LinuxSeccompAction::ScmpActNotify
            || libcontainer::seccomp::is_notify(profile)
        {
            return Err(ExecSeccompError::NotifyProfile);
        }
        let filter = seccomp_bpf::compiled(profile)?;
        let mut created = process.clone();
        // Without capabilities in its spec the process keeps the agent's (all of them);
        // with no_new_privs the load needs none.
        let drop_to = match process.capabilities() {
            Some(own) if process.no_new_privileges() != Some(true) => {
                created.set_capabilities(Some(with_load_caps(own)));
                Some(own.clone())
            }
            _ => None,
        };
        Ok((ExecSeccomp { filter, drop_to }, created))
    }
}

/// `caps` with [`LOAD_CAPS`] added to the bounding, permitted and effective sets it
/// names (a set it leaves out is not changed by libcontainer, and keeps them anyway).
fn with_load_caps(caps: &LinuxCapabilities) -> LinuxCapabilities {
    let add = |set: &Option<Capabilities>| -> Option<Capabilities> {
        set.clone().map(|mut s| {
            s.extend(LOAD_CAPS);
            s
        })
    };
    let mut out = caps.clone();
    out.set_bounding(add(caps.bounding()));
    out.set_permitted(add(caps.permitted()));
    out.set_effective(add(caps.effective()));
    out
}

impl Executor for ExecSeccomp {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.filter.load().map_err(|e| {
            ExecutorError::Other(format!("loading the container's seccomp filter: {e}"))
        })?;
        if let Some(own) = &self.drop_to {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(own, syscall.as_ref()).map_err(|e| {
                ExecutorError::Other(format!(
                    "dropping the capabilities added to load seccomp: {e}"
                ))
            })?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompBuilder, ProcessBuilder};

    fn profile_defaulting_to(action: LinuxSeccompAction) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(action)
            .build()
            .expect("seccomp")
    }

    fn process(nnp: Option<bool>) -> Process {
        let caps: Capabilities = [Capability::Chown, Capability::Kill].into_iter().collect();
        let mut p = ProcessBuilder::default()
            .capabilities(
                LinuxCapabilities::default()
                    .set_bounding(Some(caps.clone()))
                    .set_permitted(Some(caps.clone()))
                    .set_effective(Some(caps))
                    .clone(),
            )
            .build()
            .expect("process");
        p.set_no_new_privileges(nnp);
        p
    }

    #[test]
    fn without_no_new_privs_load_caps_are_added_then_dropped_to_the_own_set() {
        let profile = profile_defaulting_to(LinuxSeccompAction::ScmpActErrno);
        let own = process(Some(false));
        let (exec, created) = ExecSeccomp::for_process(&profile, &own).expect("ok");
        let caps = created.capabilities().clone().expect("caps");
        for set in [caps.bounding(), caps.permitted(), caps.effective()] {
            let set = set.clone().expect("set");
            assert!(
                set.contains(&Capability::SysAdmin)
                    && set.contains(&Capability::Setpcap)
                    && set.contains(&Capability::Chown)
            );
        }
        assert_eq!(exec.drop_to.as_ref(), own.capabilities().as_ref());
    }

    #[test]
    fn with_no_new_privs_the_process_is_unchanged() {
        let profile = profile_defaulting_to(LinuxSeccompAction::ScmpActErrno);
        let own = process(Some(true));
        let (exec, created) = ExecSeccomp::for_process(&profile, &own).expect("ok");
        assert!(exec.drop_to.is_none());
        assert_eq!(created.capabilities(), own.capabilities());
    }

    #[test]
    fn notify_profiles_are_refused() {
        let profile = profile_defaulting_to(LinuxSeccompAction::ScmpActNotify);
        assert!(matches!(
            ExecSeccomp::for_process(&profile, &process(None)),
            Err(ExecSeccompError::NotifyProfile)
        ));
    }
}
