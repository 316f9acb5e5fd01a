//! Network namespaces owned by a run: created persistent under /run/netns (like `ip netns add`),
//! entered only from dedicated threads so the caller's thread never changes namespace, and
//! deleted on drop.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use netns_rs::NetNs;

use super::clean::RunLock;
use super::names::check_netns_name;
use super::{net, LabError};

/// Where persistent namespaces live (`ip netns` uses the same directory).
pub const NETNS_DIR: &str = "/run/netns";

/// A persistent network namespace; dropping it deletes it (best effort, errors are logged).
#[derive(Debug)]
pub struct Namespace {
    name: String,
    /// `None` only after `drop` took it to remove the namespace.
    inner: Option<NetNs>,
    /// An fd of the namespace shared with runtime worker threads, which enter it on start.
    fd: Arc<File>,
    /// Held while a namespace this process created lives, so `jitwg clean` leaves it alone;
    /// released after the namespace is removed (fields drop after `Drop::drop`).
    _lock: Option<RunLock>,
    /// CPUs (cgroup or affinity) every process started in this namespace gets: the gateway
    /// namespace's processes are the gateway's (`[lab] cpus`). Unset: the driver's own.
    placement: std::sync::OnceLock<super::cpuset::Placement>,
}

/// Which tokio runtime [`Namespace::spawn_runtime_thread`] builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFlavor {
    /// Everything on the one namespace thread.
    CurrentThread,
    /// A worker pool; every worker (and blocking-pool thread) enters the namespace on start.
    MultiThread { workers: usize },
}

/// A thread running inside a namespace; `join` returns what its closure returned.
#[derive(Debug)]
pub struct NsThread<T> {
    ns: String,
    handle: thread::JoinHandle<T>,
}

