//! End-to-end runs of the real `jitwg` binary (root, wireguard-go, jitwgd built next to it): a
//! tiny scenario run twice with one seed gives the same per-client outcomes, and neither a
//! finished run nor one interrupted with SIGINT leaves a namespace, link, UAPI socket or process
//! behind. Without the prerequisites they skip loudly, except in CI (`CI` set, not 0/false) where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{can_run_jitwg, JITWG};

fn write_scenario(dir: &Path, name: &str, clients: u32, rate: f64, duration: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "name = \"{name}\"\nseed = 1\nduration = \"{duration}\"\n\
         [daemon]\nsweep_every = \"2s\"\n\
         [[population]]\nname = \"ci\"\ncount = {clients}\n\
         arrival = {{ kind = \"constant\", rate = {rate} }}\n\
         behaviour = {{ kind = \"connect_once\" }}\n\
         [expect]\nconnected_ratio = \">= 1.0\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `jitwg`; dropping it interrupts, then kills it, so a failed test does not leave it.
struct Driver(Option<Child>);

impl Driver {
    fn start(scenario: &Path, out: &Path, seed: u64) -> Driver {
        let child = Command::new(JITWG)
            .arg("run")
            .arg(scenario)
            .arg("--out")
            .arg(out)
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--quiet")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Driver(Some(child))
    }

    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    fn wait(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            let child = self.0.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                self.0 = None;
                return (status, out);
            }
            assert!(
                Instant::now() < deadline,
                "jitwg did not finish within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn results(out: &Path) -> jitwg_reports::Results {
    jitwg_reports::load(out.join("results.json")).unwrap()
}

fn run_id(results: &jitwg_reports::Results) -> String {
    results.run.id.rsplit('-').next().unwrap().to_string()
}

/// (id, connected, handshake attempts) of every attempt of every client.
fn outcomes(results: &jitwg_reports::Results) -> Vec<(u32, bool, u32)> {
    results
        .clients
        .iter()
        .flat_map(|c| {
            c.connections
                .iter()
                .map(move |k| (c.id, k.connected(), k.handshake_attempts))
        })
        .collect()
}

/// Everything of run `id` that could be left behind; empty when it cleaned up.
fn leftovers(id: &str, out: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let ns_prefix = format!("jwg-{id}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&ns_prefix) {
                found.push(format!("namespace {name}"));
            }
        }
    }
    let socket = format!("/var/run/wireguard/jwg{id}.sock");
    if Path::new(&socket).exists() {
        found.push(format!("socket {socket}"));
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if line.contains(&format!("jwg{id}")) {
            found.push(format!("link {line}"));
        }
    }
    // Scratch in the temporary directory: the state directory and a default data-plane log.
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("jitwg-{id}-")) || name == format!("jitwg-jwg{id}.log") {
                found.push(format!("scratch {}", e.path().display()));
            }
        }
    }
    let out = out.display().to_string();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&format!("jwg{id}")) || cmdline.contains(&out) {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    found
}

