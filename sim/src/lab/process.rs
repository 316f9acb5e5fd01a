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
/// caller's threads never change namespace; in a run that splits CPUs it also joins the
/// namespace's cgroup (or takes its CPU mask) there, before it runs a single instruction of
/// its own, so every thread it ever starts is confined.
pub fn spawn_in(ns: &Namespace, mut cmd: Command) -> Result<Child, LabError> {
    let name = program_name(&cmd);
    let fd = ns.fd().as_raw_fd();
    let placement = ns.placement().cloned();
    // SAFETY: the closure only calls setns and `Placement::enter` (open/write/close or
    // sched_setaffinity: async-signal-safe, no allocation); `fd` stays open for the duration
    // of spawn because `ns` is borrowed across it.
    unsafe {
        cmd.pre_exec(move || {
            enter_fd(fd)?;
            match &placement {
                Some(p) => p.enter(),
                None => Ok(()),
            }
        });
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

    /// SIGKILL without waiting: a reboot takes several processes down at once, so it signals
    /// them all before reaping any ([`kill9`](Self::kill9) then only waits).
    pub fn signal_kill(&mut self) -> Result<(), LabError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        self.signal(libc::SIGKILL, "SIGKILL")
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

/// Reads the usage of any live process from /proc/PID/{stat,status} (through `procfs`, the
/// one /proc reader of the testbed); `None` once it is gone.
pub fn process_usage(pid: u32) -> Option<Usage> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    let status = process.status().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    Some(Usage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        // Zombies and kernel threads have no memory lines.
        rss_bytes: status.vmrss.unwrap_or(0) * 1024,
        peak_rss_bytes: status.vmhwm.unwrap_or(0) * 1024,
    })
}

/// The usage of this process (the driver).
pub fn own_usage() -> Option<Usage> {
    process_usage(std::process::id())
}

/// UDP counters of a network namespace, cumulative since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams delivered to a socket.
    pub in_datagrams: u64,
    /// Datagrams dropped because the receiving socket's buffer was full.
    pub rcvbuf_errors: u64,
    /// Every datagram dropped on receive (`rcvbuf_errors` included).
    pub in_errors: u64,
}

/// The UDP counters of the network namespace `pid` lives in (`/proc/PID/net/snmp`), read
/// without entering it; `None` once the process is gone.
pub fn namespace_udp(pid: u32) -> Option<UdpCounters> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let snmp = process.snmp().ok()?;
    Some(UdpCounters {
        in_datagrams: snmp.udp_in_datagrams,
        rcvbuf_errors: snmp.udp_rcvbuf_errors,
        in_errors: snmp.udp_in_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_usage() {
        let usage = own_usage().unwrap();
        assert!(usage.rss_bytes > 0 && usage.peak_rss_bytes >= usage.rss_bytes);
        assert!(usage.cpu_seconds >= 0.0);
    }

    fn sleeper() -> Child {
        let inner = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        Child {
            inner,
            name: "sleep".into(),
            ns: "host".into(),
            exited: None,
        }
    }

    #[test]
    fn signal_kill_does_not_reap_and_kill9_then_reaps_the_killed_child() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = sleeper();
        child.signal_kill().unwrap();
        // Not reaped by the signal: the pid stays ours until kill9 (or try_wait) waits.
        assert!(child.exited.is_none());
        child.kill9().unwrap();
        assert_eq!(
            child.try_wait().unwrap().unwrap().signal(),
            Some(libc::SIGKILL)
        );
        // Once reaped, neither signals again (the pid may be someone else's by now).
        child.signal_kill().unwrap();
        child.kill9().unwrap();
    }

    #[test]
    fn a_process_that_is_gone_has_no_usage() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(process_usage(pid), None);
        assert_eq!(namespace_udp(pid), None);
    }

    #[test]
    fn reads_the_udp_counters_of_a_process_namespace_and_they_count_a_delivered_datagram() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = namespace_udp(std::process::id()).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 4];
        rx.recv(&mut buf).unwrap();
        let after = namespace_udp(std::process::id()).unwrap();
        // Other tests in this process may receive datagrams too: at least ours counts.
        assert!(after.in_datagrams > before.in_datagrams);
        assert!(after.in_errors >= after.rcvbuf_errors);
    }
}
