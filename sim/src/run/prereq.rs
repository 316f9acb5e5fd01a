//! What a run needs from the machine before it touches anything: root, the data-plane and NATS
//! binaries, kernel WireGuard when asked for, and the `jitwgd` binary. Each missing piece is a
//! setup failure that says how to fix it.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Environment variable naming the `jitwgd` binary explicitly.
pub const JITWGD_BIN_ENV: &str = "JITWGD_BIN";

/// A prerequisite the machine lacks.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("jitwg must run as root (it creates network namespaces); try sudo")]
    NotRoot,
    #[error("`{binary}` not found on PATH: {hint}")]
    MissingBinary {
        binary: &'static str,
        hint: &'static str,
    },
    #[error("the kernel has no WireGuard module (/sys/module/wireguard is missing): use backend = \"userspace\"")]
    NoKernelWireGuard,
    #[error("jitwgd binary not found (looked at {}); build it with `cargo build -p jitwgd` or set {JITWGD_BIN_ENV}", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NoJitwgd { looked: Vec<PathBuf> },
}

/// Fails unless the effective user is root.
pub fn require_root() -> Result<(), SetupError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(SetupError::NotRoot)
    }
}

/// Finds `binary` in the directories of `path_var` (a `PATH` value).
pub fn find_in_path(binary: &str, path_var: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails unless `binary` is on the process's `PATH`.
pub fn require_binary(binary: &'static str, hint: &'static str) -> Result<PathBuf, SetupError> {
    let path = std::env::var("PATH").unwrap_or_default();
    find_in_path(binary, &path).ok_or(SetupError::MissingBinary { binary, hint })
}

/// Fails unless the kernel WireGuard module is loaded or built in.
pub fn require_kernel_wireguard() -> Result<(), SetupError> {
    if Path::new("/sys/module/wireguard").exists() {
        Ok(())
    } else {
        Err(SetupError::NoKernelWireGuard)
    }
}

/// Where `jitwgd` may be, in order: `$JITWGD_BIN`, then next to the running executable (the same
/// cargo target directory), then one directory up (test binaries live in `target/debug/deps`).
pub fn jitwgd_candidates(
    env_override: Option<PathBuf>,
    current_exe: Option<&Path>,
) -> Vec<PathBuf> {
    if let Some(p) = env_override {
        return vec![p];
    }
    let mut out = Vec::new();
    if let Some(dir) = current_exe.and_then(Path::parent) {
        out.push(dir.join("jitwgd"));
        if let Some(up) = dir.parent() {
            out.push(up.join("jitwgd"));
        }
    }
    out
}

/// Locates the `jitwgd` binary (see [`jitwgd_candidates`]).
pub fn locate_jitwgd() -> Result<PathBuf, SetupError> {
    let env_override = std::env::var_os(JITWGD_BIN_ENV).map(PathBuf::from);
    let exe = std::env::current_exe().ok();
    let looked = jitwgd_candidates(env_override, exe.as_deref());
    looked
        .iter()
        .find(|p| is_executable(p))
        .cloned()
        .ok_or(SetupError::NoJitwgd { looked })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitwgd_is_looked_for_next_to_the_driver_unless_overridden() {
        let exe = Path::new("/x/target/debug/deps/run_smoke-123");
        assert_eq!(
            jitwgd_candidates(None, Some(exe)),
            vec![
                PathBuf::from("/x/target/debug/deps/jitwgd"),
                PathBuf::from("/x/target/debug/jitwgd")
            ]
        );
        assert_eq!(
            jitwgd_candidates(Some("/opt/jitwgd".into()), Some(exe)),
            vec![PathBuf::from("/opt/jitwgd")]
        );
    }

    #[test]
    fn finds_binaries_on_a_path_value() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(find_in_path("tool", &path), None, "not executable yet");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_in_path("tool", &path), Some(bin));
        assert_eq!(find_in_path("other", &path), None);
    }

    #[test]
    fn missing_jitwgd_names_every_place_looked() {
        let msg = SetupError::NoJitwgd {
            looked: vec!["/a/jitwgd".into(), "/b/jitwgd".into()],
        }
        .to_string();
        assert!(
            msg.contains("/a/jitwgd, /b/jitwgd") && msg.contains(JITWGD_BIN_ENV),
            "{msg}"
        );
    }
}
