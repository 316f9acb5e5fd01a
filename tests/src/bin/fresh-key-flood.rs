//! Measures what a fresh-key flood costs a real jitwgd: builds a complete gateway (the
//! end-to-end fixture: namespaces, wireguard-go, control plane, the jitwgd binary), then
//! sends `--count` handshake initiations, each from a new random key (built by boringtun,
//! so they pass mac1 and decrypt: exactly what anyone holding the gateway's public key can
//! send), from `--sources` addresses of the fixture's client /24 at `--rate` per second.
//! Once a second it prints the daemon's RSS, its peak, and the database's size on disk;
//! at the end the drop counters, API requests and table sizes.
//!
//! Needs root, wireguard-go, wg, ip. Usage (the daemon binary comes from JITWGD_BIN or
//! target/debug/jitwgd):
//!   fresh-key-flood [--count 1000000] [--rate 3000] [--sources 64] [--slot 90]
//!                   [--set 'toml_key = value']...

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use jitwg_tests::knock::bind_in;
use jitwg_tests::{Gateway, GatewayOptions};

struct Options {
    count: u64,
    rate: u64,
    sources: u32,
    slot: u8,
    settings: Vec<String>,
    generators: usize,
}

fn parse() -> anyhow::Result<Options> {
    let mut o = Options {
        count: 1_000_000,
        rate: 3000,
        sources: 64,
        slot: 90,
        settings: Vec::new(),
        generators: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--count" => o.count = value.parse()?,
            "--rate" => o.rate = value.parse()?,
            "--sources" => o.sources = value.parse()?,
            "--slot" => o.slot = value.parse()?,
            "--generators" => o.generators = value.parse()?,
            "--set" => o.settings.push(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(o)
}

/// One handshake initiation from a brand-new key.
fn fresh_initiation(gateway: &PublicKey, index: u32) -> Option<Vec<u8>> {
    let secret = StaticSecret::from(rand::random::<[u8; 32]>());
    let mut tunn = Tunn::new(secret, *gateway, None, None, index & 0x00ff_ffff, None);
    let mut buf = [0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
        _ => None,
    }
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Bytes of the database and its WAL.
fn db_bytes(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn table_rows(db: &Path, table: &str) -> Option<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .ok()
}

fn main() -> anyhow::Result<()> {
    let o = parse()?;
    let mut opts = GatewayOptions::new(o.slot);
    for line in &o.settings {
        opts = opts.raw_daemon_key(line);
    }
    let gw = Gateway::start(opts)?;
    let pid = gw
        .daemon_pid()
        .ok_or_else(|| anyhow::anyhow!("jitwgd is not running"))?;
    let db = gw.db_path();
    let gateway_key = PublicKey::from(gw.public_key());
    let sockets: Vec<UdpSocket> = (0..o.sources)
        .map(|i| bind_in(&gw.topology().client, gw.plan().client_source(i)))
        .collect::<Result<_, _>>()?;
    let endpoint = gw.endpoint();

    // Generators build initiations ahead of the sender (boringtun: ~4 X25519 each).
    let (tx, rx) = sync_channel::<Vec<u8>>(8192);
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let started = Instant::now();
    println!("t_s,sent,rss_kib,peak_rss_kib,db_bytes");
    std::thread::scope(|s| -> anyhow::Result<()> {
        for g in 0..o.generators {
            let (tx, stop) = (tx.clone(), &stop);
            s.spawn(move || {
                let mut index = g as u32;
                while !stop.load(Ordering::Relaxed) {
                    index = index.wrapping_add(o.generators as u32);
                    let Some(init) = fresh_initiation(&gateway_key, index) else {
                        continue;
                    };
                    if tx.send(init).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let (stop_ref, sent_ref) = (&stop, &sent);
        let sockets = &sockets;
        s.spawn(move || {
            let per_ms = o.rate as f64 / 1000.0;
            let mut n = 0u64;
            while n < o.count {
                // Paced against the clock: behind schedule, send at once.
                let due = (started.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64;
                if n >= due {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                let Ok(init) = rx.recv() else { break };
                let socket = &sockets[(n % sockets.len() as u64) as usize];
                let _ = socket.send_to(&init, endpoint);
                n += 1;
                sent_ref.store(n, Ordering::Relaxed);
            }
            stop_ref.store(true, Ordering::Relaxed);
            // Unblock generators waiting on a full channel.
            while rx.try_recv().is_ok() {}
        });
        let mut peak_db = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let (rss, hwm) = rss_kib(pid).unwrap_or((0, 0));
            let bytes = db_bytes(&db);
            peak_db = peak_db.max(bytes);
            println!(
                "{:.0},{},{rss},{hwm},{bytes}",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed)
            );
        }
        // Let the daemon finish what it queued, then the final figures.
        std::thread::sleep(Duration::from_secs(3));
        let (rss, hwm) = rss_kib(pid).unwrap_or((0, 0));
        let m = gw.scrape()?;
        println!(
            "--- after {} initiations in {:.1} s",
            sent.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        println!(
            "jitwgd rss {:.1} MiB, peak {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        println!(
            "db {:.2} MiB now, peak {:.2} MiB; rows: negative {:?}, replay {:?}, peers {:?}",
            db_bytes(&db) as f64 / 1048576.0,
            peak_db.max(db_bytes(&db)) as f64 / 1048576.0,
            table_rows(&db, "negative"),
            table_rows(&db, "replay"),
            table_rows(&db, "peers")
        );
        for line in m.text().lines().filter(|l| {
            l.starts_with("jitwgd_initiations_captured_total")
                || l.starts_with("jitwgd_initiations_dropped_total")
                || l.starts_with("jitwgd_identify_failed_total")
                || l.starts_with("jitwgd_api_requests_total")
                || l.starts_with("jitwgd_lookups_total")
                || l.starts_with("jitwgd_negative_purged_total")
                || l.starts_with("jitwgd_log_lines_suppressed_total")
        }) {
            if !line.ends_with(" 0") {
                println!("{line}");
            }
        }
        println!("control plane lookups served: {}", gw.api_calls_total());
        Ok(())
    })?;
    Ok(())
}
