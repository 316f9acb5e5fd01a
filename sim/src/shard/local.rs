//! `jitwg run SCENARIO --shards N`: the sharded run on one machine, as the proof that the split
//! measures what `jitwg run` measures. One gateway namespace runs `jitwg gateway` on its own
//! interfaces; N fleet namespaces, each with its own link and block of source addresses, run
//! `jitwg fleet` processes; then the shards are merged into `OUT/results.json` and a report.
//! Only the run's own namespaces and the brief's ranges are used. A TLS or token control plane
//! works as in `jitwg run`: the fleets start once the gateway published the run's CA and token,
//! and are handed them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use ipnet::Ipv4Net;

use crate::cli::{CliError, ExitCode, ScenarioArgs};
use crate::lab::names::RunId;
use crate::lab::process::{spawn_in, Child};
use crate::lab::topology::UNDERLAY_RANGE;
use crate::lab::{LabError, Namespace, Netlink};
use crate::run::{CONTROL_PLANE_PORT, WG_PORT};

/// Most shards one machine runs (each has a namespace, a link and a /22 or larger block).
pub const MAX_LOCAL_SHARDS: u32 = 64;
/// Where the gateway listens inside its namespace (on its loopback; every link routes to it).
const GATEWAY_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);
/// The block every shard's sources are carved from (the unsharded run's client range).
const SOURCES: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 16);
/// Links are /30s from here: shard i's is 198.19.0.(4i)/30.
const LINKS: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);
/// Time for the children beyond the scenario's duration: setup, stop, posting results.
const CHILD_SLACK: Duration = Duration::from_secs(300);

/// Set by SIGINT/SIGTERM: the children get the terminal's SIGINT themselves; the parent stops
/// waiting, ends whatever still runs and removes its namespaces instead of dying with them.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Catches SIGINT and SIGTERM for the parent (children start with default dispositions: exec
/// resets caught signals).
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

/// Addresses of one local shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalShard {
    /// The gateway's end of its link (`.1`) and the fleet's (`.2`) of one /30.
    pub link: Ipv4Net,
    /// Its clients' source addresses.
    pub sources: Ipv4Net,
}

impl LocalShard {
    pub fn gateway_side(&self) -> Ipv4Net {
        with_len(Ipv4Addr::from(u32::from(self.link.network()) + 1), 30)
    }

    pub fn fleet_side(&self) -> Ipv4Net {
        with_len(Ipv4Addr::from(u32::from(self.link.network()) + 2), 30)
    }
}

fn with_len(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).unwrap_or_else(|_| Ipv4Net::from(addr))
}

/// The address plan of `count` local shards (pure): links and equal source blocks, all inside
/// the benchmarking range and disjoint.
pub fn plan_shards(count: u32) -> Result<Vec<LocalShard>, String> {
    if count == 0 || count > MAX_LOCAL_SHARDS {
        return Err(format!(
            "--shards {count}: a local sharded run takes 1 to {MAX_LOCAL_SHARDS} shards"
        ));
    }
    let bits = u8::try_from(32 - (count - 1).leading_zeros()).unwrap_or(0);
    let blocks: Vec<Ipv4Net> = SOURCES
        .subnets(SOURCES.prefix_len() + bits)
        .map_err(|e| e.to_string())?
        .take(count as usize)
        .collect();
    let shards: Vec<LocalShard> = blocks
        .into_iter()
        .enumerate()
        .map(|(i, sources)| LocalShard {
            link: with_len(Ipv4Addr::from(u32::from(LINKS) + 4 * i as u32), 30),
            sources,
        })
        .collect();
    for s in &shards {
        if !UNDERLAY_RANGE.contains(&s.link) || !UNDERLAY_RANGE.contains(&s.sources) {
            return Err(format!("{s:?} is outside {UNDERLAY_RANGE}"));
        }
    }
    Ok(shards)
}

/// The namespaces of a local sharded run; dropping it deletes them (and their links).
struct ShardNet {
    gateway: Namespace,
    fleets: Vec<Namespace>,
}

