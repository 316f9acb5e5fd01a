//! Fuzzes jitwgd's config file resolution: any text must resolve or give an error that
//! names what is wrong, never panic.
#![no_main]

use std::path::Path;

use jitwgd::config::{resolve_text, Args};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = resolve_text(Args::default(), text, Path::new("fuzz.toml")) {
        assert!(!e.to_string().is_empty());
    }
});
