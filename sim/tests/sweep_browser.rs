//! End-to-end: a two-point parameter sweep with the real `jitwg` binary (root, wireguard-go,
//! jitwgd built next to it), resumed without rerunning anything, then a run's report.html and the
//! sweep's report.html loaded in headless Chromium (Debian's `chromium`), which must show no
//! console error and no chart drawn at zero size or without data. Bad `--vary` input is checked
//! without root. Without a prerequisite the root test skips loudly, except in CI (`CI` set, not
//! 0/false) where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{can_run_jitwg, JITWG};

fn write_scenario(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-sweep.toml");
    std::fs::write(
        &path,
        "name = \"tiny-sweep\"\nseed = 3\nduration = \"8s\"\n\
         [daemon]\nsweep_every = \"2s\"\n\
         [[population]]\nname = \"ci\"\ncount = 3\n\
         arrival = { kind = \"constant\", rate = 20.0 }\n\
         behaviour = { kind = \"connect_once\" }\n",
    )
    .unwrap();
    path
}

fn jitwg(args: &[&str]) -> Output {
    Command::new(JITWG)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn bad_vary_input_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path());
    let s = scenario.to_str().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();

    let unknown = jitwg(&["sweep", s, "--vary", "population.0.cuont=1,2", "--out", o]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("population.0.cuont") && err.contains("valid keys"),
        "{err}"
    );
    assert!(
        err.contains("population.0.count"),
        "lists the valid keys: {err}"
    );

    let bad = jitwg(&["sweep", s, "--vary", "duration=5s,later", "--out", o]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--vary duration") && err.contains("later"),
        "{err}"
    );
    assert!(!out.exists(), "nothing ran");
}

/// What the injected script found in a loaded page.
#[derive(Debug, serde::Deserialize)]
struct PageCheck {
    errors: Vec<String>,
    charts: Vec<ChartCheck>,
}

#[derive(Debug, serde::Deserialize)]
struct ChartCheck {
    title: String,
    width: f64,
    height: f64,
    /// A `<text>` saying only "no data" (the charts' own empty marker).
    no_data: bool,
    /// Drawn marks (lines, paths, circles, rectangles) besides the background.
    marks: usize,
    /// A sweep chart's `data-points`.
    points: Option<String>,
}

/// Runs before the page's own content: collects script and resource errors, and after load
/// measures every chart (`<figure>` with an `<svg>`) as laid out.
const PROBE: &str = r#"<script>
window.__errors = [];
window.addEventListener('error', e => {
  const t = e.target;
  window.__errors.push(e.message || ('failed to load ' + ((t && (t.src || t.href)) || 'a resource')));
}, true);
const realError = console.error;
console.error = (...a) => { window.__errors.push('console.error: ' + a.join(' ')); realError(...a); };
window.addEventListener('load', () => {
  const charts = [...document.querySelectorAll('figure')].map(f => {
    const svg = f.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : { width: 0, height: 0 };
    const texts = svg ? [...svg.querySelectorAll('text')].map(t => t.textContent.trim()) : [];
    return {
      title: (f.querySelector('figcaption') || { textContent: '?' }).textContent,
      width: box.width,
      height: box.height,
      no_data: texts.includes('no data'),
      marks: svg ? Math.max(0, svg.querySelectorAll('polyline, path, circle, rect, line').length - 1) : 0,
      points: f.dataset.points === undefined ? null : f.dataset.points,
    };
  });
  const pre = document.createElement('pre');
  pre.id = 'jitwg-check';
  pre.textContent = JSON.stringify({ errors: window.__errors, charts });
  document.body.appendChild(pre);
});
</script>"#;

/// Loads `html` in headless Chromium and returns what the probe saw, plus the console lines
/// Chromium logged.
fn load_in_chromium(chromium: &Path, html: &Path, scratch: &Path) -> (PageCheck, Vec<String>) {
    let text = std::fs::read_to_string(html).unwrap();
    let probed = text.replacen("<head>", &format!("<head>\n{PROBE}"), 1);
    assert_ne!(probed, text, "{} has no <head>", html.display());
    let page = scratch.join("probed.html");
    std::fs::write(&page, probed).unwrap();
    let started = Instant::now();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "chromium loaded {} in {:?}",
        html.display(),
        started.elapsed()
    );
    assert!(out.status.success(), "chromium failed: {out:?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom.find("<pre id=\"jitwg-check\">").expect("probe ran") + 22;
    let end = start + dom[start..].find("</pre>").expect("probe output ends");
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let check: PageCheck = serde_json::from_str(&json).unwrap();
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    (check, console)
}

