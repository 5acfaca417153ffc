//! Helpers for the `hull run` tests: run hull on the demo image, read its output.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use crate::TestState;

pub fn run(state: &TestState, args: &[&str]) -> Output {
    run_in(state.hull(), args, None)
}

pub fn run_in(cmd: Command, args: &[&str], stdin: Option<&[u8]>) -> Output {
    hull_in(cmd, "run", args, stdin)
}

/// Runs `hull <subcommand> <args>` to the end, feeding `stdin` if given.
pub fn hull_in(mut cmd: Command, subcommand: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    cmd.arg(subcommand).args(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("start hull");
    let writer = stdin.map(|data| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let out = child.wait_with_output().expect("hull exits");
    if let Some(w) = writer {
        let _ = w.join();
    }
    out
}

pub fn demo(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--image".to_string(), "demo".to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `--image demo <args>` and returns the output after checking nothing is left.
pub fn demo_run(state: &TestState, args: &[&str]) -> Output {
    let out = run(state, &refs(&demo(args)));
    state.assert_nothing_left();
    out
}

#[macro_export]
macro_rules! need_run {
    ($name:expr) => {
        if !$crate::require_run($name) {
            return;
        }
    };
}

/// Starts `cmd` (a `hull` command: `run` and `args` are added) as a long-running named
/// container whose first output line is `ready`, and waits for that line. Panics with
/// hull's stderr when the container does not start.
pub fn start_ready(mut cmd: Command, args: &[String]) -> (Child, BufReader<ChildStdout>) {
    let mut hull = cmd
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("hull run");
    let mut out = BufReader::new(hull.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    if line != "ready\n" {
        let _ = hull.kill();
        let mut err = String::new();
        let _ = hull.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("the container did not start: {line:?}\n{err}");
    }
    (hull, out)
}
