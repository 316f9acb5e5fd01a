//! CPU time and peak RSS of processes: the driver itself via getrusage, others
//! via /proc (parsed by pure functions so the parsing is testable).

/// The driver's own user+system CPU seconds and peak RSS in bytes.
pub fn driver_usage() -> (f64, u64) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0);
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    // ru_maxrss is in KiB on Linux.
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        (ru.ru_maxrss.max(0) as u64) * 1024,
    )
}

/// Peak RSS (`VmHWM`) in bytes from the text of /proc/PID/status.
pub fn peak_rss_from_status(status: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let kb = l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim();
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    })
}

/// CPU seconds (utime + stime) from the text of /proc/PID/stat.
pub fn cpu_seconds_from_stat(stat: &str, ticks_per_second: f64) -> Option<f64> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' field index 0 is `state` (field 3); utime is field 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Reads (cpu_seconds, peak_rss_bytes) of a live process; `None` once it exited.
pub fn process_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((
        cpu_seconds_from_stat(&stat, ticks)?,
        peak_rss_from_status(&status)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "1234 (wireguard (go)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 5 0 0";
        assert_eq!(cpu_seconds_from_stat(stat, 100.0), Some(3.0));
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(peak_rss_from_status(status), Some(2048 * 1024));
        assert_eq!(peak_rss_from_status("garbage"), None);
        assert_eq!(cpu_seconds_from_stat("no paren", 100.0), None);
    }

    #[test]
    fn reads_own_usage() {
        let (cpu, rss) = driver_usage();
        assert!(cpu >= 0.0 && rss > 0);
        assert!(process_usage(std::process::id()).is_some());
    }
}
