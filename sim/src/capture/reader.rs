//! Reads a pcapng back (for `jitwg timeline`): every enhanced packet with its timestamp,
//! interpreted with its interface's timestamp resolution.

use std::io::Read;
use std::time::Duration;

use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};

/// One packet from a capture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePacket {
    /// Since the Unix epoch.
    pub timestamp: Duration,
    pub data: Vec<u8>,
}

/// Every packet of a pcapng stream, in file order.
pub fn read_packets(input: impl Read) -> Result<Vec<FilePacket>, pcap_file::PcapError> {
    let mut reader = PcapNgReader::new(input)?;
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        // Owned, so the reader can be asked about the packet's interface.
        let Block::EnhancedPacket(packet) = block?.into_owned() else {
            continue;
        };
        // pcap-file reads the raw counter as nanoseconds; rescale for other resolutions.
        let resolution = reader
            .packet_interface(&packet)
            .and_then(|i| {
                i.options.iter().find_map(|o| match o {
                    InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                    _ => None,
                })
            })
            .unwrap_or(6);
        let ticks = packet.timestamp.as_nanos();
        let timestamp = match resolution {
            r if r & 0x80 == 0 && r <= 9 => {
                let per_second = 10u128.pow(u32::from(r));
                let nanos = ticks * 1_000_000_000 / per_second;
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
            _ => packet.timestamp,
        };
        out.push(FilePacket {
            timestamp,
            data: packet.data.into_owned(),
        });
    }
    Ok(out)
}
