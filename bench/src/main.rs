//! berth's benchmarks, each run side by side with Debian's containerd in the same process, on
//! the same registry and machine, reported as medians and a ratio. Not a test: numbers, not
//! pass/fail. Run as root with release binaries:
//!
//! ```text
//! cargo build --release -p berth-server -p berth-bench
//! BERTHD_BIN=<target>/release/berthd <target>/release/berth-bench pull --runs 5
//! ```
//!
//! `pull`: wall time of `crictl pull` of an image with 5 layers (about 200 MB uncompressed, gzip)
//! from a local registry, each run against a fresh daemon with an empty root, so every pull is
//! cold.

mod containerd;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::daemon::{Berthd, BerthdOptions};
use berth_e2e::image::{Compression, Image, ImageConfig, LayerBuilder, Meta, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::tools;

use crate::containerd::Containerd;

/// Uncompressed sizes of the benchmark image's layers, largest first, in MiB (200 in all).
const LAYER_MIB: [usize; 5] = [80, 50, 40, 20, 10];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5usize;
    let mut what = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs needs a number")?;
            }
            "pull" => what = Some("pull"),
            other => bail!("unknown argument {other:?}; usage: berth-bench pull [--runs N]"),
        }
    }
    match what {
        Some("pull") => bench_pull(runs.max(1)),
        _ => bail!("usage: berth-bench pull [--runs N]"),
    }
}

/// Pseudo-random text: compresses about as well as binaries and text in real images do
/// (gzip brings it to roughly three quarters), and the same bytes on every run.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n._";
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize]
        })
        .collect()
}

fn build_image() -> Result<Image> {
    let mut layers = Vec::new();
    for (i, mib) in LAYER_MIB.iter().enumerate() {
        let mut b = LayerBuilder::new();
        b.dir(&format!("data{i}"), Meta::mode(0o755));
        // Files of 4 MiB, as a layer holds many files rather than one.
        let files = mib / 4;
        for f in 0..files {
            b.file(
                &format!("data{i}/file{f}"),
                Meta::mode(0o644),
                filler(4 << 20, (i * 1000 + f) as u64 + 7),
            );
        }
        layers.push(b.build(Compression::Gzip)?);
    }
    let config = ImageConfig {
        cmd: vec!["/bin/sh".into()],
        ..Default::default()
    };
    Image::build(Platform::linux_amd64(), &config, layers)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn timed_pull(pull: impl FnOnce() -> Result<std::process::Output>) -> Result<Duration> {
    let start = Instant::now();
    let out = pull()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!("pull failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(took)
}

fn bench_pull(runs: usize) -> Result<()> {
    let crictl = tools::crictl()?;
    eprintln!(
        "building the benchmark image ({} MiB in {} layers)",
        LAYER_MIB.iter().sum::<usize>(),
        LAYER_MIB.len()
    );
    let image = build_image()?;
    let compressed: u64 = image.layers.iter().map(|l| l.blob.size()).sum();
    let registry = Registry::start()?;
    registry.client().push_image("bench/pull", "v1", &image)?;
    let reference = format!("{}/bench/pull:v1", registry.host());
    eprintln!(
        "pushed {reference} ({:.1} MiB compressed)",
        compressed as f64 / 1048576.0
    );

    let mut berth = Vec::new();
    let mut ctrd = Vec::new();
    for run in 1..=runs {
        // Alternate who goes first so that neither always finds a warmer page cache.
        let order: [bool; 2] = if run % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for is_berth in order {
            if is_berth {
                let d =
                    Berthd::start(BerthdOptions::default().insecure_registry(&registry.host()))?;
                let t = timed_pull(|| d.crictl(&["pull", &reference]))?;
                eprintln!("run {run}: berth      {:>8.2} s", t.as_secs_f64());
                berth.push(t);
            } else {
                let c = Containerd::start(&registry.host(), &crictl)?;
                let t = timed_pull(|| c.crictl(&["pull", &reference]))?;
                eprintln!(
                    "run {run}: containerd {:>8.2} s (pid {})",
                    t.as_secs_f64(),
                    c.pid()
                );
                ctrd.push(t);
            }
        }
    }
    let (b, c) = (median(berth), median(ctrd));
    println!(
        "image pull, {} layers, {} MiB uncompressed, {:.1} MiB gzip, {runs} cold runs each",
        LAYER_MIB.len(),
        LAYER_MIB.iter().sum::<usize>(),
        compressed as f64 / 1048576.0
    );
    println!("berth      median {:.2} s", b.as_secs_f64());
    println!("containerd median {:.2} s", c.as_secs_f64());
    println!(
        "berth / containerd = {:.2}",
        b.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}
