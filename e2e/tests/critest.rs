//! critest (the CRI validation suite) against berthd, at the pinned cri-tools version and at the
//! newest one the Go module proxy serves (both in `hack/versions.env`), with every image it
//! pulls served by a local registry mirroring `registry.k8s.io` and `gcr.io`. About a minute per
//! version; the two runs take turns, each with a berthd of its own.
//!
//! `e2e/critest-skips.txt` lists every spec that does not run, each with its reason: those
//! the run skips (they would fail here), and those critest skips itself after asking berth or
//! the host. Any failure, and any skip the file does not list, fails the test. `CRITEST_FOCUS` and `CRITEST_SKIP` pass
//! through as extra ginkgo focus/skip regular expressions. critest's full output is kept in a
//! log file whose path is printed first.
//!
//! critest's mount-propagation specs bind-mount directories under `$TMPDIR/test<pod id>...` on
//! the host and leave them mounted when a spec fails; afterwards the run unmounts and removes
//! those of its own pods (pod ids found in this berthd's log).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::push_critest_images;
use berth_e2e::tools::{self, parse_ginkgo_summary};
use nix::mount::{MntFlags, umount2};

/// ginkgo's own limit; the outer one only guards against a hung critest.
const GINKGO_TIMEOUT: &str = "20m";
const OUTER_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// The specs critest may not run here, each with its reason.
const SKIPS: &str = include_str!("../critest-skips.txt");

/// One critest run at a time: on two cores two suites at once would time specs out.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn critest_at_the_pinned_version_passes_all_but_the_listed_skips() -> Result<()> {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    critest_against_berthd(&tools::critest()?, &tools::cri_tools_version()?)
}

#[test]
fn critest_at_the_newest_version_passes_all_but_the_listed_skips() -> Result<()> {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let version = tools::cri_tools_newest_version()?;
    critest_against_berthd(&tools::critest_at(&version)?, &version)
}

/// Who skips a spec listed in `critest-skips.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SkipKind {
    /// `skip`: the run passes it to ginkgo's skip, since it would fail here.
    Ours,
    /// `self`: critest skips it itself, from berth's answers or the host (a feature berth
    /// reports absent, no AppArmor); listed so that every skip has a reason on record.
    Critest,
}

/// An entry of `critest-skips.txt`: `KIND | [VERSION] SPEC TEXT | REASON`, the version optional.
#[derive(Debug, PartialEq, Eq)]
struct Skip<'a> {
    kind: SkipKind,
    version: Option<&'a str>,
    spec: &'a str,
    reason: &'a str,
}

impl Skip<'_> {
    fn applies_to(&self, version: &str) -> bool {
        self.version.is_none_or(|v| v == version)
    }
}

fn parse_skips(text: &str) -> Result<Vec<Skip<'_>>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [kind, head, reason] = fields.as_slice() else {
            bail!("critest-skips.txt:{}: not KIND | SPEC | REASON", n + 1);
        };
        let kind = match *kind {
            "skip" => SkipKind::Ours,
            "self" => SkipKind::Critest,
            other => bail!(
                "critest-skips.txt:{}: kind {other:?} is not skip or self",
                n + 1
            ),
        };
        let (version, spec) = match head.strip_prefix('[').and_then(|h| h.split_once(']')) {
            Some((v, spec)) => (Some(v.trim()), spec.trim()),
            None => (None, *head),
        };
        ensure!(
            !spec.is_empty() && !reason.is_empty(),
            "critest-skips.txt:{}: an entry needs a spec and a reason",
            n + 1
        );
        out.push(Skip {
            kind,
            version,
            spec,
            reason,
        });
    }
    Ok(out)
}

/// ginkgo's skip expression for `version`: the texts of the specs we skip, matched literally.
fn skip_regex(skips: &[Skip<'_>], version: &str) -> Option<String> {
    let parts: Vec<String> = skips
        .iter()
        .filter(|s| s.kind == SkipKind::Ours && s.applies_to(version))
        .map(|s| regex_escape(s.spec))
        .collect();
    (!parts.is_empty()).then(|| parts.join("|"))
}

/// The specs critest skipped itself in a verbose run: each `S [SKIPPED]` line is followed by
/// the spec's text, with ginkgo's node markers (` [It]`, ` [BeforeEach]`) inside it.
fn skipped_by_critest(output: &str) -> Vec<String> {
    let lines: Vec<&str> = output.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0].starts_with("S [SKIPPED]"))
        .map(|w| {
            [" [It]", " [BeforeEach]", " [JustBeforeEach]"]
                .iter()
                .fold(w[1].trim().to_string(), |t, marker| t.replace(marker, ""))
        })
        .collect()
}

