//! The layer applier on arbitrary bytes read as an uncompressed layer tar (entries, whiteouts,
//! hard and symbolic links, PAX records). Besides not panicking it checks the applier's promise:
//! nothing is created outside the destination.
//!
//! Run as root (the applier makes device nodes, chowns and sets trusted xattrs); with
//! TMPDIR=/dev/shm it runs faster.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One directory per fuzzing process; each input is applied to `<base>/layer/upper`.
fn base() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("berth-fuzz-apply-")
            .tempdir()
            .expect("fuzz base dir")
    })
    .path()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list fuzz dir")
        .map(|e| {
            e.expect("fuzz dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let layer = base().join("layer");
    let upper = layer.join("upper");
    std::fs::create_dir_all(&upper).expect("create upper dir");
    let _ = berth_snapshotter::apply_layer(data, &upper);
    assert_eq!(names(base()), ["layer"], "an entry escaped two levels up");
    assert_eq!(names(&layer), ["upper"], "an entry escaped the upper dir");
    std::fs::remove_dir_all(&layer).expect("remove upper dir");
});
