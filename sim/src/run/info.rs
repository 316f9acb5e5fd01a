//! What a results file records about the machine and the software: enough to tell two runs'
//! environments apart when their figures differ.

use std::process::Command;

use jitwg_reports::ToolInfo;

/// Versions and machine facts for `RunInfo::tool`; anything unreadable is left empty.
pub fn tool_info(dataplane_program: Option<&str>) -> ToolInfo {
    ToolInfo {
        jitwg_version: env!("CARGO_PKG_VERSION").to_string(),
        wireguard_go_version: dataplane_program.and_then(wireguard_go_version),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(0),
        memory_bytes: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total(&m))
            .unwrap_or(0),
    }
}

fn wireguard_go_version(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// `MemTotal` in bytes from the text of /proc/meminfo.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let kb = l
            .strip_prefix("MemTotal:")?
            .trim()
            .strip_suffix("kB")?
            .trim();
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        assert_eq!(
            mem_total("MemTotal:       2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(mem_total("nothing"), None);
        let info = tool_info(None);
        assert!(!info.jitwg_version.is_empty() && info.cpus > 0);
    }
}
