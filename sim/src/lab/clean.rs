//! `jitwg clean`: removes what crashed runs left behind — processes, namespaces, links and UAPI
//! sockets carrying the `jwg` prefix and a well-formed run id — and nothing else. Live runs
//! are told apart by [`RunLock`]s: a run holds an flock per namespace and interface for its
//! whole life, and the kernel drops it when the process dies, however it dies. Of the files a
//! run wrote it removes only its scratch in the temporary directory (the state directory with
//! its databases, a data plane's default log): output directories, captures, key logs and
//! bundles are the user's.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::names::{run_id_of, scratch_run_id, RunId, PREFIX, UAPI_DIR};
use super::net::Netlink;
use super::netns::NETNS_DIR;
use super::LabError;

/// Where run locks live (tmpfs: gone after a reboot, like everything they guard).
pub const LOCK_DIR: &str = "/run/jitwg/locks";

/// Programs a run starts; only these are ever killed.
const OUR_PROGRAMS: &[&str] = &["wireguard-go", "jitwgd", "nats-server"];

/// An exclusive flock on `/run/jitwg/locks/<name>.lock`, held while the named object lives.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// The open file carries the lock; closing it (drop, or process death) releases it.
    _file: File,
    /// Leave the file in place on drop (a dry run changes nothing).
    keep_file: bool,
}

impl RunLock {
    /// Takes the lock of `name`; [`LabError::LockBusy`] if a live run holds it.
    pub fn acquire(name: &str) -> Result<RunLock, LabError> {
        let path = lock_path(name);
        Self::try_acquire_path(&path, true)?.ok_or_else(|| LabError::LockBusy {
            name: name.to_string(),
            path,
        })
    }

    /// `create`: make the file if it is missing. A probe of another run's lock must not: that
    /// run may have just finished and removed it, and re-creating it would leave a lock file
    /// with no run behind (a dry run keeps the files it probed).
    fn try_acquire_path(path: &Path, create: bool) -> Result<Option<RunLock>, LabError> {
        let lock_err = |source| LabError::Lock {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(LOCK_DIR).map_err(lock_err)?;
        let file = OpenOptions::new()
            .create(create)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(lock_err)?;
        // SAFETY: flock only takes the fd, which `file` keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(lock_err(e)),
            };
        }
        Ok(Some(RunLock {
            path: path.to_path_buf(),
            _file: file,
            keep_file: false,
        }))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still held, so nobody can take a lock on a file about to vanish.
        if !self.keep_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock_path(name: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{name}.lock"))
}

/// What `clean` removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// `"<program> (pid N)"` per process.
    pub processes_killed: Vec<String>,
    pub namespaces_removed: Vec<String>,
    pub links_removed: Vec<String>,
    pub sockets_removed: Vec<String>,
    /// `[lab] cpus` subtrees (`jwg-<id>-cpus`), by path.
    pub cgroups_removed: Vec<String>,
    /// State directories and default logs in the temporary directory, by path.
    pub scratch_removed: Vec<String>,
}

impl CleanReport {
    pub fn is_empty(&self) -> bool {
        self.processes_killed.is_empty()
            && self.namespaces_removed.is_empty()
            && self.links_removed.is_empty()
            && self.sockets_removed.is_empty()
            && self.cgroups_removed.is_empty()
            && self.scratch_removed.is_empty()
    }
}

/// A process of ours found in /proc.
struct Found {
    pid: u32,
    program: String,
}

