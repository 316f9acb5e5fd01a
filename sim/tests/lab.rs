//! Root tests of the lab against the real kernel and wireguard-go: topology build/teardown,
//! processes in namespaces, the data plane's life cycle, and `clean` on deliberately leaked
//! objects. Without root or wireguard-go they skip, except in CI (`CI` set, not 0/false) where they fail.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use jitwg::lab::names::uapi_socket_path;
use jitwg::lab::{
    clean, spawn_in, AddressPlan, DataPlane, DataPlaneBackend, DataPlaneOptions, DataPlaneSpec,
    LabError, Namespace, Netlink, RunId, Topology,
};
use rand::Rng;

/// True when the test can run; false (skip) outside CI; panics in CI.
fn prerequisites() -> bool {
    jitwg_testsupport::require(&jitwg_testsupport::missing_root_and_tools(&[
        "wireguard-go",
    ]))
}

/// A fresh run id and its gateway namespace.
fn gateway_namespace() -> (RunId, Arc<Namespace>) {
    let run = RunId::random();
    let ns = Arc::new(Namespace::create(&format!("jwg-{run}-gw")).unwrap());
    (run, ns)
}

fn random_key() -> [u8; 32] {
    rand::thread_rng().gen()
}

fn clamped(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn spec(iface: &str) -> DataPlaneSpec {
    DataPlaneSpec {
        interface: iface.to_string(),
        backend: DataPlaneBackend::Userspace,
        private_key: random_key(),
        listen_port: 51820,
        address: "100.64.0.1/10".parse().unwrap(),
    }
}

#[test]
fn topology_builds_and_tears_down_leaving_nothing() {
    if !prerequisites() {
        return;
    }
    let run = RunId::random();
    let plan = AddressPlan::for_slot(rand::thread_rng().gen_range(0..=127)).unwrap();
    let topology = Topology::build(&plan, &run).unwrap();
    let names = [
        format!("jwg-{run}-gw"),
        format!("jwg-{run}-cl"),
        format!("jwg-{run}-cp"),
    ];
    for ns in &names {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns} missing");
    }
    let gw_links = Netlink::with(&topology.gateway, |nl| nl.link_names()).unwrap();
    assert!(gw_links.contains(&format!("jwg{run}gc")), "{gw_links:?}");
    assert!(gw_links.contains(&format!("jwg{run}gp")), "{gw_links:?}");
    let cl_links = Netlink::with(&topology.client, |nl| nl.link_names()).unwrap();
    assert!(cl_links.contains(&format!("jwg{run}cg")), "{cl_links:?}");
    drop(topology);
    for ns in &names {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "{ns} left behind"
        );
        assert!(!Path::new("/run/jitwg/locks")
            .join(format!("{ns}.lock"))
            .exists());
    }
    let root_links = Netlink::with_current(|nl| nl.link_names()).unwrap();
    assert!(
        !root_links.iter().any(|l| l.contains(run.as_str())),
        "{root_links:?}"
    );
}

#[test]
fn spawn_in_runs_the_process_inside_the_namespace_and_drop_kills_it() {
    if !prerequisites() {
        return;
    }
    let ns = Namespace::create(&format!("jwg-{}-sp", RunId::random())).unwrap();
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/net/dev").stdout(Stdio::piped());
    let mut cat = spawn_in(&ns, cmd).unwrap();
    assert_eq!(cat.name(), "cat");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut cat.take_stdout().unwrap(), &mut out).unwrap();
    // A fresh namespace has only `lo`; the host has more.
    let links: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(links, vec!["lo"], "{out}");

    let mut sleeper = spawn_in(&ns, {
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    })
    .unwrap();
    let pid = sleeper.pid();
    let child_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_file = std::fs::metadata(ns.path()).unwrap();
    assert_eq!(
        (child_ns.dev(), child_ns.ino()),
        (ns_file.dev(), ns_file.ino())
    );
    let usage = sleeper.usage().unwrap();
    assert!(usage.rss_bytes > 0 && usage.cpu_seconds >= 0.0);
    assert_eq!(sleeper.try_wait().unwrap(), None);
    let status = sleeper.terminate(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(sleeper.usage().is_none());

    let dropped = spawn_in(&ns, {
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    })
    .unwrap();
    let pid = dropped.pid();
    drop(dropped);
    assert!(!pid_alive(pid), "child {pid} survived its guard");
}

