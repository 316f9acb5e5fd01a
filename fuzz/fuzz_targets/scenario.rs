//! Fuzzes scenario files: any text must resolve into a scenario or be refused with an error,
//! never panic, hang or allocate without bound (client counts and durations are validated
//! before anything is expanded).
#![no_main]

use std::path::Path;

use jitwg::scenario::{parse, Adjustments};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse(Path::new("fuzz.toml"), text, &Adjustments::default()) {
        assert!(!e.to_string().is_empty());
    }
});
