//! What the end-to-end tests that run the real `jitwg` binary share: where `jitwg` and `jitwgd`
//! are, and the one check that such a run can happen here (skipping loudly outside CI, failing
//! in CI, through `jitwg_testsupport`).

use std::path::{Path, PathBuf};

/// The `jitwg` binary cargo built for these tests.
pub const JITWG: &str = env!("CARGO_BIN_EXE_jitwg");

/// The `jitwgd` the driver starts: `JITWGD_BIN`, else the one built next to `jitwg`.
pub fn jitwgd_path() -> PathBuf {
    std::env::var_os("JITWGD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(JITWG).with_file_name("jitwgd"))
}

/// True when `jitwg` can run a scenario here: root, wireguard-go, `tools` and a built jitwgd;
/// false (skip) outside CI; panics in CI.
pub fn can_run_jitwg(tools: &[&str]) -> bool {
    let tools: Vec<&str> = std::iter::once("wireguard-go")
        .chain(tools.iter().copied())
        .collect();
    let mut missing = jitwg_testsupport::missing_root_and_tools(&tools);
    if !jitwgd_path().is_file() {
        missing.push(format!(
            "{} (cargo build -p jitwgd)",
            jitwgd_path().display()
        ));
    }
    jitwg_testsupport::require(&missing)
}