#[test]
fn userspace_data_plane_life_cycle() {
    if !prerequisites() {
        return;
    }
    let (run, ns) = gateway_namespace();
    let iface = format!("jwg{run}");
    let spec = spec(&iface);
    let mut plane = DataPlane::start(&ns, spec.clone()).unwrap();

    let expected = PublicKey::from(&StaticSecret::from(spec.private_key));
    assert_eq!(plane.public_key(), *expected.as_bytes());
    let device = plane.device().unwrap();
    // wireguard-go stores the private key clamped (RFC 7748).
    assert_eq!(
        device.private_key.map(|k| k.0),
        Some(clamped(spec.private_key))
    );
    assert_eq!(device.listen_port, Some(51820));
    assert_eq!(plane.interface(), iface);
    let first_pid = plane.pid().unwrap();
    // No log path given: wireguard-go logs to scratch in the temporary directory.
    let log = plane.log_path().to_path_buf();
    assert!(log.starts_with(std::env::temp_dir()), "{}", log.display());
    assert!(log.exists(), "{}", log.display());
    assert!(plane.usage().unwrap().rss_bytes > 0);
    assert!(Netlink::with(&ns, |nl| nl.link_index(&iface))
        .unwrap()
        .is_some());

    let peer = random_key();
    let endpoint: SocketAddr = "198.18.200.7:40000".parse().unwrap();
    let allowed: IpNet = "100.64.0.2/32".parse().unwrap();
    plane
        .add_peer(peer, Some(endpoint), &[allowed], None)
        .unwrap();
    let peers = plane.peers().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, peer);
    assert_eq!(peers[0].endpoint, Some(endpoint));
    assert_eq!(peers[0].last_handshake, None);

    plane.kill9().unwrap();
    assert!(!pid_alive(first_pid));
    assert_eq!(plane.pid(), None);
    assert!(matches!(plane.peers(), Err(LabError::DataPlaneDown { .. })));
    assert!(matches!(
        plane.add_peer(peer, None, &[allowed], None),
        Err(LabError::DataPlaneDown { .. })
    ));
    // wireguard-control must not have started a data plane of its own.
    assert!(UnixStream::connect(uapi_socket_path(&iface)).is_err());

    plane.restart().unwrap();
    let second_pid = plane.pid().unwrap();
    assert_ne!(second_pid, first_pid);
    assert!(plane.peers().unwrap().is_empty());
    assert_eq!(
        plane.device().unwrap().private_key.map(|k| k.0),
        Some(clamped(spec.private_key))
    );

    // A reboot's restart: signalled first (without waiting), then restarted on the same name.
    plane.signal_kill().unwrap();
    plane.restart().unwrap();
    let third_pid = plane.pid().unwrap();
    assert!(!pid_alive(second_pid));
    assert_ne!(third_pid, second_pid);
    assert_eq!(plane.device().unwrap().listen_port, Some(51820));

    drop(plane);
    assert!(!pid_alive(third_pid));
    assert!(!uapi_socket_path(&iface).exists());
    assert!(!log.exists(), "the default log outlived its data plane");
    assert!(Netlink::with(&ns, |nl| nl.link_index(&iface))
        .unwrap()
        .is_none());
}