fn assert_page_is_sound(chromium: &Path, html: &Path, scratch: &Path, sweep: bool) {
    let (check, console) = load_in_chromium(chromium, html, scratch);
    assert!(
        check.errors.is_empty(),
        "{}: {:?}",
        html.display(),
        check.errors
    );
    assert!(
        console.is_empty(),
        "{}: console: {console:?}",
        html.display()
    );
    assert!(!check.charts.is_empty(), "{}: no charts", html.display());
    for c in &check.charts {
        assert!(
            c.width > 0.0 && c.height > 0.0,
            "{}: chart {:?} drawn at {}x{}",
            html.display(),
            c.title,
            c.width,
            c.height
        );
        assert!(
            !c.no_data && c.marks > 0,
            "{}: chart {:?} has no data",
            html.display(),
            c.title
        );
        if sweep {
            let points: usize = c
                .points
                .as_deref()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            assert!(
                points > 0,
                "{}: sweep chart {:?} has no points",
                html.display(),
                c.title
            );
        }
    }
}

#[test]
fn a_sweep_runs_resumes_and_its_reports_render_in_chromium() {
    if !can_run_jitwg(&["chromium"]) {
        return;
    }
    let chromium = jitwg_testsupport::find_tool("chromium").expect("checked above");
    let dir = tempfile::tempdir().unwrap();
    let scenario = write_scenario(dir.path());
    let out = dir.path().join("sweep");
    let args = [
        "sweep",
        scenario.to_str().unwrap(),
        "--vary",
        "population.0.count=2,4",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    let first = jitwg(&args);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p["complete"], true, "{p}");
        assert!(out.join(format!("points/{i}/r0/results.json")).is_file());
        assert!(p["figures"]["connected"]["mean"].as_f64().is_some(), "{p}");
    }
    assert_eq!(points[1]["repeats"][0]["figures"]["clients"], 4.0);
    let run_ids: Vec<String> = points
        .iter()
        .map(|p| p["repeats"][0]["run_id"].as_str().unwrap().to_owned())
        .collect();

    // Resume: everything is finished, so nothing runs again.
    let started = Instant::now();
    let again = jitwg(&args);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reran: {:?}",
        started.elapsed()
    );
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    for (p, id) in resumed["points"].as_array().unwrap().iter().zip(&run_ids) {
        assert_eq!(p["repeats"][0]["run_id"].as_str(), Some(id.as_str()));
    }

    // Ctrl-C after the first run: exit 1, the finished run kept, the rest run on resume.
    let cut = dir.path().join("cut");
    let mut cut_args = args;
    cut_args[3] = "population.0.count=2,3,4";
    cut_args[5] = cut.to_str().unwrap();
    let mut child = Command::new(JITWG)
        .args(cut_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let first_done = cut.join("points/0/r0/results.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !first_done.is_file() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "interrupted sweep");
    let cut_sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(cut_sweep["points"][0]["complete"], true, "{cut_sweep}");
    assert_eq!(cut_sweep["points"][2]["complete"], false, "{cut_sweep}");
    let kept = cut_sweep["points"][0]["repeats"][0]["run_id"].clone();
    let resumed = jitwg(&cut_args);
    assert_eq!(resumed.status.code(), Some(0), "{resumed:?}");
    let done: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("sweep.json")).unwrap()).unwrap();
    assert!(
        done["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["complete"] == true),
        "{done}"
    );
    assert_eq!(done["points"][0]["repeats"][0]["run_id"], kept);

    let scratch = dir.path().join("chromium");
    std::fs::create_dir_all(&scratch).unwrap();
    assert_page_is_sound(
        &chromium,
        &out.join("points/1/r0/report.html"),
        &scratch,
        false,
    );
    assert_page_is_sound(&chromium, &out.join("report.html"), &scratch, true);
}

#[test]
fn the_browser_check_catches_errors_empty_and_zero_size_charts() {
    if !jitwg_testsupport::require(&jitwg_testsupport::missing_root_and_tools(&["chromium"])) {
        return;
    }
    let chromium = jitwg_testsupport::find_tool("chromium").expect("checked above");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("bad.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><head><title>t</title></head><body>\
         <figure><figcaption>empty</figcaption><svg width=\"900\" height=\"420\">\
         <rect width=\"900\" height=\"420\" fill=\"white\"/><text x=\"9\" y=\"9\">no data</text></svg></figure>\
         <figure><figcaption>flat</figcaption><svg width=\"0\" height=\"0\">\
         <rect width=\"9\" height=\"9\"/><polyline points=\"0,0 5,5\"/></svg></figure>\
         <img src=\"missing.png\"></body></html>",
    )
    .unwrap();
    let (check, _) = load_in_chromium(&chromium, &page, dir.path());
    assert_eq!(
        check.errors.len(),
        1,
        "the missing image: {:?}",
        check.errors
    );
    assert!(
        check.charts[0].no_data && check.charts[0].marks == 0,
        "{check:?}"
    );
    assert_eq!(check.charts[1].width, 0.0, "{check:?}");
}
