//! berthd starts on a private socket and answers crictl. Runs as root; needs the berthd binary
//! (`$BERTHD_BIN`, or next to this test in the cargo target dir) and the pinned crictl
//! (`hack/install-cri-tools.sh`). Without them the test fails, naming what is missing.

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::push_critest_images;

#[test]
fn berthd_answers_version_and_status_through_crictl() -> Result<()> {
    // Fail before the image build when there is no daemon to test.
    berthd_binary()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let berthd = Berthd::start(BerthdOptions::default().mirror_critest_registries(&registry))?;

    let version = berthd.crictl_ok(&["version"])?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .map(|v| v.trim_start_matches(':').trim().to_owned())
            })
            .with_context(|| format!("crictl version printed no {name}:\n{version}"))
    };
    ensure!(
        field("RuntimeName")? == "berth",
        "crictl version:\n{version}"
    );
    ensure!(
        field("RuntimeApiVersion")? == "v1",
        "crictl version:\n{version}"
    );

    let info: serde_json::Value =
        serde_json::from_str(&berthd.crictl_ok(&["info"])?).context("crictl info JSON")?;
    let conditions = info["status"]["conditions"]
        .as_array()
        .with_context(|| format!("no status.conditions in {info}"))?;
    for wanted in ["RuntimeReady", "NetworkReady"] {
        ensure!(
            conditions.iter().any(|c| c["type"] == wanted),
            "crictl info has no {wanted} condition: {conditions:?}"
        );
    }
    Ok(())
}
