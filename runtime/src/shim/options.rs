//! Runtime options containerd passes with a task (`CreateTaskRequest.options`): hull
//! takes containerd's generic `runtimeoptions.v1.Options` (CRI's `ConfigPath`, `ctr run
//! --runtime-config-path`), which names hull's config file. It also accepts runc's
//! `containerd.runc.v1.Options` and `containerd.linux.runc.CreateOptions`, which ctr
//! (2.x and 1.7 respectively) sends to any runtime when the spec has a user namespace
//! (to make the IO pipes the container's root's): none of their fields applies to a VM (they say how to run the runc binary on the host, and
//! who owns IO pipes the shim opens itself), so a well-formed one is taken and ignored.
//! Anything else is refused by name rather than silently ignored.

use std::path::PathBuf;

use super::ShimError;

/// Type URL of containerd's generic runtime options.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// Type URLs of runc's runtime options: the shim v2 one, and the older create options.
pub const RUNC_OPTIONS_TYPES: [&str; 2] = [
    "containerd.runc.v1.Options",
    "containerd.linux.runc.CreateOptions",
];

/// What hull takes from the runtime options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// hull's config file instead of `/etc/hull/config.toml`.
    pub config_path: Option<PathBuf>,
}

/// Decodes the options `Any` (type URL and bytes); empty means none.
pub fn parse(type_url: &str, value: &[u8]) -> Result<RuntimeOptions, ShimError> {
    if type_url.is_empty() && value.is_empty() {
        return Ok(RuntimeOptions::default());
    }
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    if RUNC_OPTIONS_TYPES.contains(&name) {
        return if is_protobuf(value) {
            Ok(RuntimeOptions::default())
        } else {
            Err(ShimError::InvalidArgument(format!(
                "malformed {name} runtime options"
            )))
        };
    }
    if name != RUNTIME_OPTIONS_TYPE {
        return Err(ShimError::InvalidArgument(format!(
            "unknown runtime options type {type_url:?}: hull takes only {RUNTIME_OPTIONS_TYPE} (with ConfigPath = hull's config file)"
        )));
    }
    let fields = decode_string_fields(value).ok_or_else(|| {
        ShimError::InvalidArgument(format!("malformed {RUNTIME_OPTIONS_TYPE} runtime options"))
    })?;
    let mut opts = RuntimeOptions::default();
    for (number, text) in fields {
        match number {
            // 1: type_url (of the options inside, unused), 2: config_path.
            1 => {}
            2 if !text.is_empty() => opts.config_path = Some(PathBuf::from(text)),
            2 => {}
            n => {
                return Err(ShimError::InvalidArgument(format!(
                    "unknown field {n} in {RUNTIME_OPTIONS_TYPE} runtime options"
                )))
            }
        }
    }
    Ok(opts)
}

/// Reads one protobuf varint off the front of `b`.
fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Whether `b` is a well-formed protobuf message of varint and length-delimited
/// fields (what runc's options are made of).
fn is_protobuf(mut b: &[u8]) -> bool {
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else {
            return false;
        };
        let ok = match key & 7 {
            0 => varint(&mut b).is_some(),
            2 => match varint(&mut b).and_then(|l| usize::try_from(l).ok()) {
                Some(len) if len <= b.len() => {
                    b = &b[len..];
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ok || key >> 3 == 0 {
            return false;
        }
    }
    true
}

/// The (field number, UTF-8 string) pairs of a protobuf message made only of string
/// fields; None if it has anything else.
fn decode_string_fields(mut b: &[u8]) -> Option<Vec<(u64, String)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        if key & 7 != 2 {
            return None;
        }
        let len = usize::try_from(varint(&mut b)?).ok()?;
        if len > b.len() {
            return None;
        }
        let (s, rest) = b.split_at(len);
        out.push((key >> 3, String::from_utf8(s.to_vec()).ok()?));
        b = rest;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, s: &str) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn config_path_and_refusals() {
        assert_eq!(parse("", &[]).expect("none"), RuntimeOptions::default());
        let mut b = field(1, "x");
        b.extend(field(2, "/etc/hull/other.toml"));
        let o = parse("type.googleapis.com/runtimeoptions.v1.Options", &b).expect("ok");
        assert_eq!(o.config_path, Some(PathBuf::from("/etc/hull/other.toml")));
        // runc's (as ctr 2.x sends with a user namespace: io_uid 5, io_gid 6, and a
        // binary name) are taken and ignored; garbage under that name is not.
        let mut runc = vec![5 << 3, 0xc0, 0x84, 0x3d, 6 << 3, 0xc0, 0x84, 0x3d];
        runc.extend(field(4, "runc"));
        let o = parse("containerd.runc.v1.Options", &runc).expect("runc options");
        assert_eq!(o, RuntimeOptions::default());
        let o = parse("containerd.linux.runc.CreateOptions", &runc[..8]).expect("create options");
        assert_eq!(o, RuntimeOptions::default());
        let e = parse("containerd.runc.v1.Options", &[8]).expect_err("truncated");
        assert!(e.to_string().contains("malformed"), "{e}");
        let e = parse("containerd.runc.v1.Options", &[(4 << 3) | 2, 9, b'x']).expect_err("short");
        assert!(e.to_string().contains("malformed"), "{e}");
        let e = parse("io.containerd.other.v1.Options", &[]).expect_err("other options");
        assert!(
            e.to_string().contains("io.containerd.other.v1.Options"),
            "{e}"
        );
        let e = parse(RUNTIME_OPTIONS_TYPE, &[8, 1]).expect_err("not a string");
        assert!(e.to_string().contains("malformed"), "{e}");
        let e = parse(RUNTIME_OPTIONS_TYPE, &field(3, "x")).expect_err("unknown field");
        assert!(e.to_string().contains("field 3"), "{e}");
    }
}
