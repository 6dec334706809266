//! The shim's CRI log line splitting: however the container's output arrives in reads, the
//! records hold exactly that output, one line per record, none longer than the limit.

#![no_main]

use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

// The shim is a binary only: its log module is compiled in here as it is in the shim.
#[path = "../../shim/src/logs.rs"]
#[allow(dead_code)]
mod logs;

use logs::{LineSplitter, Stream, format_record};

/// The `(content, full)` pieces of `data` fed in reads of `chunk` bytes.
fn split(data: &[u8], max: usize, chunk: usize) -> Vec<(Vec<u8>, bool)> {
    let mut pieces = Vec::new();
    let mut emit = |content: &[u8], full: bool| pieces.push((content.to_vec(), full));
    let mut splitter = LineSplitter::new(max);
    for read in data.chunks(chunk) {
        splitter.push(read, &mut emit);
    }
    splitter.finish(&mut emit);
    pieces
}

fuzz_target!(|input: &[u8]| {
    let [max, chunk, data @ ..] = input else {
        return;
    };
    let max = usize::from(*max % 64) + 1;
    let chunk = usize::from(*chunk % 32) + 1;
    let pieces = split(data, max, chunk);
    assert_eq!(
        pieces,
        split(data, max, data.len().max(1)),
        "reads change records"
    );

    let mut rebuilt = Vec::new();
    for (i, (content, full)) in pieces.iter().enumerate() {
        assert!(content.len() <= max, "record longer than {max}");
        assert!(!content.contains(&b'\n'), "newline inside a record");
        if !full {
            let last = i + 1 == pieces.len();
            assert!(
                content.len() == max || last,
                "short partial record mid-stream"
            );
            assert!(!content.is_empty(), "empty partial record");
        }
        rebuilt.extend_from_slice(content);
        if *full {
            rebuilt.push(b'\n');
        }
        let record = format_record(SystemTime::UNIX_EPOCH, Stream::Stdout, *full, content);
        assert_eq!(record.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(record.ends_with(b"\n"));
    }
    assert_eq!(rebuilt, data, "records lose or add output");
});