fn build_net(run: &RunId, shards: &[LocalShard]) -> Result<ShardNet, LabError> {
    let gateway = Namespace::create(&format!("jwg-{run}-gw"))?;
    Netlink::with(&gateway, |nl| {
        nl.add_address("lo", with_len(GATEWAY_ADDRESS, 32))
    })?;
    let mut net = ShardNet {
        gateway,
        fleets: Vec::new(),
    };
    for (i, shard) in shards.iter().enumerate() {
        let fleet = Namespace::create(&format!("jwg-{run}-s{i}"))?;
        let (gw_end, fleet_end) = (format!("jwg{run}g{i}"), format!("jwg{run}f{i}"));
        Netlink::with(&net.gateway, |nl| {
            nl.create_veth(&gw_end, &fleet_end)?;
            nl.move_link(&fleet_end, &fleet)?;
            nl.add_address(&gw_end, shard.gateway_side())?;
            nl.set_up(&gw_end)?;
            nl.add_route_via(shard.sources, shard.fleet_side().addr(), &gw_end)
        })?;
        Netlink::with(&fleet, |nl| {
            nl.add_address(&fleet_end, shard.fleet_side())?;
            nl.set_up(&fleet_end)?;
            nl.add_local_route(shard.sources, "lo")?;
            nl.add_route_via(
                with_len(GATEWAY_ADDRESS, 32),
                shard.gateway_side().addr(),
                &fleet_end,
            )
        })?;
        net.fleets.push(fleet);
    }
    Ok(net)
}

/// `--set`/`--seed` of the parent, passed on to every child.
fn scenario_args(cmd: &mut Command, args: &ScenarioArgs) {
    cmd.arg(&args.scenario);
    for set in &args.set {
        cmd.arg("--set").arg(set);
    }
    if let Some(seed) = args.seed {
        cmd.arg("--seed").arg(seed.to_string());
    }
}

fn logged(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let second = file.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(second);
    Ok(())
}

/// A child and where its log is.
struct Running {
    child: Child,
    log: PathBuf,
    what: String,
    status: Option<ExitStatus>,
}

/// Grace a `jitwg gateway` or `jitwg fleet` child gets to tear down what it started.
const TEARDOWN_GRACE: Duration = Duration::from_secs(10);

impl Drop for Running {
    /// A child still running when the run gives up (deadline, a failed sibling, an error) gets
    /// SIGTERM first: a SIGKILL, `Child`'s own drop, would leave the gateway's jitwgd and data
    /// plane orphaned, since only the gateway process's guards stop them.
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Err(e) = self.child.terminate(TEARDOWN_GRACE) {
                tracing::warn!(child = %self.what, error = %e, "stopping a sharded run's process");
            }
        }
    }
}