/// Specs critest skipped that no `self` entry for `version` accounts for.
fn unlisted<'s>(skipped: &'s [String], skips: &[Skip<'_>], version: &str) -> Vec<&'s str> {
    skipped
        .iter()
        .filter(|spec| {
            !skips.iter().any(|s| {
                s.kind == SkipKind::Critest && s.applies_to(version) && spec.contains(s.spec)
            })
        })
        .map(String::as_str)
        .collect()
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn critest_against_berthd(critest: &Path, version: &str) -> Result<()> {
    berthd_binary()?;
    let skips = parse_skips(SKIPS)?;
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

    let log_path = std::env::temp_dir().join(format!("berth-critest-{version}-{pid}.log"));
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    println!("critest {version} output: {}", log_path.display());

    let endpoint = berthd.endpoint();
    let mut cmd = Command::new(critest);
    cmd.arg(format!("-runtime-endpoint={endpoint}"))
        .arg(format!("-image-endpoint={endpoint}"))
        // Its own client config, so /etc/crictl.yaml on the host cannot redirect critest.
        .arg(format!(
            "-config={}",
            berthd.paths().crictl_config.display()
        ))
        .arg(format!("-ginkgo.timeout={GINKGO_TIMEOUT}"))
        .arg("-ginkgo.no-color")
        // Verbose: every spec by name, skipped ones with the reason critest gives.
        .arg("-ginkgo.v");
    if let Ok(focus) = std::env::var("CRITEST_FOCUS") {
        cmd.arg(format!("-ginkgo.focus={focus}"));
    }
    let skip = [
        skip_regex(&skips, version),
        std::env::var("CRITEST_SKIP").ok(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join("|");
    if !skip.is_empty() {
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
                "critest {version} still running after {OUTER_TIMEOUT:?}; output in {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };

    clean_propagation_leftovers(&std::fs::read_to_string(&berthd.paths().log).unwrap_or_default());

    let output = std::fs::read_to_string(&log_path)?;
    let failed: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("[FAIL]") || l.contains("[PANICKED]"))
        .collect();
    for line in &failed {
        println!("{line}");
    }
    println!(
        "critest {version} exited {status} after {:?}",
        started.elapsed()
    );
    let Some(summary) = parse_ginkgo_summary(&output) else {
        bail!(
            "critest {version} produced no summary ({status}); output in {}; berthd log tail:\n{}",
            log_path.display(),
            berthd.log_tail()
        );
    };
    println!("critest {version} summary: {summary}");
    let skipped = skipped_by_critest(&output);
    let unlisted = unlisted(&skipped, &skips, version);
    ensure!(
        unlisted.is_empty(),
        "critest {version} skipped specs that e2e/critest-skips.txt does not list (add each as \
         `self | SPEC | REASON`, or make it pass):\n{}",
        unlisted.join("\n")
    );
    ensure!(
        summary.failed == 0 && summary.ran > 0,
        "critest {version}: {summary}; failed specs (not in e2e/critest-skips.txt):\n{}\noutput in {}",
        failed.join("\n"),
        log_path.display()
    );
    Ok(())
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
fn the_skip_file_parses_and_every_entry_has_a_reason() {
    let skips = parse_skips(SKIPS).unwrap();
    assert!(skips.iter().any(|s| s.kind == SkipKind::Ours));
    assert!(skips.iter().all(|s| s.reason.len() > 10), "{skips:?}");
    let parsed = parse_skips(
        "# c\n\nskip | [v1.37.0] a (b) | why\nskip | plain spec | because\nself | c d | host\n",
    )
    .unwrap();
    assert_eq!(
        parsed[0],
        Skip {
            kind: SkipKind::Ours,
            version: Some("v1.37.0"),
            spec: "a (b)",
            reason: "why"
        }
    );
    assert_eq!(parsed[2].kind, SkipKind::Critest);
    assert_eq!(
        skip_regex(&parsed, "v1.34.0").as_deref(),
        Some("plain spec")
    );
    assert_eq!(
        skip_regex(&parsed, "v1.37.0").as_deref(),
        Some("a \\(b\\)|plain spec")
    );
    assert!(parse_skips("skip | no reason here\n").is_err());
    assert!(parse_skips("skip | [v1] | reason\n").is_err());
    assert!(parse_skips("maybe | spec | reason\n").is_err());
}

#[test]
fn specs_critest_skips_itself_are_found_and_checked_against_the_list() {
    let output = "------------------------------\n\
        S [SKIPPED] [0.008 seconds]\n\
        [k8s.io] NRI [BeforeEach] pod sandbox lifecycle should receive events [Serial]\n  \
        [BeforeEach] /x/nri_linux.go:45\n\n  [SKIPPED] NRI socket not configured\n\
        ------------------------------\n\
        S [SKIPPED] [0.001 seconds]\n\
        [k8s.io] Metrics [It] should list descriptors\n\
        \u{2022}\n";
    let skipped = skipped_by_critest(output);
    assert_eq!(
        skipped,
        vec![
            "[k8s.io] NRI pod sandbox lifecycle should receive events [Serial]",
            "[k8s.io] Metrics should list descriptors"
        ]
    );
    let skips =
        parse_skips("self | NRI pod sandbox lifecycle | no NRI\nskip | Metrics | not ours\n")
            .unwrap();
    assert_eq!(
        unlisted(&skipped, &skips, "v1.34.0"),
        vec!["[k8s.io] Metrics should list descriptors"]
    );
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
