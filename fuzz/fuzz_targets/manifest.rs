//! Manifests, indexes and image configs as a registry serves them, and picking this node's
//! platform out of an index.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    berth_server::images::fuzzing::manifest_and_config(data);
});