fn assert_no_leftovers(id: &str, out: &Path) {
    // Reaping and link removal finish asynchronously in the kernel: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = leftovers(id, out);
        if found.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} left behind: {found:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn same_seed_gives_same_client_outcomes_and_leaves_nothing_behind() {
    if !can_run_jitwg(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path(), "jwgtest-seed", 10, 5.0, "5s");
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        let out = dir.path().join(name);
        let (status, stdout) = Driver::start(&scenario, &out, 7).wait(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "run {name} failed:\n{stdout}");
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("report: "),
            "report path is not printed last:\n{stdout}"
        );
        let r = results(&out);
        assert_eq!(r.run.seed, 7);
        assert_no_leftovers(&run_id(&r), &out);
        runs.push(r);
    }
    let (a, b) = (outcomes(&runs[0]), outcomes(&runs[1]));
    assert_eq!(runs[0].clients.len(), 10);
    assert!(a.iter().all(|&(_, connected, _)| connected), "{a:?}");
    assert_eq!(a, b);
    assert_ne!(run_id(&runs[0]), run_id(&runs[1]));
    assert!(!runs[0].samples.is_empty() && runs[0].processes.iter().any(|p| p.name == "daemon"));
    // The gateway namespace's own UDP counters: every client's initiation and echoes reached it.
    let udp = runs[0].gateway_udp.expect("gateway UDP counters");
    assert!(
        udp.in_datagrams >= 10 && udp.in_errors >= udp.rcvbuf_errors,
        "{udp:?}"
    );
    // Every sample carries the resource use so far of each process.
    let last = runs[0].samples.last().unwrap();
    for name in ["daemon", "dataplane", "driver"] {
        let p = last.processes.iter().find(|p| p.name == name);
        assert!(
            p.is_some_and(|p| p.peak_rss_bytes > 0),
            "no {name} usage in the last sample: {:?}",
            last.processes
        );
    }
}

#[test]
fn sigint_mid_run_writes_partial_results_and_tears_down() {
    if !can_run_jitwg(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path(), "jwgtest-sigint", 100, 4.0, "60s");
    let out = dir.path().join("out");
    let driver = Driver::start(&scenario, &out, 3);
    // Wait until the daemon runs and the fleet has had a few seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.join("jitwgd.log").exists() {
        assert!(Instant::now() < deadline, "the run never started jitwgd");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(driver.pid(), libc::SIGINT) }, 0);
    let started = Instant::now();
    let (status, stdout) = driver.wait(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(1),
        "an interrupted run exits 1:\n{stdout}"
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "teardown took {:?}",
        started.elapsed()
    );
    let r = results(&out);
    let end = r.events.last().unwrap();
    assert_eq!(end.kind, jitwg_reports::EventKind::RunEnd);
    assert_eq!(end.detail, "interrupted");
    assert!(r.run.duration_ms < 30_000.0, "{}", r.run.duration_ms);
    assert!(out.join("report.html").exists());
    assert_no_leftovers(&run_id(&r), &out);
}

#[test]
fn invalid_scenario_exits_2_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path(), "jwgtest-invalid", 1, 1.0, "5s");
    let out = Command::new(JITWG)
        .args(["validate", "--set", "daemon.moed=push"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("moed") && stderr.contains("jwgtest-invalid.toml"),
        "{stderr}"
    );
}

#[test]
fn missing_jitwgd_is_a_setup_failure_that_creates_nothing() {
    if !can_run_jitwg(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path(), "jwgtest-nobin", 1, 1.0, "5s");
    let out_dir = dir.path().join("out");
    let out = Command::new(JITWG)
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(&out_dir)
        .env("JITWGD_BIN", dir.path().join("no-such-jitwgd"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("JITWGD_BIN") && stderr.contains("no-such-jitwgd"),
        "{stderr}"
    );
    assert!(
        !out_dir.exists(),
        "a setup failure must not create the output directory"
    );
}

/// A scenario with `[lab] cpus = { gateway = "0", driver = "1" }`.
fn write_split_scenario(dir: &Path, name: &str, clients: u32, duration: &str) -> PathBuf {
    let path = write_scenario(dir, name, clients, 2.0, duration);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        "[daemon]",
        "[lab]\ncpus = { gateway = \"0\", driver = \"1\" }\n[daemon]",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The kernel's `Cpus_allowed_list` of a process (`None` once it is gone).
fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// Pids of live processes named `comm` whose command line contains `needle`.
fn pids_of(comm: &str, needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            c.trim() == comm && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// The run's data-plane interface, from the jitwgd.toml it wrote (`interface = "jwg…"`).
fn run_interface(out: &Path) -> Option<String> {
    let text = std::fs::read_to_string(out.join("jitwgd.toml")).ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("interface"))?;
    Some(line.split('"').nth(1)?.to_string())
}

/// The run's `[lab] cpus` cgroup subtrees still present, in any cpuset hierarchy.
fn cgroups_of(id: &str) -> Vec<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/cpuset"]
        .iter()
        .map(|root| Path::new(root).join(format!("jwg-{id}-cpus")))
        .filter(|p| p.exists())
        .collect()
}

fn two_cpus() -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        eprintln!("SKIP: the CPU split needs at least 2 CPUs, this machine offers {n}");
    }
    n >= 2
}

