//! Where the external CRI clients (crictl, critest) and berth's own berthctl live.
//!
//! `hack/install-cri-tools.sh` builds them into a bin dir keyed by the cri-tools version pinned in
//! `hack/versions.env`; this module reads the same file at compile time, so the version is pinned
//! in exactly one place and a bump cannot leave the tests running an old client.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

const VERSIONS_ENV: &str = include_str!("../../hack/versions.env");

/// Environment variable overriding the bin dir (the install script honours it too).
pub const GO_BIN_ENV: &str = "BERTH_GO_BIN";
/// Environment variable naming the berthctl binary to test.
pub const BERTHCTL_BIN_ENV: &str = "BERTHCTL_BIN";

/// The cri-tools version pinned in `hack/versions.env` (for example `v1.34.0`).
pub fn cri_tools_version() -> Result<String> {
    pinned_version(VERSIONS_ENV, "CRI_TOOLS_VERSION")
}

/// The newest cri-tools version the Go module proxy serves (`CRI_TOOLS_NEWEST_VERSION`): CI
/// runs its critest beside the pinned one.
pub fn cri_tools_newest_version() -> Result<String> {
    pinned_version(VERSIONS_ENV, "CRI_TOOLS_NEWEST_VERSION")
}

/// The directory holding crictl and critest: `$BERTH_GO_BIN`, else
/// `/var/cache/berth/go-bin/<cri-tools version>`.
pub fn go_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(GO_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    Ok(versioned_bin_dir(&cri_tools_version()?))
}

/// Where `hack/install-cri-tools.sh VERSION` puts that version's crictl and critest.
fn versioned_bin_dir(version: &str) -> PathBuf {
    PathBuf::from("/var/cache/berth/go-bin").join(version)
}

/// Path of the pinned crictl; fails with the install command when it is missing.
pub fn crictl() -> Result<PathBuf> {
    tool(go_bin_dir()?, "crictl", "")
}

/// Path of the pinned critest; fails with the install command when it is missing.
pub fn critest() -> Result<PathBuf> {
    tool(go_bin_dir()?, "critest", "")
}

/// Path of critest at `version` (its own bin dir, whatever `$BERTH_GO_BIN` says).
pub fn critest_at(version: &str) -> Result<PathBuf> {
    tool(versioned_bin_dir(version), "critest", version)
}

fn tool(dir: PathBuf, name: &str, version: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: run hack/install-cri-tools.sh {version} (or set {GO_BIN_ENV})",
            path.display()
        );
    }
    Ok(path)
}

/// The berthctl binary: `$BERTHCTL_BIN`, else `berthctl` in the cargo profile dir this test
/// binary was built into (`<target>/debug/deps/<test>` → `<target>/debug/berthctl`), where
/// berthd is found too.
pub fn berthctl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BERTHCTL_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{BERTHCTL_BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    let candidate = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|profile_dir| profile_dir.join("berthctl"))
        .with_context(|| format!("no profile dir above {}", exe.display()))?;
    if !candidate.is_file() {
        bail!(
            "berthctl binary not found: {BERTHCTL_BIN_ENV} is unset and {} does not exist \
             (build it with `cargo build -p berth-ctl` or set {BERTHCTL_BIN_ENV})",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The closing counts of a ginkgo run (critest prints them as its last lines).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GinkgoSummary {
    /// `Ran N of M Specs`.
    pub ran: u32,
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub pending: u32,
    pub skipped: u32,
}

impl std::fmt::Display for GinkgoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ran {} of {} specs: {} passed, {} failed, {} pending, {} skipped",
            self.ran, self.total, self.passed, self.failed, self.pending, self.skipped
        )
    }
}

/// Finds `Ran N of M Specs ...` and `SUCCESS!|FAIL! -- A Passed | B Failed | C Pending | D
/// Skipped` in ginkgo's output; `None` if the run never reached its summary.
pub fn parse_ginkgo_summary(output: &str) -> Option<GinkgoSummary> {
    let mut summary = GinkgoSummary::default();
    let mut found_ran = false;
    let mut found_counts = false;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Ran ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [ran, "of", total, ..] = words.as_slice()
                && let (Ok(ran), Ok(total)) = (ran.parse(), total.parse())
            {
                summary.ran = ran;
                summary.total = total;
                found_ran = true;
            }
        } else if let Some((_, counts)) = line.split_once(" -- ")
            && counts.contains(" Passed")
        {
            for part in counts.split('|') {
                let mut words = part.split_whitespace();
                let (Some(n), Some(label)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse() else {
                    continue;
                };
                match label {
                    "Passed" => summary.passed = n,
                    "Failed" => summary.failed = n,
                    "Pending" => summary.pending = n,
                    "Skipped" => summary.skipped = n,
                    _ => {}
                }
            }
            found_counts = true;
        }
    }
    (found_ran && found_counts).then_some(summary)
}

/// Reads `KEY=VALUE` from a shell-style env file (comments and blank lines ignored, optional
/// quotes stripped), the format `hack/*.sh` source.
fn pinned_version(env_file: &str, key: &str) -> Result<String> {
    for line in env_file.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != key {
            continue;
        }
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
        if v.is_empty() {
            bail!("{key} is empty in hack/versions.env");
        }
        return Ok(v.to_owned());
    }
    None.with_context(|| format!("{key} missing from hack/versions.env"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pinned_version_ignoring_comments_and_quotes() {
        let file = "# comment\n\nOTHER=1\nexport CRI_TOOLS_VERSION=\"v1.2.3\"\n";
        assert_eq!(pinned_version(file, "CRI_TOOLS_VERSION").unwrap(), "v1.2.3");
    }

    #[test]
    fn missing_or_empty_version_is_an_error() {
        assert!(pinned_version("A=1\n", "CRI_TOOLS_VERSION").is_err());
        assert!(pinned_version("CRI_TOOLS_VERSION=\n", "CRI_TOOLS_VERSION").is_err());
    }

    #[test]
    fn ginkgo_summary_is_parsed_from_failing_and_passing_runs() {
        let failing = "...\nSummarizing 2 Failures:\n  [FAIL] x\n\nRan 95 of 106 Specs in 301.2 seconds\n\
                       FAIL! -- 93 Passed | 2 Failed | 0 Pending | 11 Skipped\n--- FAIL: TestCRISuite (301.3s)\n";
        assert_eq!(
            parse_ginkgo_summary(failing),
            Some(GinkgoSummary {
                ran: 95,
                total: 106,
                passed: 93,
                failed: 2,
                pending: 0,
                skipped: 11
            })
        );
        let passing = "Ran 3 of 3 Specs in 1.0 seconds\nSUCCESS! -- 3 Passed | 0 Failed | 0 Pending | 0 Skipped\nPASS\n";
        assert_eq!(
            parse_ginkgo_summary(passing).map(|s| (s.passed, s.failed)),
            Some((3, 0))
        );
        assert_eq!(parse_ginkgo_summary("panic: cannot connect\n"), None);
    }

    #[test]
    fn the_repository_pins_a_cri_tools_version_and_a_newest_one() {
        assert!(cri_tools_version().unwrap().starts_with('v'));
        assert!(cri_tools_newest_version().unwrap().starts_with('v'));
    }
}
