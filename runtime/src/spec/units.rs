//! Parsing of user-given values: memory sizes, CPU counts, users, env entries.

use std::path::Path;

use super::SpecError;

/// Smallest memory limit accepted: below this the runtime itself cannot start.
pub const MIN_MEMORY: u64 = 6 << 20;

/// `512M`, `1G`, `1024k`, `100b` or plain bytes (units are powers of 1024, any case).
pub fn parse_memory(s: &str) -> Result<u64, SpecError> {
    let bad = |why: &str| SpecError::BadValue {
        option: "--memory",
        value: s.to_string(),
        why: format!("{why}; expected bytes with an optional unit b, k, m or g (e.g. 512M, 1G)"),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let n: u64 = num.parse().map_err(|_| bad("number too large"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad(&format!("unknown unit {unit:?}"))),
    };
    let bytes = n.checked_mul(mult).ok_or_else(|| bad("too large"))?;
    if bytes < MIN_MEMORY {
        return Err(bad("below the minimum of 6M"));
    }
    if bytes > i64::MAX as u64 {
        return Err(bad("too large"));
    }
    Ok(bytes)
}

/// `--cpus 1.5`: a positive number of CPUs, at most 256.
pub fn parse_cpus(s: &str) -> Result<f64, SpecError> {
    let bad = |why: &str| SpecError::BadValue {
        option: "--cpus",
        value: s.to_string(),
        why: why.to_string(),
    };
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| bad("expected a number of CPUs, e.g. 0.5 or 2"))?;
    if !v.is_finite() || !(0.01..=256.0).contains(&v) {
        return Err(bad("must be between 0.01 and 256"));
    }
    Ok(v)
}

/// CFS period used with --cpus (containerd/docker's 100 ms).
pub const CPU_PERIOD: u64 = 100_000;

/// Quota in microseconds per [`CPU_PERIOD`] for `cpus` CPUs.
pub fn cpu_quota(cpus: f64) -> i64 {
    (cpus * CPU_PERIOD as f64).round() as i64
}

/// `K=V` with a non-empty key.
pub fn check_env(e: &str) -> Result<(), SpecError> {
    match e.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') => Ok(()),
        _ => Err(SpecError::BadValue {
            option: "--env",
            value: e.to_string(),
            why: "expected KEY=VALUE".into(),
        }),
    }
}

/// Merges env lists: later entries replace earlier ones with the same key; order kept.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.iter().chain(overrides) {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        if let Some(slot) = out
            .iter_mut()
            .find(|x| x.split_once('=').map(|(k, _)| k).unwrap_or(x) == key)
        {
            *slot = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// Resolves `UID[:GID]` or `NAME[:GROUP]` to numbers. Names are looked up in the
/// rootfs's /etc/passwd and /etc/group (when a host rootfs is given); a numeric UID
/// without GID takes the user's primary group from /etc/passwd, else 0.
pub fn resolve_user(spec: &str, rootfs: Option<&Path>) -> Result<(u32, u32), SpecError> {
    let bad = |why: String| SpecError::BadValue {
        option: "--user",
        value: spec.to_string(),
        why,
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() || g == Some("") {
        return Err(bad("expected UID[:GID]".into()));
    }
    let read = |file: &str| -> Vec<Vec<String>> {
        rootfs
            .and_then(|r| std::fs::read_to_string(r.join("etc").join(file)).ok())
            .map(|t| {
                t.lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| l.split(':').map(String::from).collect())
                    .collect()
            })
            .unwrap_or_default()
    };
    let passwd = read("passwd");
    let entry = passwd
        .iter()
        .find(|f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry.and_then(|f| f[2].parse().ok()).ok_or_else(|| {
            bad(format!(
                "no user {u:?} in the image's /etc/passwd; use a numeric UID"
            ))
        })?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("group")
                .iter()
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "no group {g:?} in the image's /etc/group; use a numeric GID"
                    ))
                })?,
        },
        None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    Ok((uid, gid))
}
