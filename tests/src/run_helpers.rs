//! Helpers for the `hull run` tests: run hull on the demo image, read its output.

use std::io::Write;
use std::process::{Command, Output, Stdio};

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

