//! A berthd killed with SIGKILL in the middle of writing loses nothing it acknowledged and leaves no
//! half batch behind.
//!
//! The writer is this test binary run again (`crash_writer`), so the kill hits a real process with
//! RocksDB's threads, WAL and LOCK, exactly as a killed daemon would.

#![allow(clippy::unwrap_used, reason = "a panic is how a test reports failure")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use berth_store::{ContainerRecord, ImageRecord, SandboxRecord, Store, StoreError};

const DIR_VAR: &str = "BERTH_STORE_CRASH_WRITER_DIR";
const COUNTER: &str = "counter";
const SIGKILL: i32 = 9;

fn sandbox(i: u64) -> SandboxRecord {
    SandboxRecord {
        id: format!("s-{i:06}"),
        name: format!("pod-{i}"),
        attempt: i as u32,
        // Big enough that a batch spans several WAL blocks (32 KiB each) now and then.
        config: i.to_le_bytes().repeat(1024),
        ..Default::default()
    }
}

fn container(i: u64) -> ContainerRecord {
    ContainerRecord {
        id: format!("c-{i:06}"),
        sandbox_id: format!("s-{i:06}"),
        config: i.to_be_bytes().repeat(512),
        ..Default::default()
    }
}

fn counter(i: u64) -> ImageRecord {
    ImageRecord {
        id: COUNTER.to_string(),
        size: i,
        ..Default::default()
    }
}

/// The child: writes batch after batch, acknowledging each on stdout once `write` returned, until
/// it is killed. Ignored so that it only runs when the parent asks for it.
#[test]
#[ignore = "the writer process of sigkill_during_write_loop_*; does nothing by itself"]
fn crash_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).unwrap();
    let start = store
        .get::<ImageRecord>(COUNTER)
        .unwrap()
        .map_or(0, |c| c.size + 1);
    // Straight to fd 1: libtest's output capture only sees `print!`.
    let mut out = std::io::stdout().lock();
    // Bounded, so that an orphaned writer stops by itself.
    for i in start..start + 100_000 {
        let mut batch = store.batch();
        batch.put(&sandbox(i)).put(&container(i)).put(&counter(i));
        store.write(batch).unwrap();
        writeln!(out, "committed {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Kills the writer if the test fails before it does.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn acknowledged(line: &str) -> Option<u64> {
    // libtest's own output ("running 1 test") may share a line with ours.
    let (_, n) = line.split_once("committed ")?;
    Some(n.trim().parse().unwrap())
}

/// Runs one writer, kills it `delay` after its `kill_after`th acknowledgement, and returns the
/// highest acknowledged batch.
fn run_and_kill(dir: &Path, kill_after: u64, delay: Duration) -> u64 {
    let mut writer = Writer(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_writer",
                "--exact",
                "--ignored",
                "--quiet",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(writer.0.stdout.take().unwrap()).lines();

    let mut seen = 0;
    let mut highest = None;
    for line in lines.by_ref() {
        if let Some(i) = acknowledged(&line.unwrap()) {
            highest = Some(i);
            seen += 1;
            if seen == 1 {
                // Another process holds the LOCK now: a second berthd must be turned away.
                match Store::open(dir) {
                    Err(StoreError::Locked { path }) => assert_eq!(path, dir),
                    other => panic!("expected Locked while the writer runs, got {other:?}"),
                }
            }
            if seen == kill_after {
                break;
            }
        }
    }
    assert_eq!(
        seen, kill_after,
        "the writer stopped by itself after {seen} batches"
    );

    // Without a delay the kill lands as the next batch starts; with one, somewhere inside it.
    thread::sleep(delay);
    // std's `Child::kill` is SIGKILL on Unix: no handler runs, RocksDB gets no chance to flush.
    writer.0.kill().unwrap();
    let status = writer.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(SIGKILL),
        "the writer was not killed mid-loop: {status}"
    );
    // Acknowledgements already in the pipe when the kill landed count too.
    for line in lines {
        if let Some(i) = acknowledged(&line.unwrap()) {
            highest = Some(i);
        }
    }
    highest.unwrap()
}

/// Reopens the store after a kill and checks it holds exactly the batches 0..=n, whole, where n is
/// the last acknowledged batch or the one after it (written, but killed before acknowledging).
fn check_after_crash(dir: &Path, acknowledged: u64) {
    let store = Store::open(dir).unwrap();
    let n = store.get::<ImageRecord>(COUNTER).unwrap().unwrap().size;
    assert!(
        n == acknowledged || n == acknowledged + 1,
        "acknowledged up to batch {acknowledged}, store holds up to {n}"
    );

    let sandboxes = store.list::<SandboxRecord>().unwrap();
    let containers = store.list::<ContainerRecord>().unwrap();
    let batches = usize::try_from(n + 1).unwrap();
    assert_eq!(sandboxes.len(), batches, "sandboxes without their batch");
    assert_eq!(containers.len(), batches, "containers without their batch");
    for (i, (s, c)) in (0..=n).zip(sandboxes.iter().zip(&containers)) {
        assert_eq!(s, &sandbox(i), "batch {i}: sandbox missing or torn");
        assert_eq!(c, &container(i), "batch {i}: container missing or torn");
    }
}

#[test]
fn sigkill_during_write_loop_loses_no_acknowledged_batch_and_leaves_no_half_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    // Each round reopens what the previous kill left, so recovery is exercised on a recovered store.
    let rounds = [
        (150, 0),
        (97, 40),
        (211, 80),
        (60, 150),
        (120, 300),
        (80, 600),
        (140, 1000),
        (50, 2000),
    ];
    for (kill_after, delay_us) in rounds {
        let acknowledged = run_and_kill(&path, kill_after, Duration::from_micros(delay_us));
        check_after_crash(&path, acknowledged);
    }
}