/// How long the gateway may take to build its lab and publish the run's credentials.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits until the gateway published the run's CA and token (when the scenario secures its
/// control plane), failing early if it exits first: the fleets start with them.
fn wait_for_credentials(
    scenario: &crate::scenario::Scenario,
    gateway_dir: &Path,
    gateway: &mut Running,
) -> anyhow::Result<super::secure::Published> {
    let dir = gateway_dir.join("credentials");
    let cp = &scenario.control_plane;
    let expected = super::secure::Published {
        ca: cp.tls.then(|| dir.join(super::secure::CA_FILE)),
        token: cp.token.then(|| dir.join(super::secure::TOKEN_FILE)),
    };
    let deadline = Instant::now() + CREDENTIALS_TIMEOUT;
    loop {
        let there = [&expected.ca, &expected.token]
            .into_iter()
            .flatten()
            .all(|p| p.is_file());
        if there {
            return Ok(expected);
        }
        gateway.status = gateway.child.try_wait()?;
        if let Some(status) = gateway.status {
            anyhow::bail!(
                "the gateway exited ({status}) before publishing the run's credentials; its log {} ends with:\n{}",
                gateway.log.display(),
                crate::run::services::log_tail(&gateway.log, 2048)
            );
        }
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("interrupted while the gateway was starting");
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the gateway did not publish the run's credentials in {} within {CREDENTIALS_TIMEOUT:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the sharded scenario; returns the directories to merge (gateway first).
fn run_children(args: &ScenarioArgs, count: u32, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (scenario, _) = crate::cli::load_scenario(args).map_err(|e| e.error)?;
    crate::run::prereq::require_root()?;
    let shards = plan_shards(count).map_err(anyhow::Error::msg)?;
    let run = RunId::random();
    catch_interrupts();
    let net = crate::run::lab::blocking(|| build_net(&run, &shards))
        .context("building the sharded run's namespaces")?;
    let exe = std::env::current_exe().context("locating the jitwg executable")?;
    let gateway_dir = out.join("gateway");
    let mut gateway = Command::new(&exe);
    gateway.arg("gateway");
    scenario_args(&mut gateway, args);
    gateway
        .arg("--listen")
        .arg(GATEWAY_ADDRESS.to_string())
        .arg("--shards")
        .arg(count.to_string())
        .arg("--out")
        .arg(&gateway_dir);
    let log = out.join("gateway.log");
    logged(&mut gateway, &log)?;
    let mut running = vec![Running {
        child: spawn_in(&net.gateway, gateway)?,
        log,
        what: "gateway".into(),
        status: None,
    }];
    let credentials = wait_for_credentials(&scenario, &gateway_dir, &mut running[0])?;
    let mut dirs = vec![gateway_dir];
    for (i, (shard, ns)) in shards.iter().zip(&net.fleets).enumerate() {
        let dir = out.join(format!("shard-{i}"));
        let mut fleet = Command::new(&exe);
        fleet.arg("fleet");
        scenario_args(&mut fleet, args);
        fleet
            .arg("--gateway")
            .arg(format!("{GATEWAY_ADDRESS}:{WG_PORT}"))
            .arg("--control-plane")
            .arg(format!(
                "{}://{GATEWAY_ADDRESS}:{CONTROL_PLANE_PORT}",
                if scenario.control_plane.tls {
                    "https"
                } else {
                    "http"
                }
            ))
            .args(credentials.fleet_flags())
            .arg("--shard")
            .arg(format!("{i}/{count}"))
            .arg("--sources")
            .arg(shard.sources.to_string())
            .arg("--connect-timeout")
            .arg("120s")
            .arg("--out")
            .arg(&dir);
        let log = out.join(format!("shard-{i}.log"));
        logged(&mut fleet, &log)?;
        running.push(Running {
            child: spawn_in(ns, fleet)?,
            log,
            what: format!("shard {i}/{count}"),
            status: None,
        });
        dirs.push(dir);
    }
    let deadline = Instant::now() + scenario.duration + CHILD_SLACK;
    while running.iter().any(|r| r.status.is_none()) {
        for r in running.iter_mut().filter(|r| r.status.is_none()) {
            r.status = r.child.try_wait()?;
        }
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            // Give the gateway time to write its partial series; `Child`'s drop ends the rest.
            for r in running.iter_mut().filter(|r| r.status.is_none()) {
                r.status = r.child.terminate(TEARDOWN_GRACE)?;
            }
            anyhow::bail!("interrupted: the partial results are in {}", out.display());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the sharded run's processes did not finish within {:?}",
                scenario.duration + CHILD_SLACK
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in &running {
        // The gateway exits 1 when an expectation breached: the merge below says which.
        let ok = r
            .status
            .is_some_and(|s| s.success() || (r.what == "gateway" && s.code() == Some(1)));
        if !ok {
            anyhow::bail!(
                "{} failed ({:?}); its log {} ends with:\n{}",
                r.what,
                r.status,
                r.log.display(),
                crate::run::services::log_tail(&r.log, 2048)
            );
        }
    }
    drop(net);
    Ok(dirs)
}

/// Runs `jitwg run --shards N` (see the module docs).
pub fn run(args: &ScenarioArgs, count: u32, out: Option<PathBuf>) -> Result<ExitCode, CliError> {
    let (scenario, _) = crate::cli::load_scenario(args)?;
    super::refuse_client_cert(&scenario)?;
    plan_shards(count).map_err(|e| CliError::new(ExitCode::Usage, anyhow::anyhow!(e)))?;
    let out = out.unwrap_or_else(|| {
        crate::run::default_out_dir(&format!("{}-sharded", scenario.name), &RunId::random())
    });
    let out = std::path::absolute(&out)
        .with_context(|| format!("{}", out.display()))
        .map_err(|e| CliError::new(ExitCode::Usage, e))?;
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating {}", out.display()))
        .map_err(|e| CliError::new(ExitCode::Internal, e))?;
    let dirs = run_children(args, count, &out).map_err(|e| {
        // Interrupted runs exit 1, like `jitwg run`; anything else kept the run from running.
        let interrupted = INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
        let code = if interrupted {
            ExitCode::Breach
        } else {
            ExitCode::Setup
        };
        CliError::new(code, e)
    })?;
    super::cli::finish_merge(&dirs, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shards_get_disjoint_links_and_source_blocks_in_the_brief_ranges() {
        let plan = plan_shards(3).unwrap();
        assert_eq!(plan.len(), 3);
        assert_eq!(plan[0].sources.to_string(), "198.18.0.0/18");
        assert_eq!(plan[2].sources.to_string(), "198.18.128.0/18");
        assert_eq!(plan[1].link.to_string(), "198.19.0.4/30");
        assert_eq!(plan[1].gateway_side().to_string(), "198.19.0.5/30");
        assert_eq!(plan[1].fleet_side().to_string(), "198.19.0.6/30");
        for (i, a) in plan.iter().enumerate() {
            for b in &plan[i + 1..] {
                assert!(!a.sources.contains(&b.sources) && !b.sources.contains(&a.sources));
                assert_ne!(a.link, b.link);
            }
            assert!(!a.link.contains(&GATEWAY_ADDRESS));
        }
        assert_eq!(plan_shards(1).unwrap()[0].sources, SOURCES);
        assert!(plan_shards(0).is_err() && plan_shards(MAX_LOCAL_SHARDS + 1).is_err());
        assert_eq!(plan_shards(MAX_LOCAL_SHARDS).unwrap().len(), 64);
    }
}
