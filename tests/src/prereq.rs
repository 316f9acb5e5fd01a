//! Prerequisites of the end-to-end tests. With `CI=true` anything missing (root, a tool)
//! is an error; without it the test is skipped with a loud message. A missing daemon
//! binary is always an error: building it is part of running the tests.

use std::path::{Path, PathBuf};

use crate::HarnessError;

/// Tools every daemon end-to-end test needs.
pub const TOOLS: &[&str] = &["wireguard-go", "wg", "ping", "ip"];

/// `Ok(true)` when root and every tool in `tools` are available; `Ok(false)` (after a
/// loud message on stderr) when something is missing outside CI; `Err` in CI.
pub fn prerequisites_met(tools: &[&str]) -> Result<bool, HarnessError> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (these tests create network namespaces)".to_string());
    }
    for tool in tools {
        if find_in_path(tool).is_none() {
            missing.push(format!("`{tool}` in PATH (run ci/install-deps.sh)"));
        }
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let msg = missing.join(", ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(HarnessError::MissingPrerequisite(msg));
    }
    eprintln!(
        "!!!!!! SKIPPING end-to-end test: missing {msg} (set CI=true to make this a failure)"
    );
    Ok(false)
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

fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}
