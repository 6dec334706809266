//! CNI network configuration files (`.conflist` and single-plugin `.conf`) and what berthd makes
//! of a plugin's output (its result's addresses, its error message, a cached result).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for name in ["fuzz.conflist", "fuzz.conf"] {
        if let Ok(list) = berth_netplugin::conf::parse_file(Path::new(name), data) {
            assert!(!list.name.is_empty());
            assert_eq!(list.plugin_types.len(), list.plugins.len());
            assert!(list.plugin_types.iter().all(|t| !t.is_empty()));
        }
    }
    berth_netplugin::cni::fuzzing::plugin_output(data);
});
