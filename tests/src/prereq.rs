//! Prerequisites of the end-to-end tests. In CI (`CI` set to anything but empty, 0 or false) anything missing (root, a tool)
//! is an error; without it the test is skipped with a loud message. A missing daemon
//! binary is always an error: building it is part of running the tests.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// Tools every daemon end-to-end test needs.
pub const TOOLS: &[&str] = &["wireguard-go", "wg", "ping", "ip"];

/// `Ok(true)` when root and every tool in `tools` are available; `Ok(false)` (after a
/// loud message on stderr) when something is missing outside CI; `Err` in CI.
pub fn prerequisites_met(tools: &[&str]) -> Result<bool, HarnessError> {
    jitwg_testsupport::check(&jitwg_testsupport::missing_root_and_tools(tools))
        .map_err(|missing| HarnessError::MissingPrerequisite(missing.0))
}

/// The daemon binary: `$JITWGD_BIN`, else `<target>/debug/jitwgd` of this workspace.
pub fn daemon_binary() -> Result<PathBuf, HarnessError> {
    let path = match std::env::var_os("JITWGD_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug").join("jitwgd")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::DaemonBinaryMissing { path })
    }
}
