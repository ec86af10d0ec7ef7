//! What Linux's /proc says about a process: CPU time and memory, for the benchmarks.

/// Field `i` of /proc/PID/stat, counted from the one after the command name.
pub fn stat_field(pid: u32, i: usize) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(i)?.parse().ok()
}

/// CPU seconds (user + system) a process has used, in Linux's 1/100 s ticks.
pub fn cpu_seconds(pid: u32) -> f64 {
    (stat_field(pid, 11).unwrap_or(0) + stat_field(pid, 12).unwrap_or(0)) as f64 / 100.0
}

/// A `Vm…:` line of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
