//! `jitwg bundle OUT_DIR`: one `.tar.gz` for a bug report — results, the fleet's event log,
//! jitwgd's and wireguard-go's logs and config, the capture and its key log, the resolved
//! scenario (`scenario.toml`, from results.json) and the tool versions — plus `MANIFEST.txt`,
//! which lists what is in it and what an incomplete run never wrote. `jitwg rerun` takes a
//! bundle as it takes a run directory. Bundles and captures are the user's files: `jitwg
//! clean` never touches them.

/// `println!` that ignores a reader that went away (`jitwg bundle ... | head`).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::cli::say_raw(format_args!("{}\n", format_args!($($arg)*)))
    };
}

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::cli::{CliError, ExitCode};

/// What a complete run directory holds (beyond what the bundle generates itself).
pub const EXPECTED: &[&str] = &[
    "results.json",
    "client-events.jsonl",
    "jitwgd.log",
    "jitwgd.toml",
    "wireguard-go.log",
    crate::capture::CAPTURE_FILE,
    crate::capture::KEYLOG_FILE,
];
/// Taken when present, never listed as missing (push mode only, or made by the report).
pub const OPTIONAL: &[&str] = &["nats.log", "summary.md", "report.html"];
/// The bundle's generated members.
pub const MANIFEST: &str = "MANIFEST.txt";
pub const VERSIONS: &str = "versions.txt";

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The run's output directory.
    #[arg(value_name = "OUT_DIR")]
    pub dir: PathBuf,
    /// The archive to write [default: OUT_DIR.tar.gz, beside the directory].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// What went into a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Name and size of every file taken from the run directory.
    pub present: Vec<(String, u64)>,
    /// Expected files the run never wrote (or that could not be made).
    pub missing: Vec<String>,
    /// Files the bundle made: the resolved scenario, the versions, this manifest.
    pub generated: Vec<String>,
}

impl Manifest {
    /// The text of `MANIFEST.txt`.
    pub fn render(&self, run: &str) -> String {
        let mut out = format!("jitwg bundle of {run}\n\npresent:\n");
        for (name, size) in &self.present {
            let _ = writeln!(out, "  {name} ({size} bytes)");
        }
        out.push_str("generated:\n");
        for name in &self.generated {
            let _ = writeln!(out, "  {name}");
        }
        if self.missing.is_empty() {
            out.push_str("missing: nothing\n");
        } else {
            out.push_str("missing (the run did not write them):\n");
            for name in &self.missing {
                let _ = writeln!(out, "  {name}");
            }
        }
        if self
            .present
            .iter()
            .any(|(n, _)| n == crate::capture::KEYLOG_FILE)
        {
            let _ = writeln!(
                out,
                "\n{} holds WireGuard PRIVATE keys (the gateway's and every simulated client's).",
                crate::capture::KEYLOG_FILE
            );
        }
        out
    }
}

/// Whether `path` is a file that starts like a gzip stream (a bundle).
pub fn is_bundle(path: &Path) -> bool {
    let mut magic = [0u8; 2];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == [0x1f, 0x8b]
}

/// The default archive path: `OUT_DIR.tar.gz` beside the directory.
pub fn default_path(dir: &Path) -> PathBuf {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "jitwg-run".into());
    name.push(".tar.gz");
    dir.with_file_name(name)
}

/// Appends one in-memory file to the archive.
fn append_text<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    prefix: &str,
    name: &str,
    text: &str,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header.set_cksum();
    tar.append_data(&mut header, format!("{prefix}/{name}"), text.as_bytes())
}

/// The generated `versions.txt`: what the run recorded, and what is installed now.
fn versions(results: Option<&jitwg_reports::Results>) -> String {
    let mut out = String::new();
    if let Some(r) = results {
        let t = &r.run.tool;
        let _ = writeln!(
            out,
            "recorded by the run:\n  jitwg {}\n  wireguard-go {}\n  kernel {}\n  cpus {}\n  memory {} bytes",
            t.jitwg_version,
            t.wireguard_go_version.as_deref().unwrap_or("-"),
            t.kernel,
            t.cpus,
            t.memory_bytes
        );
    }
    let now = crate::run::info::tool_info(Some("wireguard-go"));
    let _ = writeln!(
        out,
        "bundled on:\n  jitwg {}\n  wireguard-go {}\n  kernel {}",
        now.jitwg_version,
        now.wireguard_go_version.as_deref().unwrap_or("-"),
        now.kernel
    );
    out
}

