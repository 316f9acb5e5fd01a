//! Fuzzes what jitwgd does with a control-plane answer: the JSON peer document is parsed
//! and validated, and whatever validation accepts must only route addresses inside the
//! tunnel prefix, no wider than the policy allows, and carry the requested key.
#![no_main]

use ipnet::IpNet;
use jitwgd::peer::{AddressPolicy, PeerDocument, PublicKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the policy: host routes only (the default), or widened to /24 and
    // /64 (`--allowed-ip-min-len-v4/-v6`).
    let Some((&choice, json)) = data.split_first() else {
        return;
    };
    let Ok(doc) = serde_json::from_slice::<PeerDocument>(json) else {
        return;
    };
    let prefix: IpNet = "100.64.0.0/10".parse().expect("literal prefix");
    let policy = if choice & 1 == 0 {
        AddressPolicy::host_routes(prefix)
    } else {
        AddressPolicy {
            min_len_v4: 24,
            min_len_v6: 64,
            ..AddressPolicy::host_routes(prefix)
        }
    };
    if let Ok(config) = doc.validate(None, &policy) {
        assert!(!config.allowed_ips.is_empty());
        for ip in &config.allowed_ips {
            assert!(prefix.contains(ip), "{ip} outside {prefix}");
            let min = match ip {
                IpNet::V4(_) => policy.min_len_v4,
                IpNet::V6(_) => policy.min_len_v6,
            };
            assert!(ip.prefix_len() >= min, "{ip} wider than /{min}");
        }
        // Asking for exactly the returned key passes; asking for another key never does.
        assert!(doc.validate(Some(config.public_key), &policy).is_ok());
        let mut other = config.public_key.0;
        other[0] ^= 1;
        assert!(doc.validate(Some(PublicKey(other)), &policy).is_err());
    }
});
