//! berthd's config loader: any file text parses or fails with an error, the result validates
//! or fails with an error, and what `berthd config show` prints parses back to the same config.

#![no_main]

use std::path::Path;

use berth_server::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(Path::new("fuzz.toml"), text) else {
        return;
    };
    let _ = config.validate();
    let shown = toml::to_string(&config).expect("a parsed config prints");
    let again = Config::parse(Path::new("shown.toml"), &shown)
        .unwrap_or_else(|e| panic!("printed config fails to parse: {e}\n{shown}"));
    assert_eq!(again, config, "printed config differs\n{shown}");
});
