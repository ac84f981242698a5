//! CPU pinning for `test compare --pin`, without `unsafe` or a libc
//! binding: the servers are started under `taskset -c`, and each load
//! thread pins itself with `taskset -p -c CPUS TID` (its TID read from
//! /proc/thread-self).
//!
//! Why it exists: left alone, the kernel's wake-affine heuristic often puts
//! a ping-ponging server on the load generator's CPU, so a run may measure
//! two processes sharing one core, or not, from run to run. Pinning the
//! server alone on CPU 0 and the load on the others makes every run measure
//! the same placement, as redis-benchmark's guidance advises.
//!
//! Why it is off by default: on the quiet 2-vCPU KVM guest this was
//! developed on, pinned and unpinned runs gave the same figures within
//! run-to-run noise, but while another process kept one CPU busy, pinned
//! runs were 2-4× slower for both servers (the kernel cannot move a pinned
//! server or load thread off the busy CPU). On a dedicated machine with
//! more cores, `--pin` is the better methodology.

use std::process::{Command, Stdio};

/// Which CPUs the servers and the load threads use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// taskset list for the server processes, e.g. "0".
    pub server: String,
    /// taskset list for the load threads, e.g. "1" or "1-7".
    pub load: String,
}

impl Placement {
    /// Server on CPU 0, load on the rest; `None` when the machine has one
    /// CPU or `taskset` (util-linux) cannot be run.
    pub fn detect() -> Option<Placement> {
        let cpus = std::thread::available_parallelism().ok()?.get();
        if cpus < 2 || !taskset_works() {
            return None;
        }
        let allowed = allowed_cpus()?;
        let (&server, rest) = allowed.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let load: Vec<String> = rest.iter().map(|c| c.to_string()).collect();
        Some(Placement {
            server: server.to_string(),
            load: load.join(","),
        })
    }
}

fn taskset_works() -> bool {
    Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The CPUs this process may run on (Cpus_allowed_list of /proc/self/status).
fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    parse_cpu_list(list)
}

/// Parses a kernel CPU list such as `0-3,6,8-9`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// Pins the calling thread to `cpus` (a taskset list).
pub fn pin_current_thread(cpus: &str) -> Result<(), String> {
    let link = std::fs::read_link("/proc/thread-self")
        .map_err(|e| format!("cannot read /proc/thread-self to pin a load thread: {e}"))?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .ok_or("cannot read this thread's id from /proc/thread-self")?
        .to_string();
    let status = Command::new("taskset")
        .args(["-p", "-c", cpus, &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run taskset to pin a load thread: {e}"))?;
    if !status.success() {
        return Err(format!(
            "taskset -p -c {cpus} {tid} failed ({status}); run without --pin"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
