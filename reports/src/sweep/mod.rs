//! A parameter sweep's index, `DIR/sweep.json`: the grid `jitwg sweep` ran (varied keys and
//! their values as `--set` strings), every point's repeats with their figures, and the
//! per-point aggregates the sweep report charts and a cost model fits. The driver writes it,
//! reports and the planner read it; the directory layout it describes is in ARCHITECTURE.md
//! ("Parameter sweeps").
//!
//! A *parameter sweep* varies scenario keys across runs; it is not jitwgd's *eviction sweep*.

mod chart;
pub mod fit;
mod html;
mod markdown;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use chart::figure_chart;
pub use fit::{fallback_annotations, FigureAnnotation};
pub use html::render_html;
pub use markdown::render_markdown;

use crate::figures::{Figures, FIGURES};
use crate::schema::Results;
use crate::{ReportError, ReportPaths};

/// The `sweep.json` format this crate writes and reads.
pub const SWEEP_VERSION: u32 = 1;
/// File name of the sweep index inside the sweep directory.
pub const SWEEP_FILE: &str = "sweep.json";
/// Directory of the points inside the sweep directory.
pub const POINTS_DIR: &str = "points";
/// Suffix of a repeat's directory while it runs (or after it was interrupted): not a result.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// `points/<point>`, relative to the sweep directory.
pub fn point_dir(point: usize) -> PathBuf {
    Path::new(POINTS_DIR).join(point.to_string())
}

/// `points/<point>/r<repeat>`, relative to the sweep directory: a finished repeat's run output.
pub fn repeat_dir(point: usize, repeat: usize) -> PathBuf {
    point_dir(point).join(format!("r{repeat}"))
}

/// `points/<point>/r<repeat>.partial`: where a repeat runs before it is renamed to
/// [`repeat_dir`] on an uninterrupted finish.
pub fn partial_dir(point: usize, repeat: usize) -> PathBuf {
    point_dir(point).join(format!("r{repeat}{PARTIAL_SUFFIX}"))
}

/// `DIR/sweep.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepFile {
    pub version: u32,
    pub scenario_file: String,
    pub scenario_name: String,
    /// Repeat `k` of every point runs with seed `base_seed + k`.
    pub base_seed: u64,
    /// Repeats per point.
    pub repeat: usize,
    /// `--set` overrides applied to every point.
    #[serde(default)]
    pub fixed: Vec<String>,
    /// The varied keys in grid order: the first varies slowest.
    pub vary: Vec<VariedKey>,
    pub points: Vec<Point>,
}

/// One varied scenario key and its values, as written after `KEY=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariedKey {
    pub key: String,
    pub values: Vec<String>,
}

/// One grid point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub index: usize,
    /// `points/<index>`, relative to the sweep directory.
    pub dir: String,
    /// This point's `--set` strings, one per varied key (`population.0.count=500`).
    pub overrides: Vec<String>,
    /// Value text per varied key.
    pub values: BTreeMap<String, String>,
    /// Numeric value per varied key: numbers as written, durations in seconds, `None` when the
    /// value is neither (a categorical key such as `daemon.boot`).
    pub x: BTreeMap<String, Option<f64>>,
    /// Every repeat finished.
    pub complete: bool,
    /// Finished repeats only.
    pub repeats: Vec<Repeat>,
    /// Each figure over the finished repeats; a figure no repeat measured is absent.
    pub figures: BTreeMap<String, Aggregate>,
}

/// One finished repeat of a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    pub index: usize,
    /// `points/<point>/r<index>`, relative to the sweep directory.
    pub dir: String,
    /// `points/<point>/r<index>/results.json`, relative to the sweep directory.
    pub results: String,
    pub seed: u64,
    pub run_id: String,
    /// Every expectation of the scenario held.
    pub passed: bool,
    /// Registry name → value (`jitwg_reports::FIGURES`); unmeasured figures are absent.
    pub figures: BTreeMap<String, f64>,
}

/// One figure over a point's repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Sample standard deviation (n − 1); 0 for a single repeat.
    pub stddev: f64,
    pub values: Vec<f64>,
}

impl Aggregate {
    /// `None` for no values (nothing to aggregate).
    pub fn of(values: &[f64]) -> Option<Aggregate> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Aggregate {
            n,
            mean,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            stddev: var.sqrt(),
            values: values.to_vec(),
        })
    }
}

/// Every registered figure a run measured, by registry name.
pub fn figure_values(results: &Results) -> BTreeMap<String, f64> {
    let figures = Figures::from_results(results);
    FIGURES
        .iter()
        .filter_map(|def| {
            let value = (def.get)(&figures)?;
            value.is_finite().then(|| (def.name.to_string(), value))
        })
        .collect()
}

/// Per-figure aggregates over `repeats`.
pub fn aggregate(repeats: &[Repeat]) -> BTreeMap<String, Aggregate> {
    let mut by_figure: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for r in repeats {
        for (name, value) in &r.figures {
            by_figure.entry(name).or_default().push(*value);
        }
    }
    by_figure
        .into_iter()
        .filter_map(|(name, values)| Some((name.to_string(), Aggregate::of(&values)?)))
        .collect()
}