/// Writes the bundle of `dir` to `archive`; returns what went in.
pub fn write_bundle(dir: &Path, archive: &Path) -> anyhow::Result<Manifest> {
    if !dir.is_dir() {
        bail!("{} is not a run's output directory", dir.display());
    }
    let prefix = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("jitwg-run")
        .to_string();
    let results = jitwg_reports::load(dir.join("results.json")).ok();
    let file = std::fs::File::create(archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    let mut tar = tar::Builder::new(GzEncoder::new(file, flate2::Compression::default()));
    let mut manifest = Manifest::default();
    for name in EXPECTED.iter().chain(OPTIONAL) {
        let path = dir.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                // Keeps the file's mode: the key log stays 0600 when unpacked.
                tar.append_path_with_name(&path, format!("{prefix}/{name}"))
                    .with_context(|| format!("adding {}", path.display()))?;
                manifest.present.push((name.to_string(), meta.len()));
            }
            _ if EXPECTED.contains(name) => manifest.missing.push(name.to_string()),
            _ => {}
        }
    }
    match &results {
        Some(r) => {
            let scenario =
                crate::rerun::recorded_scenario(r).and_then(|f| crate::rerun::render_scenario(&f));
            match scenario {
                Ok(text) => {
                    append_text(&mut tar, &prefix, crate::rerun::SCENARIO_FILE, &text)?;
                    manifest.generated.push(crate::rerun::SCENARIO_FILE.into());
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "resolved scenario not bundled");
                    manifest.missing.push(crate::rerun::SCENARIO_FILE.into());
                }
            }
        }
        None => manifest.missing.push(crate::rerun::SCENARIO_FILE.into()),
    }
    append_text(&mut tar, &prefix, VERSIONS, &versions(results.as_ref()))?;
    manifest.generated.push(VERSIONS.into());
    manifest.generated.push(MANIFEST.into());
    let run = results
        .as_ref()
        .map_or(prefix.clone(), |r| r.run.id.clone());
    append_text(&mut tar, &prefix, MANIFEST, &manifest.render(&run))?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("finishing {}", archive.display()))?;
    Ok(manifest)
}

/// Reads one member (by file name, under any top directory) of a bundle.
pub fn read_member(archive: &Path, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    for entry in tar
        .entries()
        .with_context(|| format!("reading {}", archive.display()))?
    {
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let matches = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|n| n == name))
            .unwrap_or(false);
        if matches {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("reading {name} in {}", archive.display()))?;
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// Unpacks a bundle into `into`; returns the run directory inside it.
pub fn unpack(archive: &Path, into: &Path) -> anyhow::Result<PathBuf> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    // `unpack` refuses members that would land outside `into` (absolute paths, `..`).
    tar::Archive::new(GzDecoder::new(file))
        .unpack(into)
        .with_context(|| format!("unpacking {}", archive.display()))?;
    let mut dirs = std::fs::read_dir(into)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    match (dirs.next(), dirs.next()) {
        (Some(dir), None) => Ok(dir),
        _ => bail!(
            "{} is not a jitwg bundle (one run directory)",
            archive.display()
        ),
    }
}

/// The results.json of a bundle.
pub fn read_results(archive: &Path) -> anyhow::Result<jitwg_reports::Results> {
    let Some(data) = read_member(archive, "results.json")? else {
        bail!(
            "{} has no results.json (its MANIFEST.txt says what the run left)",
            archive.display()
        );
    };
    let text = String::from_utf8(data).context("results.json is not UTF-8")?;
    jitwg_reports::Results::from_json(&text)
        .with_context(|| format!("results.json in {}", archive.display()))
}

/// `jitwg bundle`.
pub fn command(args: BundleArgs) -> Result<ExitCode, CliError> {
    let archive = args.out.unwrap_or_else(|| default_path(&args.dir));
    let manifest = write_bundle(&args.dir, &archive).map_err(|e| CliError {
        code: ExitCode::Usage,
        error: e,
    })?;
    for (name, size) in &manifest.present {
        say!("  {name} ({size} bytes)");
    }
    for name in &manifest.missing {
        say!("  missing: {name}");
    }
    say!("bundle: {}", archive.display());
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn incomplete_run_bundles_what_exists_and_lists_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("smoke-abc123");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("jitwgd.log"), "log line\n").unwrap();
        std::fs::write(run.join("wg.keylog"), "LOCAL_STATIC_PRIVATE_KEY = x\n").unwrap();
        std::fs::set_permissions(
            run.join("wg.keylog"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let archive = default_path(&run);
        assert_eq!(archive, dir.path().join("smoke-abc123.tar.gz"));
        let manifest = write_bundle(&run, &archive).unwrap();
        assert!(is_bundle(&archive));
        assert!(!is_bundle(&run));
        assert_eq!(manifest.present.len(), 2);
        assert!(manifest.missing.contains(&"results.json".to_string()));
        assert!(manifest.missing.contains(&"scenario.toml".to_string()));
        assert_eq!(
            read_member(&archive, "jitwgd.log").unwrap().as_deref(),
            Some(&b"log line\n"[..])
        );
        let text = String::from_utf8(read_member(&archive, MANIFEST).unwrap().unwrap()).unwrap();
        assert!(
            text.contains("missing (the run did not write them):\n  results.json"),
            "{text}"
        );
        assert!(text.contains("PRIVATE keys"), "{text}");
        assert!(read_results(&archive).is_err());
        let unpacked = tempfile::tempdir().unwrap();
        let inner = unpack(&archive, unpacked.path()).unwrap();
        assert_eq!(inner.file_name().unwrap(), "smoke-abc123");
        assert!(inner.join(MANIFEST).is_file() && inner.join("jitwgd.log").is_file());
        // The key log keeps its mode inside the archive.
        let file = std::fs::File::open(&archive).unwrap();
        let mut tar = tar::Archive::new(GzDecoder::new(file));
        let mode = tar
            .entries()
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.path().unwrap().ends_with("wg.keylog"))
            .map(|e| e.header().mode().unwrap())
            .unwrap();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_file_is_not_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        std::fs::write(&file, "x").unwrap();
        assert!(write_bundle(&file, &dir.path().join("x.tar.gz")).is_err());
    }
}