/// Finds and removes leftovers of crashed runs. Processes die before their namespaces go.
pub fn clean(dry_run: bool) -> Result<CleanReport, LabError> {
    // Objects first, locks second: a run creates its lock before its objects, so anything
    // listed here that belongs to a live run has its lock held by the time we check.
    let namespaces = jwg_entries(Path::new(NETNS_DIR), "")?;
    let sockets = jwg_entries(Path::new(UAPI_DIR), ".sock")?;
    let mut cgroups = Vec::new();
    for hierarchy in super::cpuset::hierarchies() {
        for name in jwg_entries(&hierarchy, "")? {
            cgroups.push((name.clone(), hierarchy.join(name)));
        }
    }
    let scratch = scratch_entries(&std::env::temp_dir())?;
    let root_links: Vec<String> = Netlink::with_current(|nl| nl.link_names())?
        .into_iter()
        .filter(|name| run_id_of(name).is_some())
        .collect();
    // namespace (dev, inode) -> namespace name
    let mut ns_inodes = BTreeMap::new();
    for name in &namespaces {
        if let Ok(meta) = std::fs::metadata(Path::new(NETNS_DIR).join(name)) {
            ns_inodes.insert((meta.dev(), meta.ino()), name.clone());
        }
    }
    let processes = find_processes(&ns_inodes);
    // Stale locks stay held by us until the end, so no new run can reuse those names meanwhile.
    let (live, _stale_locks) = live_runs(dry_run)?;
    let dead = |name: &str| run_id_of(name).is_some_and(|run| !live.contains(&run));

    let mut report = CleanReport::default();
    let mut killed = Vec::new();
    for (found, owner) in processes {
        if !dead(&owner) {
            continue;
        }
        report
            .processes_killed
            .push(format!("{} (pid {})", found.program, found.pid));
        if !dry_run {
            kill(found.pid)?;
            killed.push(found.pid);
        }
    }
    wait_gone(&killed, Duration::from_secs(5));
    for name in namespaces.iter().filter(|n| dead(n)) {
        if !dry_run {
            remove_namespace(name)?;
        }
        report.namespaces_removed.push(name.clone());
    }
    if !dry_run {
        let doomed: Vec<String> = root_links.iter().filter(|n| dead(n)).cloned().collect();
        Netlink::with_current(|nl| doomed.iter().try_for_each(|name| nl.delete_link(name)))?;
    }
    report
        .links_removed
        .extend(root_links.into_iter().filter(|n| dead(n)));
    for iface in sockets.iter().filter(|n| dead(n)) {
        let path = Path::new(UAPI_DIR).join(format!("{iface}.sock"));
        if !dry_run {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LabError::Clean {
                        what: path.display().to_string(),
                        source,
                    })
                }
            }
            let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{iface}.name")));
        }
        report.sockets_removed.push(path.display().to_string());
    }
    // Processes still in a dead run's cgroup are killed by `remove_subtree` before the rmdir.
    for (name, dir) in cgroups.iter().filter(|(n, _)| dead(n)) {
        if !dry_run {
            for pid in super::cpuset::remove_subtree(dir)? {
                report
                    .processes_killed
                    .push(format!("pid {pid} (in cgroup {name})"));
            }
        }
        report.cgroups_removed.push(dir.display().to_string());
    }
    // Last: the databases of a dead run's state directory are closed now its processes are gone.
    for (run, path) in scratch {
        if live.contains(&run) {
            continue;
        }
        if !dry_run {
            remove_scratch(&path)?;
        }
        report.scratch_removed.push(path.display().to_string());
    }
    Ok(report)
}

/// A run's scratch in `dir` (the temporary directory), with the run it belongs to.
fn scratch_entries(dir: &Path) -> Result<Vec<(RunId, PathBuf)>, LabError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LabError::Clean {
        what: format!("listing {}", dir.display()),
        source,
    })?;
    let mut found: Vec<(RunId, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let run = scratch_run_id(entry.file_name().to_str()?)?;
            Some((run, entry.path()))
        })
        .collect();
    found.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(found)
}

/// Removes one piece of a run's scratch; already gone is fine.
pub(super) fn remove_scratch(path: &Path) -> Result<(), LabError> {
    // Not followed: a symlink of that name is removed, never what it points at.
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Clean {
            what: path.display().to_string(),
            source,
        }),
    }
}

/// Names in `dir` ending in `suffix` (stripped) that are jitwg object names.
fn jwg_entries(dir: &Path, suffix: &str) -> Result<Vec<String>, LabError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Clean {
                what: format!("listing {}", dir.display()),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(suffix).map(str::to_string))
        .filter(|name| name.starts_with(PREFIX) && run_id_of(name).is_some())
        .collect();
    names.sort();
    Ok(names)
}