#[test]
fn a_missing_wireguard_go_is_a_distinct_error() {
    if !prerequisites() {
        return;
    }
    let (run, ns) = gateway_namespace();
    let options = DataPlaneOptions {
        program: "/nonexistent/wireguard-go".into(),
        ..DataPlaneOptions::default()
    };
    let err = DataPlane::start_with(&ns, spec(&format!("jwg{run}")), options).unwrap_err();
    assert!(
        matches!(err, LabError::DataPlaneBinaryMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("apt-get install wireguard-go"));
}

#[test]
fn kernel_backend_works_or_says_there_is_no_module() {
    if !prerequisites() {
        return;
    }
    let (run, ns) = gateway_namespace();
    let iface = format!("jwg{run}");
    let spec = DataPlaneSpec {
        backend: DataPlaneBackend::Kernel,
        ..spec(&iface)
    };
    match DataPlane::start(&ns, spec) {
        Ok(plane) => {
            let peer = random_key();
            let allowed: IpNet = "100.64.0.3/32".parse().unwrap();
            plane.add_peer(peer, None, &[allowed], None).unwrap();
            assert_eq!(plane.peers().unwrap()[0].public_key, peer);
            drop(plane);
            assert!(Netlink::with(&ns, |nl| nl.link_index(&iface))
                .unwrap()
                .is_none());
        }
        Err(err) => {
            assert!(
                matches!(err, LabError::KernelWireguardUnavailable { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("run inside the VM"));
            assert!(!Path::new("/sys/module/wireguard").exists());
        }
    }
}

/// A namespace + wireguard-go left behind as if the driver had crashed: no lock, no guard of
/// the lab. The Drop cleans up only if `clean` did not.
struct Leak {
    ns: String,
    iface: String,
    child: std::process::Child,
}

impl Drop for Leak {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(ns) = netns_rs::NetNs::get(&self.ns) {
            let _ = ns.remove();
        }
        let _ = std::fs::remove_file(uapi_socket_path(&self.iface));
    }
}

fn leak(run: &RunId) -> Leak {
    let ns_name = format!("jwg-{run}-gw");
    let iface = format!("jwg{run}");
    let netns = netns_rs::NetNs::new(&ns_name).unwrap();
    let fd = netns.file().as_raw_fd();
    let mut cmd = Command::new("wireguard-go");
    cmd.args(["-f", &iface])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setns is async-signal-safe; `netns` keeps the fd open across spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let child = cmd.spawn().unwrap();
    let leak = Leak {
        ns: ns_name,
        iface: iface.clone(),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(uapi_socket_path(&iface)).is_err() {
        assert!(
            Instant::now() < deadline,
            "leaked wireguard-go never came up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    leak
}

/// Deletes a root-namespace link on drop (if `clean` did not).
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = Netlink::with_current(|nl| nl.delete_link(&self.0));
    }
}

/// Removes a namespace created outside the lab on drop.
struct KeepNs(String);

impl Drop for KeepNs {
    fn drop(&mut self) {
        if let Ok(ns) = netns_rs::NetNs::get(&self.0) {
            let _ = ns.remove();
        }
    }
}

#[test]
fn clean_removes_leftovers_of_dead_runs_only() {
    if !prerequisites() {
        return;
    }
    let dead_run = RunId::random();
    let mut leaked = leak(&dead_run);
    let wg_pid = leaked.child.id();
    // A veth pair of the dead run stranded in the root namespace.
    let stray = RootLink(format!("jwg{dead_run}ra"));
    let stray_peer = format!("jwg{dead_run}rb");
    Netlink::with_current(|nl| nl.create_veth(&stray.0, &stray_peer)).unwrap();
    let keep = KeepNs(format!("keep-{}", RunId::random()));
    netns_rs::NetNs::new(&keep.0).unwrap();
    // A live run next to it, which clean must not touch.
    let live_run = RunId::random();
    let live_ns = Arc::new(Namespace::create(&format!("jwg-{live_run}-gw")).unwrap());
    let live_plane = DataPlane::start(&live_ns, spec(&format!("jwg{live_run}"))).unwrap();

    let preview = clean(true).unwrap();
    assert!(
        preview.namespaces_removed.contains(&leaked.ns),
        "{preview:?}"
    );
    assert!(preview
        .processes_killed
        .contains(&format!("wireguard-go (pid {wg_pid})")));
    assert!(Path::new("/run/netns").join(&leaked.ns).exists());
    assert!(pid_alive(wg_pid), "a dry run killed a process");
    assert!(preview.links_removed.contains(&stray.0), "{preview:?}");
    assert!(Netlink::with_current(|nl| nl.link_index(&stray.0))
        .unwrap()
        .is_some());

    let report = clean(false).unwrap();
    assert!(report.namespaces_removed.contains(&leaked.ns), "{report:?}");
    assert!(report
        .processes_killed
        .contains(&format!("wireguard-go (pid {wg_pid})")));
    let socket = uapi_socket_path(&leaked.iface);
    // wireguard-go removes its own socket when killed? Not on SIGKILL: clean must.
    assert!(!socket.exists());
    let status = leaked.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!Path::new("/run/netns").join(&leaked.ns).exists());
    assert!(report.links_removed.contains(&stray.0), "{report:?}");
    let root_links = Netlink::with_current(|nl| nl.link_names()).unwrap();
    assert!(!root_links.contains(&stray.0) && !root_links.contains(&stray_peer));

    assert!(Path::new("/run/netns").join(&keep.0).exists());
    let everything = format!("{report:?}");
    assert!(!everything.contains(&keep.0), "{report:?}");
    assert!(!everything.contains(live_run.as_str()), "{report:?}");
    assert!(Path::new("/run/netns").join(live_ns.name()).exists());
    assert!(live_plane.peers().unwrap().is_empty());
    assert!(pid_alive(live_plane.pid().unwrap()));
}
