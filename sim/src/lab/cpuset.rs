//! Keeps the gateway and the load generator on separate CPUs (`[lab] cpus`), so a latency is
//! the gateway's and not the driver's fight for the same core. Where the machine has the cpuset
//! controller, a run creates the cgroup subtree `jwg-<run id>/{gateway,driver}` (cgroup v2 at
//! `/sys/fs/cgroup`, else v1 at `/sys/fs/cgroup/cpuset`), moves the driver process (fleet,
//! control plane, NATS: all its threads and children) into `driver`, and every process started
//! in the gateway namespace joins `gateway` between fork and exec. Without a usable cpuset
//! controller it falls back to `sched_setaffinity` on every driver thread and on each gateway
//! child. [`CpuConfinement`] undoes it on drop: the driver moves back, anything left in the
//! subtree is killed, the directories are removed; `jitwg clean` removes a dead run's.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::names::RunId;
use super::LabError;
use crate::scenario::{CpuList, CpuSplit};

/// Where the unified (v2) hierarchy is mounted.
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// Where the v1 cpuset hierarchy is mounted on hybrid machines.
pub const CGROUP1_CPUSET_ROOT: &str = "/sys/fs/cgroup/cpuset";
/// The two leaves of a run's subtree.
const LEAVES: [&str; 2] = ["gateway", "driver"];
/// How long teardown waits for killed processes to leave a cgroup before `rmdir`.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the split is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Cgroup2,
    Cgroup1,
    Affinity,
}

impl Mechanism {
    /// As recorded in results (`run.cpu_split.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Cgroup2 => "cgroup2",
            Mechanism::Cgroup1 => "cgroup1",
            Mechanism::Affinity => "affinity",
        }
    }
}

/// CPUs a `cpu_set_t` can name (1024 on Linux); CPUs beyond it are never available to us.
const MASK_BITS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// A CPU mask for `sched_setaffinity`, built before any fork.
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

impl std::fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuMask({})", self.to_list())
    }
}

impl CpuMask {
    pub fn from_list(list: &CpuList) -> CpuMask {
        // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for cpu in list.iter().map(|c| c as usize).filter(|&c| c < MASK_BITS) {
            // SAFETY: `cpu` is within the set's bits (checked above).
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        CpuMask(set)
    }

    pub fn to_list(&self) -> CpuList {
        CpuList::from_cpus(
            (0..MASK_BITS)
                // SAFETY: `c` is within the set's bits.
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
                .filter_map(|c| u32::try_from(c).ok()),
        )
    }

