//! Fuzzes what jitwgd does with a control-plane answer: the JSON peer document is parsed
//! and validated, and whatever validation accepts must only route addresses inside the
//! tunnel prefix and carry the requested key.
#![no_main]

use ipnet::IpNet;
use jitwgd::peer::{PeerDocument, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<PeerDocument>(data) else {
        return;
    };
    let prefix: IpNet = "100.64.0.0/10".parse().expect("literal prefix");
    if let Ok(config) = doc.validate(None, prefix) {
        assert!(!config.allowed_ips.is_empty());
        assert!(config.allowed_ips.iter().all(|ip| prefix.contains(ip)));
        // Asking for exactly the returned key passes; asking for another key never does.
        assert!(doc.validate(Some(config.public_key), prefix).is_ok());
        let mut other = config.public_key.0;
        other[0] ^= 1;
        assert!(doc.validate(Some(PublicKey(other)), prefix).is_err());
    }
});
