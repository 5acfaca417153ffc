//! What the agent was asked to do: command-line arguments (development and tests) and
//! `hull.*` options from the kernel command line (in the guest).
//!
//! Parsing is pure (strings in, values out) so it is unit tested without a VM.

use std::path::PathBuf;

use hull_proto::{AGENT_VSOCK_PORT, ANNOUNCE_VSOCK_PORT, HOST_CID};
use tracing::level_filters::LevelFilter;

/// Where the ttrpc server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, this port (the guest default).
    Vsock { port: u32 },
    /// A unix socket path (development and host-side tests).
    Unix(PathBuf),
}

impl ListenAddr {
    /// The address in ttrpc's notation (`vsock://-1:1024`, `unix:///path`).
    pub fn to_ttrpc(&self) -> String {
        match self {
            ListenAddr::Vsock { port } => format!("vsock://-1:{port}"),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
        }
    }
}

/// Where the readiness announcement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceTarget {
    Vsock {
        cid: u32,
        port: u32,
    },
    /// A unix socket (lets tests and tools observe the announcement without vsock).
    Unix(PathBuf),
}

/// Command-line arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--listen ADDR`; `None`: vsock port 1024.
    pub listen: Option<ListenAddr>,
    /// `--announce ADDR`; `None`: the host (CID 2, port 1025) when listening on vsock.
    pub announce: Option<AnnounceTarget>,
    /// `--no-announce`.
    pub no_announce: bool,
    /// `--log LEVEL` (outside the guest; in the guest `hull.log=` wins).
    pub log: Option<LevelFilter>,
    /// `--version`.
    pub version: bool,
}

impl Args {
    /// The listen address to use.
    pub fn listen_addr(&self) -> ListenAddr {
        self.listen.clone().unwrap_or(ListenAddr::Vsock {
            port: AGENT_VSOCK_PORT,
        })
    }

    /// Where to announce readiness, if anywhere: explicit `--announce`, else the host when
    /// the server listens on vsock; never with `--no-announce`.
    pub fn announce_target(&self) -> Option<AnnounceTarget> {
        if self.no_announce {
            return None;
        }
        match (&self.announce, self.listen_addr()) {
            (Some(target), _) => Some(target.clone()),
            (None, ListenAddr::Vsock { .. }) => Some(AnnounceTarget::Vsock {
                cid: HOST_CID,
                port: ANNOUNCE_VSOCK_PORT,
            }),
            (None, ListenAddr::Unix(_)) => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument {0:?} (usage: hull-agent [--listen ADDR] [--announce ADDR] [--no-announce] [--log LEVEL] [--version])")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("bad address {0:?}: expected unix:///PATH or vsock://CID:PORT")]
    BadAddr(String),
    #[error("bad log level {0:?}: expected off, error, warn, info, debug or trace")]
    BadLevel(String),
}

/// Parses the arguments after the program name.
pub fn parse_args<I, S>(args: I) -> Result<Args, ArgsError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut out = Args {
        listen: None,
        announce: None,
        no_announce: false,
        log: None,
        version: false,
    };
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &'static str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or(ArgsError::MissingValue(name))
        };
        match flag.as_str() {
            "--listen" => out.listen = Some(parse_listen(&value("--listen")?)?),
            "--announce" => out.announce = Some(parse_announce(&value("--announce")?)?),
            "--no-announce" => out.no_announce = true,
            "--log" => out.log = Some(parse_level(&value("--log")?)?),
            "--version" | "-V" => out.version = true,
            _ => return Err(ArgsError::Unknown(arg)),
        }
    }
    Ok(out)
}

fn parse_listen(s: &str) -> Result<ListenAddr, ArgsError> {
    if let Some(path) = s.strip_prefix("unix://") {
        return non_empty_path(path, s).map(ListenAddr::Unix);
    }
    if let Some(rest) = s.strip_prefix("vsock://") {
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| ArgsError::BadAddr(s.into()))?;
        // The agent always listens on any CID; accept the notations for it.
        if !matches!(cid, "-1" | "" | "any") {
            return Err(ArgsError::BadAddr(s.into()));
        }
        let port = port.parse().map_err(|_| ArgsError::BadAddr(s.into()))?;
        return Ok(ListenAddr::Vsock { port });
    }
    Err(ArgsError::BadAddr(s.into()))
}

fn parse_announce(s: &str) -> Result<AnnounceTarget, ArgsError> {
    if let Some(path) = s.strip_prefix("unix://") {
        return non_empty_path(path, s).map(AnnounceTarget::Unix);
    }
    if let Some(rest) = s.strip_prefix("vsock://") {
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| ArgsError::BadAddr(s.into()))?;
        let cid = cid.parse().map_err(|_| ArgsError::BadAddr(s.into()))?;
        let port = port.parse().map_err(|_| ArgsError::BadAddr(s.into()))?;
        return Ok(AnnounceTarget::Vsock { cid, port });
    }
    Err(ArgsError::BadAddr(s.into()))
}

fn non_empty_path(path: &str, whole: &str) -> Result<PathBuf, ArgsError> {
    if path.is_empty() {
        return Err(ArgsError::BadAddr(whole.into()));
    }
    Ok(PathBuf::from(path))
}

/// Parses a log level name.
pub fn parse_level(s: &str) -> Result<LevelFilter, ArgsError> {
    s.parse::<LevelFilter>()
        .map_err(|_| ArgsError::BadLevel(s.into()))
}

/// `hull.*` options from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelOptions {
    /// `hull.log=LEVEL`.
    pub log: Option<LevelFilter>,
    /// `hull.debug_console=1` (reserved: a debug shell on the console).
    pub debug_console: bool,
    /// `hull.*` words this agent does not know or could not parse (logged as warnings).
    pub ignored: Vec<String>,
}

/// Parses `/proc/cmdline`. Words that are not `hull.*` belong to the kernel or others.
/// Double quotes group words as the kernel does (`a="b c"`).
pub fn parse_cmdline(cmdline: &str) -> KernelOptions {
    let mut opts = KernelOptions::default();
    for word in split_cmdline(cmdline) {
        let Some(opt) = word.strip_prefix("hull.") else {
            continue;
        };
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        match key {
            "log" => match parse_level(value) {
                Ok(level) => opts.log = Some(level),
                Err(_) => opts.ignored.push(word.clone()),
            },
            "debug_console" => match value {
                "" | "1" | "on" | "true" | "yes" => opts.debug_console = true,
                "0" | "off" | "false" | "no" => opts.debug_console = false,
                _ => opts.ignored.push(word.clone()),
            },
            _ => opts.ignored.push(word.clone()),
        }
    }
    opts
}

/// Splits a kernel command line into words, honouring double quotes (which are removed).
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    for c in cmdline.chars() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests;
