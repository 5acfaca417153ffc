//! `containerd-shim-hull-v2`: hull's containerd shim (runtime `io.containerd.hull.v2`).
//! See `runtime/src/shim/`.

use std::os::unix::fs::OpenOptionsExt;

use hull_runtime::shim::{lifecycle, HullShim, RUNTIME_ID};

/// Logs go to containerd's shim log FIFO (`log` in the bundle, where containerd starts
/// the shim) when it is there, else to stderr. `-debug` or `HULL_LOG` set the level.
/// `HULL_LOG_SPANS=1` also logs each span's close with its duration (`time.busy`,
/// `time.idle`): `scripts/bench suite` reads a pod start's phases from those.
fn init_logging(sink: &LogSink) {
    let debug = std::env::args().any(|a| a == "-debug" || a == "--debug");
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if debug { "debug" } else { "info" })
    });
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()
        .filter(|f| {
            f.metadata()
                .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
                .unwrap_or(false)
        });
    let spans = if std::env::var_os("HULL_LOG_SPANS").is_some_and(|v| v == "1") {
        tracing_subscriber::fmt::format::FmtSpan::CLOSE
    } else {
        tracing_subscriber::fmt::format::FmtSpan::NONE
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_span_events(spans);
    if let Some(f) = fifo {
        sink.switch_to(f);
    }
    let sink = sink.clone();
    let _ = builder.with_writer(move || sink.clone()).try_init();
}

/// Where the serving shim's log lines go: stderr, or containerd's log FIFO. A pool
/// VM's keeper logs to its own file (its stderr) until a task takes it, then to that
/// task's FIFO.
#[derive(Clone, Default)]
struct LogSink(std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>);

impl LogSink {
    fn switch_to(&self, file: std::fs::File) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }

    /// Logs into the FIFO `log` in `bundle` from now on, if containerd made one.
    fn switch_to_bundle(&self, bundle: &std::path::Path) {
        let fifo = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(bundle.join("log"));
        if let Ok(f) = fifo {
            self.switch_to(f);
        }
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(f) => f.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(f) => f.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// `-v` / `-version` (Go flag syntax, one or two dashes), as containerd's own shims
/// take it: the shim crate parses the flag but ignores it.
fn wants_version() -> bool {
    std::env::args()
        .skip(1)
        .any(|a| matches!(a.as_str(), "-v" | "--v" | "-version" | "--version"))
}

/// What `-v` prints: the binary's name, hull's version and the git revision it was
/// built from (when built from a git checkout).
fn version_text() -> String {
    let revision = env!("HULL_GIT_REVISION");
    format!(
        "containerd-shim-hull-v2:\n  Version: {}\n  Revision: {}\n  Runtime: {RUNTIME_ID}\n",
        env!("CARGO_PKG_VERSION"),
        if revision.is_empty() {
            "unknown"
        } else {
            revision
        },
    )
}

/// `pool-keep ID VCPUS MEMORY_MIB`.
fn keeper_args(args: &[String]) -> Result<(String, hull_runtime::pool::VmSize), String> {
    match args {
        [id, vcpus, memory] => Ok((
            id.clone(),
            hull_runtime::pool::VmSize {
                vcpus: vcpus.parse().map_err(|_| format!("vCPUs {vcpus:?}"))?,
                memory_mib: memory.parse().map_err(|_| format!("memory {memory:?}"))?,
            },
        )),
        _ => Err(format!("{args:?}: want ID VCPUS MEMORY_MIB")),
    }
}

fn main() {
    if wants_version() {
        print!("{}", version_text());
        return;
    }
    // Only the serving shim logs into the FIFO; `start` and `delete` print protocol
    // data on stdout, their logs go to stderr (containerd logs it).
    let serving = !std::env::args().any(|a| a == "start" || a == "delete");
    let args: Vec<String> = std::env::args().collect();
    let keeper = match args.get(1).map(String::as_str) {
        Some(hull_runtime::pool::KEEPER_COMMAND) => Some(keeper_args(&args[2..])),
        _ => None,
    };
    let sink = LogSink::default();
    if serving {
        init_logging(&sink);
    } else {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .try_init();
    }
    // One thread: the shim is per pod and small; its helpers (QEMU, ...) get their
    // parent-death signal when this thread, i.e. the shim, ends.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Some(keeper) = keeper {
        // A pool VM: it boots, waits, and serves the task that takes it.
        let code = match keeper {
            Ok((id, size)) => rt.block_on(hull_runtime::shim::keeper::run(id, size, |bundle| {
                sink.switch_to_bundle(bundle)
            })),
            Err(why) => {
                tracing::error!(why, "bad pool-keep arguments");
                2
            }
        };
        rt.shutdown_timeout(std::time::Duration::from_secs(1));
        std::process::exit(code);
    }
    rt.block_on(containerd_shim::asynchronous::run::<HullShim>(
        RUNTIME_ID,
        Some(lifecycle::shim_config()),
    ));
    if serving {
        // The server is down: its socket goes too (see remove_socket_if_stale).
        let args: Vec<String> = std::env::args().collect();
        if let Some(socket) = args
            .iter()
            .position(|a| a == "-socket")
            .and_then(|i| args.get(i + 1))
        {
            lifecycle::remove_socket_if_stale(socket);
        }
    }
    // Never hang on exit for a blocking task (a mount helper, a FIFO open).
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
}