impl<T> NsThread<T> {
    /// Waits for the thread; a panic inside becomes [`LabError::NamespaceThread`].
    pub fn join(self) -> Result<T, LabError> {
        let ns = self.ns;
        self.handle.join().map_err(|_| LabError::NamespaceThread {
            ns,
            what: "panicked".into(),
        })
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Namespace {
    /// Creates the namespace `name` (which must not exist yet) and brings its `lo` up.
    pub fn create(name: &str) -> Result<Namespace, LabError> {
        check_netns_name(name)?;
        let lock = RunLock::acquire(name)?;
        if Path::new(NETNS_DIR).join(name).exists() {
            return Err(LabError::NamespaceExists { ns: name.into() });
        }
        let inner = NetNs::new(name).map_err(|source| LabError::NamespaceCreate {
            ns: name.into(),
            source,
        })?;
        let mut ns = Self::from_netns(name, inner)?;
        ns._lock = Some(lock);
        net::Netlink::with(&ns, |nl| nl.set_up("lo"))?;
        Ok(ns)
    }

    /// The network namespace this process runs in (`jitwg gateway` on a host's own interface):
    /// entering it is a no-op for the process's threads, and dropping it deletes nothing.
    pub fn current() -> Result<Namespace, LabError> {
        let name = "host";
        let fd = File::open("/proc/self/ns/net").map_err(|source| LabError::NamespaceEnter {
            ns: name.into(),
            source,
        })?;
        Ok(Namespace {
            name: name.to_string(),
            inner: None,
            fd: Arc::new(fd),
            _lock: None,
            placement: std::sync::OnceLock::new(),
        })
    }

    /// Takes ownership of an existing namespace: dropping the returned value deletes it
    /// (used by `clean` for leftovers).
    pub fn adopt(name: &str) -> Result<Namespace, LabError> {
        let inner = NetNs::get(name).map_err(|source| LabError::NamespaceOpen {
            ns: name.into(),
            source,
        })?;
        Self::from_netns(name, inner)
    }

    fn from_netns(name: &str, inner: NetNs) -> Result<Namespace, LabError> {
        let fd = inner
            .file()
            .try_clone()
            .map_err(|source| LabError::NamespaceEnter {
                ns: name.into(),
                source,
            })?;
        Ok(Namespace {
            name: name.to_string(),
            inner: Some(inner),
            fd: Arc::new(fd),
            _lock: None,
            placement: std::sync::OnceLock::new(),
        })
    }

    /// Sets where processes started in this namespace run (once; later calls are ignored).
    pub fn place_processes(&self, placement: super::cpuset::Placement) {
        let _ = self.placement.set(placement);
    }

    /// Where processes started in this namespace run, if the run splits CPUs.
    pub fn placement(&self) -> Option<&super::cpuset::Placement> {
        self.placement.get()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        match &self.inner {
            Some(inner) => inner.path(),
            None => Path::new(NETNS_DIR),
        }
    }

    /// A borrowed fd of the namespace (for `setns` and for moving links into it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` on a fresh thread that entered this namespace and waits for it. Sockets created
    /// inside stay in this namespace after `f` returns them.
    pub fn run<F, T>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let fd = self.fd.as_raw_fd();
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name(format!("ns-{}", self.name))
                .spawn_scoped(scope, move || enter_fd(fd).map(|()| f()))
                .map_err(|e| self.thread_error(format!("spawning: {e}")))?;
            worker
                .join()
                .map_err(|_| self.thread_error("panicked".into()))?
                .map_err(|source| LabError::NamespaceEnter {
                    ns: self.name.clone(),
                    source,
                })
        })
    }

    /// Starts a thread inside this namespace that builds a tokio runtime and runs the future
    /// made by `make` to completion on it. The control plane and the client fleet run this way.
    pub fn spawn_runtime_thread<F, Fut>(
        &self,
        thread_name: &str,
        flavor: RuntimeFlavor,
        make: F,
    ) -> Result<NsThread<Result<Fut::Output, LabError>>, LabError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let fd = Arc::clone(&self.fd);
        let ns = self.name.clone();
        let handle = thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                enter_fd(fd.as_raw_fd()).map_err(|source| LabError::NamespaceEnter {
                    ns: ns.clone(),
                    source,
                })?;
                let runtime = build_runtime(flavor, fd, &ns)?;
                Ok(runtime.block_on(make()))
            })
            .map_err(|e| self.thread_error(format!("spawning {thread_name}: {e}")))?;
        Ok(NsThread {
            ns: self.name.clone(),
            handle,
        })
    }

    fn thread_error(&self, what: String) -> LabError {
        LabError::NamespaceThread {
            ns: self.name.clone(),
            what,
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if let Err(e) = inner.remove() {
                tracing::error!(ns = %self.name, error = %e, "removing network namespace");
            } else {
                tracing::debug!(ns = %self.name, "removed network namespace");
            }
        }
    }
}

fn build_runtime(
    flavor: RuntimeFlavor,
    fd: Arc<File>,
    ns: &str,
) -> Result<tokio::runtime::Runtime, LabError> {
    let mut builder = match flavor {
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        RuntimeFlavor::MultiThread { workers } => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(workers.max(1));
            b
        }
    };
    let ns_name = ns.to_string();
    // Threads inherit the namespace of the thread that spawns them, but tokio may spawn
    // blocking-pool threads from anywhere a handle is used: enter explicitly to be sure.
    builder.enable_all().on_thread_start(move || {
        if let Err(e) = enter_fd(fd.as_raw_fd()) {
            tracing::error!(ns = %ns_name, error = %e, "runtime thread could not enter namespace");
        }
    });
    builder.build().map_err(|source| LabError::Runtime {
        ns: ns.to_string(),
        source,
    })
}

/// Moves the calling thread into the network namespace behind `fd`. Also used between fork
/// and exec (it allocates nothing).
pub(crate) fn enter_fd(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: setns only reads the fd; an invalid fd yields EBADF, not UB.
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
