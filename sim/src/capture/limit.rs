//! `--capture-limit`: a packet count (`20000`) or a size (`50MB`, `1GiB`, `500kB`). Pure.

use std::fmt;

use thiserror::Error;

/// When the capture stops writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureLimit {
    Packets(u64),
    /// Bytes of packet data written (the pcapng's own framing is not counted).
    Bytes(u64),
}

impl CaptureLimit {
    /// The default: large enough for a smoke run's every packet and a storm's handshakes.
    pub const DEFAULT: CaptureLimit = CaptureLimit::Bytes(100_000_000);
}

impl CaptureLimit {
    /// The limit as `--capture-limit` takes it back (`20000`, `50000000B`).
    pub fn as_arg(&self) -> String {
        match self {
            CaptureLimit::Packets(n) => n.to_string(),
            CaptureLimit::Bytes(n) => format!("{n}B"),
        }
    }
}

impl Default for CaptureLimit {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for CaptureLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureLimit::Packets(n) => write!(f, "{n} packets"),
            CaptureLimit::Bytes(n) => write!(f, "{n} bytes"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{0}` is not a capture limit: give a packet count (20000) or a size (50MB, 1GiB, 500kB)")]
pub struct LimitParseError(pub String);

impl std::str::FromStr for CaptureLimit {
    type Err = LimitParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || LimitParseError(text.to_string());
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" => return (n > 0).then_some(CaptureLimit::Packets(n)).ok_or_else(bad),
            "b" => 1,
            "kb" => 1_000,
            "kib" => 1 << 10,
            "mb" => 1_000_000,
            "mib" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = n
            .checked_mul(multiplier)
            .filter(|b| *b > 0)
            .ok_or_else(bad)?;
        Ok(CaptureLimit::Bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sizes_parse() {
        assert_eq!("20000".parse(), Ok(CaptureLimit::Packets(20_000)));
        assert_eq!("50MB".parse(), Ok(CaptureLimit::Bytes(50_000_000)));
        assert_eq!("1GiB".parse(), Ok(CaptureLimit::Bytes(1 << 30)));
        assert_eq!(" 500 kB ".parse(), Ok(CaptureLimit::Bytes(500_000)));
        assert_eq!("7b".parse(), Ok(CaptureLimit::Bytes(7)));
    }

    #[test]
    fn nonsense_and_zero_are_refused() {
        for bad in [
            "",
            "MB",
            "0",
            "0MB",
            "-5",
            "5 parsecs",
            "1.5MB",
            "99999999999999GB",
        ] {
            assert!(bad.parse::<CaptureLimit>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn as_arg_parses_back() {
        for limit in [CaptureLimit::Packets(3), CaptureLimit::Bytes(50_000_000)] {
            assert_eq!(limit.as_arg().parse(), Ok(limit));
        }
    }

    #[test]
    fn display_names_the_unit() {
        assert_eq!(CaptureLimit::Packets(3).to_string(), "3 packets");
        assert_eq!(CaptureLimit::Bytes(3).to_string(), "3 bytes");
    }
}