/// Waits for the run in `out` to have started jitwgd and wireguard-go; returns the interface.
fn wait_for_gateway(out: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(iface) = run_interface(out) {
            if !pids_of("jitwgd", &out.display().to_string()).is_empty() {
                return iface;
            }
        }
        assert!(Instant::now() < deadline, "the run never started jitwgd");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn gateway_processes_are_confined_to_the_gateway_cpus_and_the_cgroup_goes() {
    if !can_run_jitwg(&[]) || !two_cpus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_split_scenario(dir.path(), "jwgtest-split", 8, "6s");
    let out = dir.path().join("out");
    let driver = Driver::start(&scenario, &out, 1);
    let iface = wait_for_gateway(&out);
    let id = iface.trim_start_matches("jwg").to_string();
    let jitwgd = pids_of("jitwgd", &out.display().to_string());
    let wg = pids_of("wireguard-go", &iface);
    assert!(!wg.is_empty(), "no wireguard-go for {iface}");
    for pid in jitwgd.iter().chain(&wg) {
        assert_eq!(
            cpus_allowed(*pid).as_deref(),
            Some("0"),
            "gateway pid {pid}"
        );
    }
    assert_eq!(cpus_allowed(driver.pid() as u32).as_deref(), Some("1"));
    let (status, stdout) = driver.wait(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{stdout}");
    let r = results(&out);
    let split = r.run.cpu_split.clone().expect("run.cpu_split recorded");
    assert_eq!((split.gateway.as_str(), split.driver.as_str()), ("0", "1"));
    assert!(r.run.tool.cpus >= 2, "tool.cpus is the machine's count");
    assert_eq!(cgroups_of(&id), Vec::<PathBuf>::new(), "cgroup left behind");
    assert_no_leftovers(&id, &out);
}

#[test]
fn a_crashed_runs_cgroup_is_removed_by_clean() {
    if !can_run_jitwg(&[]) || !two_cpus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_split_scenario(dir.path(), "jwgtest-splitcrash", 50, "60s");
    let out = dir.path().join("out");
    let mut driver = Driver::start(&scenario, &out, 1);
    let iface = wait_for_gateway(&out);
    let id = iface.trim_start_matches("jwg").to_string();
    let had_cgroup = !cgroups_of(&id).is_empty();
    // A crash: SIGKILL leaves the gateway processes, the namespaces and the cgroup behind.
    let mut child = driver.0.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    if had_cgroup {
        assert!(
            !cgroups_of(&id).is_empty(),
            "the crash left no cgroup to clean"
        );
    } else {
        eprintln!("note: no cpuset cgroup on this machine (sched_setaffinity split)");
    }
    let clean = Command::new(JITWG).arg("clean").output().unwrap();
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    let said = String::from_utf8_lossy(&clean.stdout);
    if had_cgroup {
        assert!(said.contains("removed cgroup"), "{said}");
    }
    assert_eq!(
        cgroups_of(&id),
        Vec::<PathBuf>::new(),
        "clean left the cgroup"
    );
    assert_no_leftovers(&id, &out);
}

#[test]
fn a_cpu_the_machine_lacks_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path(), "jwgtest-nocpu", 1, 1.0, "5s");
    let out = Command::new(JITWG)
        .args(["validate", "--set", "lab.cpus.gateway=\"0\"", "--set"])
        .arg("lab.cpus.driver=\"4000\"")
        .arg(&scenario)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lab.cpus.driver") && stderr.contains("4000"),
        "{stderr}"
    );
}
