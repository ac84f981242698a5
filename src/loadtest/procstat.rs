//! What the benchmark reads from /proc: a server process's CPU time and
//! resident memory, and the machine description printed in every report.
//!
//! CPU time is `utime + stime` (fields 14 and 15 of `/proc/PID/stat`) in
//! clock ticks; ticks per second come from `getconf CLK_TCK` once (no
//! `unsafe` sysconf call), falling back to 100, the value on every Linux
//! build we know of.

use std::process::Command;
use std::sync::OnceLock;

/// Clock ticks per second when `getconf CLK_TCK` cannot be run.
const CLK_TCK_FALLBACK: u64 = 100;

/// Ticks per second of the CPU times in /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(CLK_TCK_FALLBACK)
    })
}

/// CPU seconds (user + system) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let ticks = parse_stat_cpu_ticks(&text).ok_or_else(|| format!("{path}: unexpected format"))?;
    Ok(ticks as f64 / clock_ticks_per_second() as f64)
}

/// utime + stime from the text of /proc/PID/stat. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted after
/// the last ')': field 3 is the first there, so 14 and 15 are at 11 and 12.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    kib_field(&text, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("{path}: no VmRSS line"))
}

/// A `Name:   123 kB` line of /proc/PID/status or /proc/meminfo, in KiB.
pub fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine, as the original's report describes it (Python's `platform`
/// module fields).
#[derive(Clone, Debug)]
pub struct SystemInfo {
    pub system: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub cpu_count: usize,
    pub ram_gb: f64,
}

impl SystemInfo {
    pub fn collect() -> SystemInfo {
        let kernel = |file: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{file}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        let ram_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| kib_field(&t, "MemTotal:"))
            .unwrap_or(0);
        SystemInfo {
            system: kernel("ostype"),
            release: kernel("osrelease"),
            version: kernel("version"),
            machine: std::env::consts::ARCH.to_string(),
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_gb: ram_kib as f64 / (1024.0 * 1024.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "1234 (redis server) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 5 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0);
        let info = SystemInfo::collect();
        assert_eq!(info.system, "Linux");
        assert!(info.cpu_count >= 1);
    }

    #[test]
    fn kib_fields_parse() {
        let status = "Name:\tx\nVmRSS:\t   2048 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(2048));
        assert_eq!(kib_field(status, "VmHWM:"), None);
    }
}
