//! Reading the guest's process table from /proc.

use std::path::Path;

/// `PF_KTHREAD` in /proc/<pid>/stat's flags: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What the agent needs from /proc/<pid>/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// One letter: R, S, D, Z (zombie), X (dead), ...
    pub state: char,
    pub ppid: i32,
    pub flags: u64,
}

impl Stat {
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Exited already (a zombie waiting for the reaper, or dead).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses /proc/<pid>/stat. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (pid, rest) = text.split_once(" (")?;
    let after = &rest[rest.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    Some(Stat {
        pid: pid.trim().parse().ok()?,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        flags: fields.get(6)?.parse().ok()?,
    })
}

/// Pids of live user-space processes other than `except` (kernel threads and zombies
/// are left out). Processes that vanish during the scan are skipped.
pub fn live_user_processes(proc_root: &Path, except: i32) -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == except {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        match parse_stat(&text) {
            Some(st) if !st.is_kernel_thread() && !st.is_dead() => pids.push(pid),
            _ => {}
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_user_process() {
        let st =
            parse_stat("42 (sh) S 1 42 42 34816 42 4194560 100 0 0 0 1 2 0 0 20 0 1 0").unwrap();
        assert_eq!(
            st,
            Stat {
                pid: 42,
                state: 'S',
                ppid: 1,
                flags: 4194560
            }
        );
        assert!(!st.is_kernel_thread());
        assert!(!st.is_dead());
    }

    #[test]
    fn recognises_kernel_threads_and_zombies() {
        let kthread = parse_stat("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").unwrap();
        assert!(kthread.is_kernel_thread());
        let zombie = parse_stat("77 (true) Z 1 77 77 0 -1 4227084 0 0").unwrap();
        assert!(zombie.is_dead());
    }

    #[test]
    fn odd_command_names() {
        let st = parse_stat("9 (a) b (c) R 3 9 9 0 -1 0 0").unwrap();
        assert_eq!((st.state, st.ppid, st.flags), ('R', 3, 0));
    }

    #[test]
    fn garbage_is_none() {
        for s in ["", "x", "1 (a", "1 (a) S", "x (a) S 1 1 1 1 1 0"] {
            assert_eq!(parse_stat(s), None, "{s:?}");
        }
    }

    #[test]
    fn this_process_is_seen_live() {
        let me = std::process::id() as i32;
        let pids = live_user_processes(Path::new("/proc"), -1).unwrap();
        assert!(pids.contains(&me));
        assert!(!live_user_processes(Path::new("/proc"), me)
            .unwrap()
            .contains(&me));
    }
}
