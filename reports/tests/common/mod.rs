//! Fixtures shared by the integration tests: the checked-in results files under
//! `tests/data/`.

use std::path::PathBuf;

use jitwg_reports::{load, Results};

/// Path of a checked-in fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The fixed-content results file every rendering and comparison test starts from.
pub fn fixed() -> Results {
    load(fixture("fixed-results.json")).unwrap()
}
