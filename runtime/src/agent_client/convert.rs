//! Plain Rust values <-> the agent API's protobuf messages. The only place besides
//! `agent_client` that names `hull_proto` types.

use super::{ExitInfo, StdioSpec, StorageSpec};

pub fn storage(s: &StorageSpec) -> hull_proto::Storage {
    let mut p = hull_proto::Storage::new();
    p.driver = s.driver.clone();
    p.source = s.source.clone();
    p.fstype = s.fstype.clone();
    p.options = s.options.clone();
    p.mount_point = s.mount_point.clone();
    p.readonly = s.readonly;
    p
}

pub fn stdio(s: &StdioSpec) -> hull_proto::StdioConfig {
    let mut p = hull_proto::StdioConfig::new();
    p.terminal = s.terminal;
    p.stdin = s.stdin;
    p.stdout = s.stdout;
    p.stderr = s.stderr;
    p
}

pub fn exit(r: &hull_proto::WaitProcessResponse) -> ExitInfo {
    ExitInfo {
        status: r.status,
        oom_killed: r.oom_killed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_storage_is_what_the_agent_expects() {
        let s = StorageSpec::virtiofs_share("hullshare", "/run/hull/share");
        let p = storage(&s);
        assert_eq!(
            (
                p.driver.as_str(),
                p.source.as_str(),
                p.fstype.as_str(),
                p.mount_point.as_str()
            ),
            ("virtiofs", "hullshare", "virtiofs", "/run/hull/share")
        );
        assert!(!p.readonly && p.options.is_empty());
        let io = stdio(&StdioSpec {
            terminal: true,
            stdin: true,
            stdout: true,
            stderr: false,
        });
        assert!(io.terminal && io.stdin && io.stdout && !io.stderr);
        let mut w = hull_proto::WaitProcessResponse::new();
        w.status = 137;
        w.oom_killed = true;
        assert_eq!(
            exit(&w),
            ExitInfo {
                status: 137,
                oom_killed: true
            }
        );
    }
}