    /// The mask of thread `tid` (0: the calling thread).
    fn of_thread(tid: libc::pid_t) -> Result<CpuMask, LabError> {
        // SAFETY: see from_list.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `set`.
        let rc = unsafe {
            libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set)
        };
        if rc != 0 {
            return Err(LabError::Affinity {
                tid,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(CpuMask(set))
    }

    /// Async-signal-safe (one system call), so usable between fork and exec.
    fn apply(&self, tid: libc::pid_t) -> std::io::Result<()> {
        // SAFETY: the kernel only reads the set.
        let rc = unsafe {
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &self.0)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The CPUs this process may run on now: what `[lab] cpus` is checked against.
pub fn available_cpus() -> Result<CpuList, LabError> {
    CpuMask::of_thread(0).map(|m| m.to_list())
}

/// Where a child goes between fork and exec.
#[derive(Debug, Clone)]
pub enum Placement {
    /// Join the cgroup whose `cgroup.procs` this is (writing "0" moves the writer).
    Cgroup(Arc<CString>),
    /// Restrict the child to these CPUs (threads it creates inherit the mask).
    Affinity(CpuMask),
}

impl Placement {
    /// Runs in the forked child: only open/write/close or sched_setaffinity, no allocation.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        match self {
            Placement::Affinity(mask) => mask.apply(0),
            Placement::Cgroup(procs) => {
                // SAFETY: `procs` is a valid NUL-terminated path allocated before the fork.
                let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: writes one byte from a static buffer to the fd opened above.
                let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
                let err = std::io::Error::last_os_error();
                // SAFETY: closes the fd opened above, once.
                unsafe { libc::close(fd) };
                if n == 1 {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// The run's CPU split, in force while this lives.
#[derive(Debug)]
pub struct CpuConfinement {
    split: CpuSplit,
    mechanism: Mechanism,
    gateway: Placement,
    /// `jwg-<run id>` (cgroup mechanisms).
    subtree: Option<PathBuf>,
    /// Where the driver was before (cgroup: its old `cgroup.procs`; affinity: its old mask).
    restore: Restore,
}

#[derive(Debug)]
enum Restore {
    Cgroup(PathBuf),
    Affinity(CpuMask),
}

impl CpuConfinement {
    /// Confines the driver (this whole process) to `split.driver` and prepares the gateway's
    /// placement. Tries a cpuset cgroup first and falls back to affinity, saying why.
    pub fn establish(run_id: &RunId, split: &CpuSplit) -> Result<CpuConfinement, LabError> {
        if let Some((mechanism, root)) = detect() {
            match Self::with_cgroups(mechanism, &root, run_id, split) {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(
                    error = %chain(&e),
                    "cpuset cgroup unusable; splitting CPUs with sched_setaffinity instead"
                ),
            }
        }
        Self::with_affinity(split)
    }

    fn with_cgroups(
        mechanism: Mechanism,
        root: &Path,
        run_id: &RunId,
        split: &CpuSplit,
    ) -> Result<CpuConfinement, LabError> {
        let subtree = root.join(subtree_name(run_id));
        let origin = own_cgroup(mechanism, root)?;
        mkdir(&subtree)?;
        // From here on a failure removes what was made.
        let made = CpuConfinement {
            split: split.clone(),
            mechanism,
            gateway: Placement::Cgroup(Arc::new(procs_path(&subtree.join("gateway"))?)),
            subtree: Some(subtree.clone()),
            restore: Restore::Cgroup(origin),
        };
        let all = CpuList::from_cpus(split.gateway.iter().chain(split.driver.iter()));
        match mechanism {
            Mechanism::Cgroup2 => {
                write(&root.join("cgroup.subtree_control"), "+cpuset")?;
                write(&subtree.join("cgroup.subtree_control"), "+cpuset")?;
            }
            _ => {
                // v1 starts a cpuset empty: it takes no task until it has CPUs and memory nodes.
                write(&subtree.join("cpuset.cpus"), &all.to_string())?;
                let mems = read(&root.join("cpuset.mems"))?;
                write(&subtree.join("cpuset.mems"), mems.trim())?;
            }
        }
        for (leaf, cpus) in LEAVES.iter().zip([&split.gateway, &split.driver]) {
            let dir = subtree.join(leaf);
            mkdir(&dir)?;
            write(&dir.join("cpuset.cpus"), &cpus.to_string())?;
            if mechanism == Mechanism::Cgroup1 {
                write(
                    &dir.join("cpuset.mems"),
                    read(&subtree.join("cpuset.mems"))?.trim(),
                )?;
            }
        }
        write(&subtree.join("driver").join("cgroup.procs"), "0")?;
        tracing::info!(
            mechanism = mechanism.name(),
            gateway = %split.gateway,
            driver = %split.driver,
            cgroup = %subtree.display(),
            "CPU split in force"
        );
        Ok(made)
    }

    fn with_affinity(split: &CpuSplit) -> Result<CpuConfinement, LabError> {
        let before = CpuMask::of_thread(0)?;
        set_process_affinity(&CpuMask::from_list(&split.driver))?;
        tracing::info!(gateway = %split.gateway, driver = %split.driver, "CPU split in force (sched_setaffinity)");
        Ok(CpuConfinement {
            split: split.clone(),
            mechanism: Mechanism::Affinity,
            gateway: Placement::Affinity(CpuMask::from_list(&split.gateway)),
            subtree: None,
            restore: Restore::Affinity(before),
        })
    }

    pub fn split(&self) -> &CpuSplit {
        &self.split
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Where processes of the gateway namespace go.
    pub fn gateway_placement(&self) -> Placement {
        self.gateway.clone()
    }

    /// The run's cgroup subtree, if it uses one.
    pub fn cgroup(&self) -> Option<&Path> {
        self.subtree.as_deref()
    }
}

impl Drop for CpuConfinement {
    fn drop(&mut self) {
        let restored = match &self.restore {
            Restore::Cgroup(procs) => write(procs, "0"),
            Restore::Affinity(mask) => set_process_affinity(mask),
        };
        if let Err(e) = restored {
            tracing::warn!(error = %chain(&e), "moving the driver back off its CPU split");
        }
        if let Some(subtree) = &self.subtree {
            if let Err(e) = remove_subtree(subtree) {
                tracing::error!(error = %chain(&e), "removing the run's cgroup (`jitwg clean` removes it later)");
            }
        }
    }
}

/// The cpuset hierarchy to use, if any: v2 when its root offers the controller, else v1.
pub fn detect() -> Option<(Mechanism, PathBuf)> {
    let v2 = Path::new(CGROUP2_ROOT);
    if std::fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpuset"))
    {
        return Some((Mechanism::Cgroup2, v2.to_path_buf()));
    }
    let v1 = Path::new(CGROUP1_CPUSET_ROOT);
    v1.join("cpuset.cpus")
        .exists()
        .then(|| (Mechanism::Cgroup1, v1.to_path_buf()))
}

/// Every hierarchy a run may have made its subtree in (for `jitwg clean`).
pub fn hierarchies() -> Vec<PathBuf> {
    [CGROUP2_ROOT, CGROUP1_CPUSET_ROOT]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// `jwg-<run id>-cpus`: jwg-prefixed and carrying the run id, so `jitwg clean` knows whose it is.
pub fn subtree_name(run_id: &RunId) -> String {
    format!("{}-{run_id}-cpus", super::names::PREFIX)
}

/// An error and its causes on one line, for logs from `Drop`.
fn chain(e: &LabError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The `cgroup.procs` of the cgroup this process is in now, in `root`'s hierarchy.
fn own_cgroup(mechanism: Mechanism, root: &Path) -> Result<PathBuf, LabError> {
    let text = read(Path::new("/proc/self/cgroup"))?;
    let path = own_cgroup_path(&text, mechanism).ok_or_else(|| LabError::Cgroup {
        path: PathBuf::from("/proc/self/cgroup"),
        source: std::io::Error::other("no line for the cpuset hierarchy"),
    })?;
    Ok(root.join(path.trim_start_matches('/')).join("cgroup.procs"))
}

/// The cgroup path in `/proc/self/cgroup` text: `0::/p` (v2) or `N:...cpuset...:/p` (v1).
fn own_cgroup_path(text: &str, mechanism: Mechanism) -> Option<&str> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match mechanism {
            Mechanism::Cgroup2 => controllers.is_empty(),
            _ => controllers.split(',').any(|c| c == "cpuset"),
        };
        matches.then_some(path)
    })
}

/// Kills whatever is left in `subtree`'s cgroups (never this process), waits for them to
/// leave, and removes the directories, leaves first. Returns the pids it killed.
pub fn remove_subtree(subtree: &Path) -> Result<Vec<u32>, LabError> {
    let own = std::process::id();
    let mut killed = Vec::new();
    let mut dirs: Vec<PathBuf> = LEAVES.iter().map(|l| subtree.join(l)).collect();
    dirs.push(subtree.to_path_buf());
    for dir in &dirs {
        if !dir.exists() {
            continue;
        }
        let deadline = Instant::now() + EMPTY_TIMEOUT;
        loop {
            let pids = procs(dir)?;
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids.into_iter().filter(|&p| p != own) {
                if let Ok(raw) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill has no memory effects; ESRCH (already gone) is fine.
                    unsafe { libc::kill(raw, libc::SIGKILL) };
                    if !killed.contains(&pid) {
                        killed.push(pid);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LabError::Cgroup {
                    path: dir.clone(),
                    source,
                })
            }
        }
    }
    Ok(killed)
}

/// Pids in a cgroup (`cgroup.procs`); none once it is gone.
fn procs(dir: &Path) -> Result<Vec<u32>, LabError> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LabError::Cgroup {
            path: dir.join("cgroup.procs"),
            source,
        }),
    }
}

/// Sets the mask of every thread of this process (threads created later inherit it).
fn set_process_affinity(mask: &CpuMask) -> Result<(), LabError> {
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|source| LabError::Cgroup {
        path: PathBuf::from("/proc/self/task"),
        source,
    })?;
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        match mask.apply(tid) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {} // the thread ended meanwhile
            Err(source) => return Err(LabError::Affinity { tid, source }),
        }
    }
    Ok(())
}

fn procs_path(dir: &Path) -> Result<CString, LabError> {
    let path = dir.join("cgroup.procs");
    CString::new(path.as_os_str().as_bytes()).map_err(|_| LabError::Cgroup {
        path,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn mkdir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir(dir).map_err(|source| LabError::Cgroup {
        path: dir.to_path_buf(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, LabError> {
    std::fs::read_to_string(path).map_err(|source| LabError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip_cpu_lists() {
        let list = CpuList::parse("0-2,5").unwrap();
        assert_eq!(CpuMask::from_list(&list).to_list(), list);
        assert!(!available_cpus().unwrap().is_empty());
    }

    #[test]
    fn finds_own_cgroup_line_per_hierarchy() {
        let text = "12:memory:/m\n3:cpuset,cpu:/box\n0::/user.slice/x\n";
        assert_eq!(
            own_cgroup_path(text, Mechanism::Cgroup2),
            Some("/user.slice/x")
        );
        assert_eq!(own_cgroup_path(text, Mechanism::Cgroup1), Some("/box"));
        assert_eq!(own_cgroup_path("1:cpu:/\n", Mechanism::Cgroup1), None);
    }
}