/// Why `sweep.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SweepFileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a sweep index", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has sweep.json version {found}; this jitwg reads version {SWEEP_VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SweepFile {
    /// Reads `DIR/sweep.json`.
    pub fn load(dir: &Path) -> Result<SweepFile, SweepFileError> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| SweepFileError::Read {
            path: path.clone(),
            source,
        })?;
        let file: SweepFile =
            serde_json::from_str(&text).map_err(|source| SweepFileError::Parse {
                path: path.clone(),
                source,
            })?;
        if file.version != SWEEP_VERSION {
            return Err(SweepFileError::Version {
                path,
                found: file.version,
            });
        }
        Ok(file)
    }

    /// Writes `DIR/sweep.json` atomically (temporary file, then rename), so an interrupted
    /// sweep never leaves a half-written index.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, SweepFileError> {
        let path = dir.join(SWEEP_FILE);
        let tmp = dir.join(format!("{SWEEP_FILE}.tmp"));
        let write = |p: &Path, e: std::io::Error| SweepFileError::Write {
            path: p.to_path_buf(),
            source: e,
        };
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| write(&path, std::io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(|e| write(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| write(&path, e))?;
        Ok(path)
    }

    /// Points with at least one finished repeat.
    pub fn measured_points(&self) -> impl Iterator<Item = &Point> {
        self.points.iter().filter(|p| !p.repeats.is_empty())
    }
}

/// Writes `DIR/report.html` and `DIR/summary.md` for a sweep, with the caller's annotations
/// (knee, fitted line, R² per figure; see [`fallback_annotations`]).
pub fn write_sweep_report(
    sweep: &SweepFile,
    annotations: &[FigureAnnotation],
    dir: &Path,
) -> Result<ReportPaths, ReportError> {
    write_sweep_report_with(sweep, annotations, None, dir)
}

/// [`write_sweep_report`] with an extra self-contained HTML section placed before the end of
/// the page: the cost model's fit quality (`model::html::section`) once the sweep has enough
/// finished runs to fit it.
pub fn write_sweep_report_with(
    sweep: &SweepFile,
    annotations: &[FigureAnnotation],
    extra_section: Option<&str>,
    dir: &Path,
) -> Result<ReportPaths, ReportError> {
    let mut html = render_html(sweep, annotations)?;
    if let Some(section) = extra_section {
        match html.rfind("</body>") {
            Some(at) => html.insert_str(at, section),
            None => html.push_str(section),
        }
    }
    let markdown = render_markdown(sweep, annotations);
    crate::write_files(dir, &html, &markdown)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A one-key sweep whose `setup_p50` rises slowly then steeply past x = 400.
    pub(crate) fn knee_sweep() -> SweepFile {
        let xs = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0];
        let points = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let y = if x <= 400.0 {
                    1.0 + x / 400.0
                } else {
                    2.0 + (x - 400.0) / 10.0
                };
                let repeats: Vec<Repeat> = (0..2)
                    .map(|k| Repeat {
                        index: k,
                        dir: format!("points/{i}/r{k}"),
                        results: format!("points/{i}/r{k}/results.json"),
                        seed: k as u64,
                        run_id: format!("run{i}{k}"),
                        passed: true,
                        figures: BTreeMap::from([
                            ("setup_p50".to_string(), y + k as f64 * 0.1),
                            ("daemon_cpu".to_string(), 0.01 * x),
                        ]),
                    })
                    .collect();
                Point {
                    index: i,
                    dir: format!("points/{i}"),
                    overrides: vec![format!("population.0.count={x}")],
                    values: BTreeMap::from([("population.0.count".into(), x.to_string())]),
                    x: BTreeMap::from([("population.0.count".into(), Some(x))]),
                    complete: true,
                    figures: aggregate(&repeats),
                    repeats,
                }
            })
            .collect();
        SweepFile {
            version: SWEEP_VERSION,
            scenario_file: "s.toml".into(),
            scenario_name: "storm".into(),
            base_seed: 1,
            repeat: 2,
            fixed: vec![],
            vary: vec![VariedKey {
                key: "population.0.count".into(),
                values: xs.iter().map(|x| x.to_string()).collect(),
            }],
            points,
        }
    }

    #[test]
    fn aggregate_has_mean_spread_and_count() {
        let a = Aggregate::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((a.n, a.mean, a.min, a.max), (3, 2.0, 1.0, 3.0));
        assert!((a.stddev - 1.0).abs() < 1e-12);
        assert_eq!(Aggregate::of(&[5.0]).unwrap().stddev, 0.0);
        assert!(Aggregate::of(&[]).is_none());
    }

    #[test]
    fn layout_paths_follow_the_contract() {
        assert_eq!(repeat_dir(3, 1), Path::new("points/3/r1"));
        assert_eq!(partial_dir(3, 1), Path::new("points/3/r1.partial"));
    }

    #[test]
    fn saves_and_loads_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = knee_sweep();
        sweep.save(dir.path()).unwrap();
        assert_eq!(SweepFile::load(dir.path()).unwrap(), sweep);
        let mut newer = sweep.clone();
        newer.version = SWEEP_VERSION + 1;
        newer.save(dir.path()).unwrap();
        assert!(matches!(
            SweepFile::load(dir.path()),
            Err(SweepFileError::Version { .. })
        ));
    }

    #[test]
    fn a_run_gives_its_registered_figures() {
        let r = Results::new(crate::schema::RunInfo::default());
        let f = figure_values(&r);
        assert_eq!(f.get("clients"), Some(&0.0));
        assert!(!f.contains_key("setup_p50"), "nothing connected: {f:?}");
    }
}
