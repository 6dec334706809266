//! critest (the CRI validation suite) against berthd, with every image it pulls served by a
//! local registry mirroring `registry.k8s.io` and `gcr.io`. Long (tens of minutes) and not
//! expected to pass yet, so it is ignored by default:
//!
//! ```text
//! BERTHD_BIN=/path/to/berthd cargo test -p berth-e2e --test critest -- --ignored --nocapture
//! ```
//!
//! It asserts only that critest ran to its summary; the counts are printed. `CRITEST_FOCUS` and
//! `CRITEST_SKIP` pass through as ginkgo focus/skip regular expressions. critest's full output
//! is kept in a log file whose path is printed first.
//!
//! critest's mount-propagation specs bind-mount directories under `$TMPDIR/test<pod id>...` on
//! the host and leave them mounted when a spec fails; afterwards the run unmounts and removes
//! those of its own pods (pod ids found in this berthd's log).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::push_critest_images;
use berth_e2e::tools::{self, parse_ginkgo_summary};
use nix::mount::{MntFlags, umount2};

/// ginkgo's own limit; the outer one only guards against a hung critest.
const GINKGO_TIMEOUT: &str = "30m";
const OUTER_TIMEOUT: Duration = Duration::from_secs(40 * 60);

#[test]
#[ignore = "runs the full CRI validation suite (tens of minutes); run with --ignored"]
fn critest_against_berthd() -> Result<()> {
    let critest = tools::critest()?;
    berthd_binary()?;
    let registry = Registry::start()?;
    let pushed = push_critest_images(&registry)?;
    for known in pushed
        .iter()
        .filter_map(|p| p.known_issue.map(|issue| (p.upstream_reference(), issue)))
    {
        println!("known issue with {}: {}", known.0, known.1);
    }
    // A bridge network of the run's own (Debian's bridge, host-local, portmap): critest's pods
    // need addresses, and the harness keeps their traffic on this machine.
    let pid = std::process::id();
    let berthd = Berthd::start(
        BerthdOptions::default()
            .mirror_critest_registries(&registry)
            .bridge_network(
                &format!("bcrit{}", pid % 100_000),
                &format!("10.217.{}.0/24", pid % 250),
            ),
    )?;

    let log_path = std::env::temp_dir().join(format!("berth-critest-{}.log", std::process::id()));
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    println!("critest output: {}", log_path.display());

    let endpoint = berthd.endpoint();
    let mut cmd = Command::new(&critest);
    cmd.arg(format!("-runtime-endpoint={endpoint}"))
        .arg(format!("-image-endpoint={endpoint}"))
        // Its own client config, so /etc/crictl.yaml on the host cannot redirect critest.
        .arg(format!(
            "-config={}",
            berthd.paths().crictl_config.display()
        ))
        .arg(format!("-ginkgo.timeout={GINKGO_TIMEOUT}"))
        .arg("-ginkgo.no-color");
    if let Ok(focus) = std::env::var("CRITEST_FOCUS") {
        cmd.arg(format!("-ginkgo.focus={focus}"));
    }
    if let Ok(skip) = std::env::var("CRITEST_SKIP") {
        cmd.arg(format!("-ginkgo.skip={skip}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", critest.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > OUTER_TIMEOUT {
            // Our own child, by PID: Child::kill sends SIGKILL to exactly this process.
            child.kill()?;
            child.wait()?;
            clean_propagation_leftovers(
                &std::fs::read_to_string(&berthd.paths().log).unwrap_or_default(),
            );
            bail!(
                "critest still running after {OUTER_TIMEOUT:?}; output in {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };

    clean_propagation_leftovers(&std::fs::read_to_string(&berthd.paths().log).unwrap_or_default());

    let output = std::fs::read_to_string(&log_path)?;
    for line in output
        .lines()
        .filter(|l| l.contains("[FAIL]") || l.contains("[PANICKED]"))
    {
        println!("{line}");
    }
    println!("critest exited {status} after {:?}", started.elapsed());
    match parse_ginkgo_summary(&output) {
        Some(summary) => {
            println!("critest summary: {summary}");
            Ok(())
        }
        None => bail!(
            "critest produced no summary ({status}); output in {}; berthd log tail:\n{}",
            log_path.display(),
            berthd.log_tail()
        ),
    }
}

/// The pod id in a critest host-path directory name: `test<64 hex pod id><random digits>`.
fn pod_id_of(name: &str) -> Option<&str> {
    let id = name.strip_prefix("test")?.get(..64)?;
    id.chars().all(|c| c.is_ascii_hexdigit()).then_some(id)
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

/// Unmounts and removes the host-path directories critest made for this run's pods.
fn clean_propagation_leftovers(berthd_log: &str) {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = pod_id_of(&name) else {
            continue;
        };
        if !berthd_log.contains(id) {
            continue;
        }
        let dir = entry.path();
        for _ in 0..4 {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mounts = mounts_under(&info, &dir);
            if mounts.is_empty() {
                break;
            }
            for m in mounts {
                if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
                    eprintln!("critest leftover: umount {}: {e}", m.display());
                }
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => println!("removed critest leftover {}", dir.display()),
            Err(e) => eprintln!("critest leftover {}: {e}", dir.display()),
        }
    }
}

#[test]
fn critest_leftovers_are_recognised_by_pod_id_and_unmounted_deepest_first() {
    let id = "3e96a40520f96d27c3abb33de414c4fca5c951d30e19dd5e0503e225d07e9c32";
    assert_eq!(pod_id_of(&format!("test{id}3553861859")), Some(id));
    assert_eq!(pod_id_of("testing"), None);
    assert_eq!(pod_id_of(&format!("podLogTest{id}")), None);
    let info = format!(
        "47 27 254:0 /x /tmp/test{id}1/mnt rw - ext4 /dev/vda rw\n\
         48 47 254:0 /y /tmp/test{id}1/mnt/propagationMnt rw - ext4 /dev/vda rw\n\
         49 27 254:0 /z /tmp/other rw - ext4 /dev/vda rw\n"
    );
    let dir = PathBuf::from(format!("/tmp/test{id}1"));
    assert_eq!(
        mounts_under(&info, &dir),
        vec![dir.join("mnt/propagationMnt"), dir.join("mnt")]
    );
}
