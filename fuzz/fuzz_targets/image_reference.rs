//! The image reference parser: no panic on any string, and normalising is idempotent (what
//! berthd records as a repo tag or digest parses back to the same reference).

#![no_main]

use berth_server::images::reference::{ImageRef, as_image_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = as_image_id(text);
    let Ok(parsed) = ImageRef::parse(text) else {
        return;
    };
    let shown = parsed.to_string();
    let again = ImageRef::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} normalised to {shown:?}, which fails: {e}"));
    assert_eq!(again, parsed, "{text:?} normalised to {shown:?}");
    if let Some(tagged) = parsed.tagged() {
        assert!(ImageRef::parse(&tagged).is_ok(), "{tagged:?}");
    }
});
