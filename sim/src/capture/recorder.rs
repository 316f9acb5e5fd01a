//! Writes captured packets into a pcapng (one raw-IP interface, nanosecond timestamps) and
//! stops at the limit. Generic over the writer, so it is tested in memory.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::limit::CaptureLimit;
use super::socket::SNAPLEN;
use super::CaptureError;

/// What a finished capture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CaptureSummary {
    pub packets: u64,
    /// Bytes of packet data written.
    pub bytes: u64,
    /// The limit was reached: later packets are not in the file.
    pub limit_reached: bool,
    /// Packets the kernel dropped before the capture could read them.
    pub kernel_drops: u64,
}

/// A pcapng being written.
pub struct Recorder<W: Write> {
    writer: PcapNgWriter<W>,
    path: PathBuf,
    limit: CaptureLimit,
    summary: CaptureSummary,
}

impl<W: Write> Recorder<W> {
    /// Writes the section and interface headers. `path` only names the file in errors.
    pub fn new(
        out: W,
        path: PathBuf,
        limit: CaptureLimit,
        interface_name: &str,
    ) -> Result<Self, CaptureError> {
        let fail = |source| CaptureError::Write {
            path: path.clone(),
            source,
        };
        let mut writer = PcapNgWriter::new(out).map_err(fail)?;
        let mut interface = InterfaceDescriptionBlock::new(DataLink::RAW, SNAPLEN);
        interface.options = vec![
            InterfaceDescriptionOption::IfName(interface_name.to_string().into()),
            // pcap-file writes nanoseconds; say so (the format's default is microseconds).
            InterfaceDescriptionOption::IfTsResol(9),
        ];
        writer.write_pcapng_block(interface).map_err(fail)?;
        Ok(Recorder {
            writer,
            path,
            limit,
            summary: CaptureSummary::default(),
        })
    }

    /// Whether the limit has been reached.
    pub fn full(&self) -> bool {
        self.summary.limit_reached
    }

    /// Writes one packet unless that would pass the limit (then marks the capture full, and
    /// nothing more is written: the file stays an unbroken prefix of the traffic).
    pub fn write(
        &mut self,
        timestamp: Duration,
        original_len: u32,
        data: &[u8],
    ) -> Result<(), CaptureError> {
        let fits = !self.summary.limit_reached
            && match self.limit {
                CaptureLimit::Packets(n) => self.summary.packets < n,
                CaptureLimit::Bytes(n) => self.summary.bytes + data.len() as u64 <= n,
            };
        if !fits {
            self.summary.limit_reached = true;
            return Ok(());
        }
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp,
            original_len,
            data: data.into(),
            options: vec![],
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(|source| CaptureError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.summary.packets += 1;
        self.summary.bytes += data.len() as u64;
        Ok(())
    }

    /// Flushes the file and returns the summary.
    pub fn finish(mut self, kernel_drops: u64) -> Result<CaptureSummary, CaptureError> {
        self.writer
            .get_mut()
            .flush()
            .map_err(|source| CaptureError::Write {
                path: self.path.clone(),
                source: pcap_file::PcapError::IoError(source),
            })?;
        self.summary.kernel_drops = kernel_drops;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::read_packets;
    use super::*;

    fn record(limit: CaptureLimit, packets: &[&[u8]]) -> (Vec<u8>, CaptureSummary) {
        let mut out = Vec::new();
        let mut r = Recorder::new(&mut out, "mem".into(), limit, "veth0").unwrap();
        for (i, p) in packets.iter().enumerate() {
            r.write(
                Duration::new(1_700_000_000, i as u32 * 1000),
                p.len() as u32,
                p,
            )
            .unwrap();
        }
        let summary = r.finish(0).unwrap();
        (out, summary)
    }

    #[test]
    fn packets_round_trip_with_nanosecond_timestamps() {
        let (bytes, summary) = record(CaptureLimit::Packets(10), &[b"abc", b"defgh"]);
        assert_eq!(
            (summary.packets, summary.bytes, summary.limit_reached),
            (2, 8, false)
        );
        let read = read_packets(&bytes[..]).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[1].data, b"defgh");
        assert_eq!(read[1].timestamp, Duration::new(1_700_000_000, 1000));
    }

    #[test]
    fn packet_limit_stops_writing() {
        let (bytes, summary) = record(CaptureLimit::Packets(1), &[b"abc", b"def", b"ghi"]);
        assert_eq!(summary.packets, 1);
        assert!(summary.limit_reached);
        assert_eq!(read_packets(&bytes[..]).unwrap().len(), 1);
    }

    #[test]
    fn byte_limit_stops_before_passing_it() {
        let (_, summary) = record(CaptureLimit::Bytes(7), &[b"abc", b"def", b"ghij", b"k"]);
        assert_eq!((summary.packets, summary.bytes), (2, 6));
        assert!(summary.limit_reached);
    }
}