/// Run ids with a held lock. Unheld lock files are stale: returned locked (and removed on
/// drop unless `dry_run`, in which case they are released untouched).
fn live_runs(dry_run: bool) -> Result<(HashSet<RunId>, Vec<RunLock>), LabError> {
    let mut live = HashSet::new();
    let mut stale = Vec::new();
    for name in jwg_entries(Path::new(LOCK_DIR), ".lock")? {
        let Some(run) = run_id_of(&name) else {
            continue;
        };
        match RunLock::try_acquire_path(&lock_path(&name), false) {
            Ok(Some(mut lock)) if dry_run => lock.keep_file = true,
            Ok(Some(lock)) => stale.push(lock),
            Ok(None) => {
                live.insert(run);
            }
            // Vanished in between: its owner finished.
            Err(LabError::Lock { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
    }
    Ok((live, stale))
}

/// Our programs (by name) that live in a jwg namespace or name a jwg object in their argv,
/// each with the object name that ties it to a run.
fn find_processes(ns_inodes: &BTreeMap<(u64, u64), String>) -> Vec<(Found, String)> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        let dir = entry.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let argv0 = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        let program = [comm.trim(), argv0.as_str()]
            .into_iter()
            .find(|p| OUR_PROGRAMS.contains(p))
            .map(str::to_string);
        let Some(program) = program else {
            continue;
        };
        let in_ns = std::fs::metadata(dir.join("ns/net"))
            .ok()
            .and_then(|meta| ns_inodes.get(&(meta.dev(), meta.ino())).cloned());
        let owner = in_ns.or_else(|| {
            args.iter()
                .skip(1)
                .flat_map(|a| a.split('='))
                .find(|part| run_id_of(part).is_some())
                .map(str::to_string)
        });
        if let Some(owner) = owner {
            found.push((Found { pid, program }, owner));
        }
    }
    found
}

fn kill(pid: u32) -> Result<(), LabError> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Ok(());
    };
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(raw, libc::SIGKILL) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(LabError::Signal {
        pid,
        signal: "SIGKILL",
        source,
    })
}

/// Waits until every pid is gone or a zombie (its parent reaps it, not us).
fn wait_gone(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let alive = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .get(stat.rfind(')')? + 1..)?
                    .split_whitespace()
                    .next()?;
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    };
    while pids.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_namespace(name: &str) -> Result<(), LabError> {
    let path = Path::new(NETNS_DIR).join(name);
    match netns_rs::NetNs::get(name) {
        Ok(ns) => {
            if let Err(source) = ns.remove() {
                tracing::warn!(ns = name, error = %source, "unmounting leftover namespace");
            }
        }
        Err(e) => tracing::warn!(ns = name, error = %e, "opening leftover namespace"),
    }
    // An unmounted (or never mounted) leftover file is removed too.
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Clean {
            what: format!("namespace {name}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_busy_and_released_on_drop() {
        let name = format!("jwg{}", RunId::random());
        let lock = RunLock::acquire(&name).unwrap();
        assert!(matches!(
            RunLock::acquire(&name),
            Err(LabError::LockBusy { .. })
        ));
        drop(lock);
        assert!(!lock_path(&name).exists());
        drop(RunLock::acquire(&name).unwrap());
    }

    #[test]
    fn scratch_is_found_by_run_and_removed_without_following_links() {
        use super::super::names::{default_log_name, state_dir_prefix};
        let tmp = tempfile::tempdir().unwrap();
        let (dead, other) = (RunId::random(), RunId::random());
        let state = tmp
            .path()
            .join(format!("{}Ab6mkn", state_dir_prefix(&dead)));
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("jitwgd.db"), b"x").unwrap();
        let log = tmp.path().join(default_log_name(&format!("jwg{other}")));
        std::fs::write(&log, b"log").unwrap();
        // The user's files, one of them pointed at by a link that looks like scratch.
        let mine = tmp.path().join("jitwg-run.tar.gz");
        std::fs::write(&mine, b"bundle").unwrap();
        let link = tmp
            .path()
            .join(format!("{}linked", state_dir_prefix(&other)));
        std::os::unix::fs::symlink(&mine, &link).unwrap();

        let found = scratch_entries(tmp.path()).unwrap();
        let mut runs: Vec<_> = found.iter().map(|(run, _)| run.clone()).collect();
        runs.sort_by_key(|r| r.to_string());
        let mut want = vec![dead.clone(), other.clone(), other.clone()];
        want.sort_by_key(|r| r.to_string());
        assert_eq!(runs, want, "{found:?}");
        for (_, path) in &found {
            remove_scratch(path).unwrap();
        }
        assert!(!state.exists() && !log.exists() && !link.exists());
        assert_eq!(std::fs::read(&mine).unwrap(), b"bundle");
        // Gone already (another clean got there first) is not an error.
        remove_scratch(&state).unwrap();
    }

    #[test]
    fn probing_a_lock_its_run_just_removed_does_not_bring_the_file_back() {
        // What `clean` in one test met when another test's run ended between the directory
        // listing and the probe: the probe must find nothing, not re-create the file.
        let name = format!("jwg{}", RunId::random());
        drop(RunLock::acquire(&name).unwrap());
        let probed = RunLock::try_acquire_path(&lock_path(&name), false);
        assert!(
            matches!(&probed, Err(LabError::Lock { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
            "{probed:?}"
        );
        assert!(!lock_path(&name).exists());
    }
}
