//! Check, Version and GuestStats: is the agent up, what is it, and how full is its guest.

use hull_proto::health_check_response::ServingStatus;
use hull_proto::{
    CheckRequest, GuestStatsResponse, HealthCheckResponse, VersionResponse, API_VERSION,
};

use super::{Service, ServiceError};

/// Where the guest's uptime comes from.
pub const PROC_UPTIME: &str = "/proc/uptime";
/// Where the guest's memory figures come from.
pub const PROC_MEMINFO: &str = "/proc/meminfo";

/// Answers SERVING: the agent has a single service, and a request reaching this code
/// means it serves.
pub fn do_check(_req: &CheckRequest) -> HealthCheckResponse {
    let mut resp = HealthCheckResponse::new();
    resp.status = ServingStatus::SERVING.into();
    resp
}

/// The agent's and the guest kernel's versions, and the guest's uptime.
pub fn do_version(_req: &CheckRequest) -> Result<VersionResponse, ServiceError> {
    let uts = nix::sys::utsname::uname().map_err(|e| ServiceError::internal("uname", e))?;
    let uptime = std::fs::read_to_string(PROC_UPTIME)
        .map_err(|e| ServiceError::internal("read /proc/uptime", e))?;
    let mut resp = VersionResponse::new();
    resp.agent_version = env!("CARGO_PKG_VERSION").to_string();
    resp.api_version = API_VERSION;
    resp.kernel_release = uts.release().to_string_lossy().into_owned();
    resp.uptime_ms =
        parse_uptime_ms(&uptime).map_err(|e| ServiceError::internal("parse /proc/uptime", e))?;
    Ok(resp)
}

/// The guest's MemTotal and MemAvailable, and the containers the agent holds.
pub fn do_guest_stats(svc: &Service) -> Result<GuestStatsResponse, ServiceError> {
    let text = std::fs::read_to_string(PROC_MEMINFO)
        .map_err(|e| ServiceError::internal("read /proc/meminfo", e))?;
    let field = |name: &str| {
        meminfo_bytes(&text, name)
            .ok_or_else(|| ServiceError::internal("parse /proc/meminfo", format!("no {name}")))
    };
    let mut resp = GuestStatsResponse::new();
    resp.mem_total_bytes = field("MemTotal")?;
    resp.mem_available_bytes = field("MemAvailable")?;
    resp.containers = u32::try_from(svc.containers.all().len()).unwrap_or(u32::MAX);
    Ok(resp)
}

/// The value of `name` in /proc/meminfo text (`MemTotal:  262144 kB`), in bytes.
pub fn meminfo_bytes(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, rest) = line.split_once(':')?;
        if key != name {
            return None;
        }
        let mut words = rest.split_whitespace();
        let value: u64 = words.next()?.parse().ok()?;
        match words.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected /proc/uptime content {0:?}")]
pub struct UptimeError(String);

/// Milliseconds from the first field of /proc/uptime (`"12345.67 23456.78\n"`), parsed
/// as decimal digits (no float rounding).
pub fn parse_uptime_ms(text: &str) -> Result<u64, UptimeError> {
    let bad = || UptimeError(text.chars().take(64).collect());
    let first = text.split_whitespace().next().ok_or_else(bad)?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    // The first three fractional digits are the milliseconds; pad short fractions.
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    secs.checked_mul(1000)
        .and_then(|s| s.checked_add(ms))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_parsed_to_milliseconds() {
        assert_eq!(parse_uptime_ms("12345.67 23456.78\n"), Ok(12_345_670));
        assert_eq!(parse_uptime_ms("0.05 0.00"), Ok(50));
        assert_eq!(parse_uptime_ms("3.1234 1.0"), Ok(3_123));
        assert_eq!(parse_uptime_ms("7 1"), Ok(7_000));
        assert_eq!(parse_uptime_ms("7."), Ok(7_000));
    }

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let text = "MemTotal:         262144 kB\nMemFree:  1000 kB\nMemAvailable:     131072 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(262_144 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(131_072 * 1024));
        assert_eq!(meminfo_bytes(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_bytes(text, "Mem"), None);
        assert_eq!(meminfo_bytes("MemTotal: x kB", "MemTotal"), None);
        assert_eq!(meminfo_bytes("MemTotal: 1 MB", "MemTotal"), None);
    }

    #[test]
    fn this_machine_has_its_memory_in_meminfo() {
        let text = std::fs::read_to_string(PROC_MEMINFO).unwrap();
        let total = meminfo_bytes(&text, "MemTotal").unwrap();
        let available = meminfo_bytes(&text, "MemAvailable").unwrap();
        assert!(total > 0 && available <= total, "{total} {available}");
    }

    #[test]
    fn bad_uptime_is_an_error() {
        for s in [
            "",
            "\n",
            "abc 1.0",
            "-1.0 2",
            "1.x 2",
            ".5 1",
            "1e3 1",
            "99999999999999999999.0 1",
        ] {
            assert!(parse_uptime_ms(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn check_says_serving() {
        let resp = do_check(&CheckRequest::new());
        assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
    }

    #[test]
    fn version_reports_this_build() {
        let v = do_version(&CheckRequest::new()).unwrap();
        assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(v.api_version, API_VERSION);
        assert!(!v.kernel_release.is_empty());
        assert!(v.uptime_ms > 0);
    }
}
