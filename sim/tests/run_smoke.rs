//! End-to-end runs of the real `jitwg` binary (root, wireguard-go, jitwgd built next to it): a
//! tiny scenario run twice with one seed gives the same per-client outcomes, and neither a
//! finished run nor one interrupted with SIGINT leaves a namespace, link, UAPI socket or process
//! behind. Without the prerequisites they skip loudly, except in CI (`CI` set, not 0/false) where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const JITWG: &str = env!("CARGO_BIN_EXE_jitwg");

fn jitwgd_path() -> PathBuf {
    std::env::var_os("JITWGD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(JITWG).with_file_name("jitwgd"))
}

/// True when the test can run; false (skip) outside CI; panics in CI.
fn prerequisites() -> bool {
    let mut missing = jitwg_testsupport::missing_root_and_tools(&["wireguard-go"]);
    if !jitwgd_path().is_file() {
        missing.push(format!(
            "{} (cargo build -p jitwgd)",
            jitwgd_path().display()
        ));
    }
    jitwg_testsupport::require(&missing)
}

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
    if !prerequisites() {
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
    if !prerequisites() {
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
    if !prerequisites() {
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
