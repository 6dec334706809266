//! The CRI container log writer.
//!
//! A container's stdout and stderr are pipes read by the shim; every line becomes one record in
//! the CRI log file, the format kubelet reads:
//!
//! ```text
//! <RFC3339Nano timestamp, UTC> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! `F` marks the last piece of a line, `P` a partial piece: a line longer than [`MAX_LINE`] bytes
//! is split into `P` pieces of that size followed by an `F` piece, and output that ends without a
//! newline is written as a `P` record. The file is opened in append mode and every record is
//! written with a single `write`, so stdout and stderr interleave at record granularity.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Longest content of one record; longer lines are split (containerd's CRI plugin uses the same).
pub const MAX_LINE: usize = 16 * 1024;

/// Which container stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits a byte stream into log record contents: `(content, full)` pairs.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes, calling `emit` for every complete line and every `max`-sized partial piece.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            if self.pending.len() == self.max {
                // A full piece waits for the next byte: a newline right after it ends the line (F).
                let full = data[0] == b'\n';
                emit(&self.pending, full);
                self.pending.clear();
                if full {
                    data = &data[1..];
                }
                continue;
            }
            let room = self.max - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                emit(&self.pending, true);
                self.pending.clear();
                data = &data[nl + 1..];
            } else {
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
            }
        }
    }

    /// Flushes output left without a trailing newline at end of stream, as a partial record.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            emit(&self.pending, false);
            self.pending.clear();
        }
    }
}

/// One CRI log record, newline included.
pub fn format_record(at: SystemTime, stream: Stream, full: bool, content: &[u8]) -> Vec<u8> {
    let ts = rfc3339_nano(at);
    let mut rec = Vec::with_capacity(ts.len() + content.len() + 12);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.extend_from_slice(if full { b" F " } else { b" P " });
    rec.extend_from_slice(content);
    rec.push(b'\n');
    rec
}

/// Formats a time like Go's `time.RFC3339Nano` in UTC: trailing zeros of the fraction dropped.
pub fn rfc3339_nano(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    let mut s = format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d is in 1..=31 and m in 1..=12 by construction.
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// A CRI log file shared by a container's stdout and stderr copiers; reopenable after rotation.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Arc<LogFile>> {
        let file = open_append(path)?;
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (creating it): kubelet renamed the old file when rotating.
    pub fn reopen(&self) -> io::Result<()> {
        let file = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        Ok(())
    }

    fn write_record(&self, rec: &[u8]) -> io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(rec)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Copies one container stream into its log file until end of stream.
pub async fn copy_to_log(mut reader: pipe::Receiver, stream: Stream, log: Arc<LogFile>) {
    let mut splitter = LineSplitter::new(MAX_LINE);
    let mut buf = vec![0u8; 32 * 1024];
    let mut emit = |content: &[u8], full: bool| {
        let rec = format_record(SystemTime::now(), stream, full, content);
        if let Err(e) = log.write_record(&rec) {
            tracing::warn!(path = %log.path().display(), error = %e, "writing container log");
        }
    };
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => splitter.push(&buf[..n], &mut emit),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(path = %log.path().display(), error = %e, "reading container stream");
                break;
            }
        }
    }
    splitter.finish(&mut emit);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        let mut emit =
            |c: &[u8], full: bool| out.push((String::from_utf8_lossy(c).into_owned(), full));
        for c in chunks {
            s.push(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    fn owned(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, f)| (s.to_string(), *f)).collect()
    }

    #[test]
    fn full_lines_are_split_on_newline() {
        assert_eq!(
            split(100, &[b"one\ntwo\n"]),
            owned(&[("one", true), ("two", true)])
        );
    }

    #[test]
    fn lines_spanning_reads_are_joined() {
        assert_eq!(
            split(100, &[b"o", b"ne\ntw", b"o\n"]),
            owned(&[("one", true), ("two", true)])
        );
    }

    #[test]
    fn empty_line_is_a_full_empty_record() {
        assert_eq!(split(100, &[b"\n"]), owned(&[("", true)]));
    }

    #[test]
    fn output_without_trailing_newline_is_partial_at_eof() {
        assert_eq!(
            split(100, &[b"done\nno newline"]),
            owned(&[("done", true), ("no newline", false)])
        );
    }

    #[test]
    fn long_line_is_split_into_partial_pieces_ending_full() {
        assert_eq!(
            split(4, &[b"abcdefghij\n"]),
            owned(&[("abcd", false), ("efgh", false), ("ij", true)])
        );
    }

    #[test]
    fn line_of_exactly_max_bytes_is_one_full_record() {
        assert_eq!(
            split(4, &[b"abcd", b"\nx\n"]),
            owned(&[("abcd", true), ("x", true)])
        );
    }

    #[test]
    fn sixteen_kib_split_uses_max_line() {
        let line = vec![b'a'; MAX_LINE * 2 + 5];
        let mut data = line.clone();
        data.push(b'\n');
        let got = split(MAX_LINE, &[&data]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0.len(), MAX_LINE);
        assert!(!got[0].1 && !got[1].1 && got[2].1);
        assert_eq!(got[2].0.len(), 5);
    }

    #[test]
    fn timestamp_is_rfc3339_nano_utc() {
        let t = UNIX_EPOCH + Duration::new(1_764_365_730, 123_456_000);
        assert_eq!(rfc3339_nano(t), "2025-11-28T21:35:30.123456Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // Leap day.
        let t = UNIX_EPOCH + Duration::new(951_782_400, 1);
        assert_eq!(rfc3339_nano(t), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn record_format_matches_cri() {
        let t = UNIX_EPOCH + Duration::new(0, 500_000_000);
        assert_eq!(
            format_record(t, Stream::Stdout, true, b"hi"),
            b"1970-01-01T00:00:00.5Z stdout F hi\n"
        );
        assert_eq!(
            format_record(t, Stream::Stderr, false, b"x"),
            b"1970-01-01T00:00:00.5Z stderr P x\n"
        );
    }

    #[test]
    fn reopen_writes_to_the_new_file_after_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        log.write_record(b"a\n").unwrap();
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        log.reopen().unwrap();
        log.write_record(b"b\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"b\n");
        assert_eq!(std::fs::read(dir.path().join("c.log.1")).unwrap(), b"a\n");
    }
}
