//! Child processes started inside a run's network namespace (data plane, daemon, NATS), with a
//! guard that never leaves a process behind: dropping a [`Child`] SIGKILLs and reaps it.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use super::netns::enter_fd;
use super::{LabError, Namespace};

/// How often `terminate` polls for the child's exit.
const POLL: Duration = Duration::from_millis(10);

/// A process running inside a namespace. It stays in the driver's process group on purpose: a
/// Ctrl-C in the terminal reaches it too, so an interrupted run leaves fewer processes behind.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    /// Program name, for error messages and logs.
    name: String,
    /// Namespace it runs in, for logs.
    ns: String,
    /// Set once reaped: after that the pid may belong to someone else, so it is never signalled.
    exited: Option<ExitStatus>,
}

/// Resource use of a live process, read from /proc.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    /// Current resident set size (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// Starts `cmd` inside `ns`: the child enters the namespace between fork and exec, so the
/// caller's threads never change namespace.
pub fn spawn_in(ns: &Namespace, mut cmd: Command) -> Result<Child, LabError> {
    let name = program_name(&cmd);
    let fd = ns.fd().as_raw_fd();
    // SAFETY: the closure only calls setns (async-signal-safe, allocates nothing); `fd` stays
    // open for the duration of spawn because `ns` is borrowed across it.
    unsafe {
        cmd.pre_exec(move || enter_fd(fd));
    }
    let inner = cmd.spawn().map_err(|source| LabError::Spawn {
        program: name.clone(),
        ns: ns.name().to_string(),
        source,
    })?;
    tracing::debug!(program = %name, ns = ns.name(), pid = inner.id(), "spawned");
    Ok(Child {
        inner,
        name,
        ns: ns.name().to_string(),
        exited: None,
    })
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Program name, for errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's stdout, if the command piped it (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    /// The child's stderr, if the command piped it (once).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.inner.stderr.take()
    }

    /// Namespace the child runs in.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status
    /// (a child that exited before the call reports its earlier status).
    pub fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>, LabError> {
        if let Some(status) = self.try_wait()? {
            return Ok(Some(status));
        }
        self.signal(libc::SIGTERM, "SIGTERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(POLL);
        }
        tracing::warn!(program = %self.name, pid = self.pid(), ?grace, "did not exit on SIGTERM, killing");
        self.kill9()?;
        Ok(self.exited)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> Result<(), LabError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        self.signal(libc::SIGKILL, "SIGKILL")?;
        let status = self.inner.wait().map_err(|source| LabError::Wait {
            pid: self.pid(),
            source,
        })?;
        self.exited = Some(status);
        Ok(())
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        if self.exited.is_some() {
            return Ok(self.exited);
        }
        let status = self.inner.try_wait().map_err(|source| LabError::Wait {
            pid: self.pid(),
            source,
        })?;
        self.exited = status;
        Ok(status)
    }

    /// CPU time and memory from /proc; `None` once the process is gone.
    pub fn usage(&self) -> Option<Usage> {
        if self.exited.is_some() {
            return None;
        }
        process_usage(self.pid())
    }

    fn signal(&self, signal: libc::c_int, signal_name: &'static str) -> Result<(), LabError> {
        let pid = self.pid();
        let raw = libc::pid_t::try_from(pid).map_err(|_| LabError::Signal {
            pid,
            signal: signal_name,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: kill has no memory effects; the pid is still our child's because the child
        // is not reaped yet (callers check), so it cannot have been reused.
        if unsafe { libc::kill(raw, signal) } == 0 {
            return Ok(());
        }
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Ok(()); // exited in between: the wait that follows reaps it
        }
        Err(LabError::Signal {
            pid,
            signal: signal_name,
            source,
        })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Err(e) = self.kill9() {
            tracing::error!(program = %self.name, pid = self.pid(), error = %e, "killing child on drop");
        }
    }
}

fn program_name(cmd: &Command) -> String {
    let program = cmd.get_program().to_string_lossy();
    program.rsplit('/').next().unwrap_or(&program).to_string()
}

/// Reads the usage of any live process from /proc/PID/{stat,status}.
pub fn process_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    usage_from_proc(&stat, &status, clock_ticks())
}

/// Parses `/proc/PID/stat` and `/proc/PID/status` texts into a [`Usage`].
pub fn usage_from_proc(stat: &str, status: &str, ticks_per_second: f64) -> Option<Usage> {
    // The command name may contain spaces and ')': fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' index 0 is `state` (field 3); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.trim().strip_suffix("kB")?.trim();
            value.parse::<u64>().ok().map(|kb| kb * 1024)
        })
    };
    Some(Usage {
        cpu_seconds: (utime + stime) / ticks_per_second,
        // Zombies and kernel threads have no memory lines.
        rss_bytes: kib("VmRSS:").unwrap_or(0),
        peak_rss_bytes: kib("VmHWM:").unwrap_or(0),
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "1234 (wireguard (go)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 5 0 0";
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1000 kB\n";
        let usage = usage_from_proc(stat, status, 100.0).unwrap();
        assert_eq!(usage.cpu_seconds, 3.0);
        assert_eq!(usage.peak_rss_bytes, 2048 * 1024);
        assert_eq!(usage.rss_bytes, 1000 * 1024);
        assert_eq!(usage_from_proc("no paren", status, 100.0), None);
        assert_eq!(usage_from_proc("1 (x) S 1", status, 100.0), None);
    }

    #[test]
    fn reads_own_usage() {
        let usage = process_usage(std::process::id()).unwrap();
        assert!(usage.rss_bytes > 0 && usage.peak_rss_bytes >= usage.rss_bytes);
    }
}
