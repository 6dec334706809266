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
//!
//! `pods`: wall time of `crictl runp`, of `create` + `start` of a busybox container in it, of
//! `exec -s` (ExecSync) of `true` in that container, and of `stopp` + `rmp`, with Debian's
//! bridge CNI chain, medians of `--runs` pods; then the memory a pod costs: the PSS of every
//! process the runtime keeps per pod (shims, sandbox holders) with `--pods` pods running
//! (default 50), divided by their number. With `--berth-bridge`, berth runs on its own default
//! network (berth-bridge) while containerd keeps Debian's chain. With `--grpc` the latencies
//! are CRI calls over one gRPC connection, as kubelet makes them, instead of crictl runs.
//! Last, stats: `--pods` pods of one running container each on both runtimes, and the median
//! time of ListContainerStats and of ListPodSandboxStats over gRPC (kubelet's summary polls)
//! over `--runs` calls, after one untimed call each.
//!
//! `recovery` (berth only): `--pods` pods (default 100) with a running container each, kill -9
//! of berthd, and the time until the restarted berthd answers with every container still
//! running, over `--runs` restarts.
//!
//! `net`: CNI ADD and DEL time per pod, berth-bridge against Debian's bridge + host-local +
//! portmap chain, on namespaces the benchmark creates (`net.rs`); needs berth-bridge built
//! into the same profile dir (`cargo build --release -p berth-netplugin -p berth-bench`).

mod grpc;
mod net;
mod procs;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::containerd::Containerd;
use berth_e2e::daemon::{Berthd, BerthdOptions, ForwardGuard, bridge_conflist};
use berth_e2e::image::{Compression, Image, ImageConfig, LayerBuilder, Meta, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::push_critest_images;
use berth_e2e::tools;

use crate::grpc::CriClient;

/// Uncompressed sizes of the benchmark image's layers, largest first, in MiB (200 in all).
const LAYER_MIB: [usize; 5] = [80, 50, 40, 20, 10];

const USAGE: &str = "usage: berth-bench pull [--runs N] | pods [--runs N] [--pods N] [--berth-bridge] [--grpc] | recovery [--runs N] [--pods N] | net [--runs N]";

/// The container the benchmarks run: critest's busybox, served by the local registry.
const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5usize;
    let mut pods = None;
    let mut berth_bridge = false;
    let mut grpc = false;
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
            // berth on its own default network (berth-bridge) rather than on Debian's chain;
            // containerd keeps Debian's chain, its usual setup.
            "--berth-bridge" => berth_bridge = true,
            // CRI calls over one gRPC connection, as kubelet makes them, instead of crictl.
            "--grpc" => grpc = true,
            "--pods" => {
                pods = Some(
                    it.next()
                        .context("--pods needs a number")?
                        .parse::<usize>()
                        .context("--pods needs a number")?,
                );
            }
            "pull" => what = Some("pull"),
            "pods" => what = Some("pods"),
            "recovery" => what = Some("recovery"),
            "net" => what = Some("net"),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    match what {
        Some("pull") => bench_pull(runs.max(1)),
        Some("pods") => bench_pods(runs.max(1), pods.unwrap_or(50).max(1), berth_bridge, grpc),
        Some("recovery") => bench_recovery(runs.max(1), pods.unwrap_or(100).max(1)),
        Some("net") => net::bench_net(runs.max(1)),
        _ => bail!("{USAGE}"),
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
                let c = Containerd::start(&registry.host(), &crictl, None)?;
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

/// One runtime under test, driven through crictl.
trait Runtime {
    fn name(&self) -> &'static str;
    fn crictl(&self, args: &[&str]) -> Result<std::process::Output>;
    /// Every process the runtime keeps for its pods (not the daemon itself).
    fn pod_processes(&self) -> Vec<i32>;
    /// The CRI socket.
    fn socket(&self) -> std::path::PathBuf;
}

struct BerthRuntime(Berthd);
struct ContainerdRuntime(Containerd);

impl Runtime for BerthRuntime {
    fn name(&self) -> &'static str {
        "berth"
    }
    fn socket(&self) -> std::path::PathBuf {
        self.0.paths().socket.clone()
    }
    fn crictl(&self, args: &[&str]) -> Result<std::process::Output> {
        self.0.crictl(args)
    }
    fn pod_processes(&self) -> Vec<i32> {
        let daemon = self.0.pid() as i32;
        let pods: Vec<String> = self
            .0
            .crictl(&["pods", "-q", "--no-trunc"])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let mut all = procs::with_descendants(&procs::mentioning(&self.0.paths().dir));
        all.extend(procs::pid_holders(&pods));
        all.sort_unstable();
        all.dedup();
        all.into_iter().filter(|&p| p != daemon).collect()
    }
}

impl Runtime for ContainerdRuntime {
    fn name(&self) -> &'static str {
        "containerd"
    }
    fn socket(&self) -> std::path::PathBuf {
        self.0.dir().join("containerd.sock")
    }
    fn crictl(&self, args: &[&str]) -> Result<std::process::Output> {
        self.0.crictl(args)
    }
    fn pod_processes(&self) -> Vec<i32> {
        let daemon = self.0.pid() as i32;
        procs::with_descendants(&procs::mentioning(self.0.dir()))
            .into_iter()
            .filter(|&p| p != daemon)
            .collect()
    }
}

fn ok(out: std::process::Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn pod_config(dir: &std::path::Path, name: &str) -> Result<String> {
    let path = dir.join(format!("{name}.json"));
    let config = format!(
        r#"{{"metadata":{{"name":"{name}","namespace":"bench","uid":"uid-{name}","attempt":0}},"log_directory":"{}","linux":{{}}}}"#,
        dir.join("logs").join(name).display()
    );
    std::fs::write(&path, config)?;
    Ok(path.display().to_string())
}

fn run_pod(rt: &dyn Runtime, dir: &std::path::Path, name: &str) -> Result<(String, Duration)> {
    let config = pod_config(dir, name)?;
    let start = Instant::now();
    let id = ok(
        rt.crictl(&["runp", &config])?,
        &format!("{} runp", rt.name()),
    )?;
    Ok((id, start.elapsed()))
}

fn container_config(dir: &std::path::Path, name: &str) -> Result<String> {
    let path = dir.join(format!("{name}-ctr.json"));
    let config = format!(
        r#"{{"metadata":{{"name":"{name}"}},"image":{{"image":"{BUSYBOX}"}},"command":["sleep","3600"],"log_path":"{name}.log","linux":{{}}}}"#
    );
    std::fs::write(&path, config)?;
    Ok(path.display().to_string())
}

/// CreateContainer + StartContainer of a sleeping busybox in pod `pod`.
fn start_container(
    rt: &dyn Runtime,
    dir: &std::path::Path,
    pod: &str,
    name: &str,
) -> Result<(String, Duration)> {
    let pod_cfg = pod_config(dir, name)?;
    let ctr_cfg = container_config(dir, name)?;
    let start = Instant::now();
    let id = ok(
        rt.crictl(&["create", pod, &ctr_cfg, &pod_cfg])?,
        &format!("{} create", rt.name()),
    )?;
    ok(rt.crictl(&["start", &id])?, &format!("{} start", rt.name()))?;
    Ok((id, start.elapsed()))
}

fn exec_sync(rt: &dyn Runtime, id: &str) -> Result<Duration> {
    let start = Instant::now();
    ok(
        rt.crictl(&["exec", "-s", id, "true"])?,
        &format!("{} exec -s", rt.name()),
    )?;
    Ok(start.elapsed())
}

fn remove_pod(rt: &dyn Runtime, id: &str) -> Result<Duration> {
    let start = Instant::now();
    ok(rt.crictl(&["stopp", id])?, &format!("{} stopp", rt.name()))?;
    ok(rt.crictl(&["rmp", id])?, &format!("{} rmp", rt.name()))?;
    Ok(start.elapsed())
}

fn bench_pods(runs: usize, pods: usize, berth_bridge: bool, grpc: bool) -> Result<()> {
    let crictl = tools::crictl()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let pid = std::process::id();
    let work = tempfile::Builder::new()
        .prefix("berth-bench-pods-")
        .tempdir()?;

    let (bridge, subnet) = (
        format!("bbb{}", pid % 100_000),
        format!("10.218.{}.0/24", pid % 250),
    );
    let options = BerthdOptions::default().mirror_critest_registries(&registry);
    let berthd = Berthd::start(if berth_bridge {
        options.default_network(&bridge, &subnet)
    } else {
        options.bridge_network(&bridge, &subnet)
    })?;
    let ctrd_bridge = format!("bbc{}", pid % 100_000);
    let ctrd_subnet = format!("10.219.{}.0/24", pid % 250);
    let _guard = ForwardGuard::install(&ctrd_bridge, &ctrd_subnet)?;
    let conflist = bridge_conflist(&ctrd_bridge, &ctrd_subnet, &work.path().join("ctrd-ipam"));
    let containerd = Containerd::start(&registry.host(), &crictl, Some(&conflist))?;
    let runtimes: [&dyn Runtime; 2] = [&BerthRuntime(berthd), &ContainerdRuntime(containerd)];

    // Warm-up, untimed: containerd pulls its sandbox image on the first pod, both pull busybox.
    for rt in runtimes {
        ok(
            rt.crictl(&["pull", BUSYBOX])?,
            &format!("{} pull", rt.name()),
        )?;
        let name = format!("warm-{}", rt.name());
        let (id, _) = run_pod(rt, work.path(), &name)?;
        let (ctr, _) = start_container(rt, work.path(), &id, &name)?;
        exec_sync(rt, &ctr)?;
        remove_pod(rt, &id)?;
    }

    let mut clients = if grpc {
        Some([
            CriClient::connect(&runtimes[0].socket())?,
            CriClient::connect(&runtimes[1].socket())?,
        ])
    } else {
        None
    };
    let mut start_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut ctr_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut exec_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut stop_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for run in 0..runs {
        // Alternate who goes first so that neither always runs on a quieter machine.
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let rt = runtimes[i];
            let name = format!("lat-{}-{run}", rt.name());
            if let Some(clients) = clients.as_mut() {
                let c = &mut clients[i];
                let cfg = CriClient::pod_config(&name, &work.path().join("logs"));
                let (id, t) = c.run_pod(&cfg)?;
                start_times[i].push(t);
                let (ctr, t) = c.start_container(&id, &cfg, &name, BUSYBOX)?;
                ctr_times[i].push(t);
                exec_times[i].push(c.exec_sync(&ctr)?);
                stop_times[i].push(c.remove_pod(&id)?);
                continue;
            }
            let (id, t) = run_pod(rt, work.path(), &name)?;
            start_times[i].push(t);
            let (ctr, t) = start_container(rt, work.path(), &id, &name)?;
            ctr_times[i].push(t);
            exec_times[i].push(exec_sync(rt, &ctr)?);
            stop_times[i].push(remove_pod(rt, &id)?);
        }
    }

    let mut pss_per_pod = [0f64; 2];
    for (i, rt) in runtimes.iter().enumerate() {
        let mut ids = Vec::new();
        for n in 0..pods {
            ids.push(run_pod(*rt, work.path(), &format!("mem-{}-{n}", rt.name()))?.0);
        }
        let procs = rt.pod_processes();
        let total: u64 = procs.iter().map(|&p| procs::pss_kib(p)).sum();
        pss_per_pod[i] = total as f64 / pods as f64;
        eprintln!(
            "{}: {pods} pods, {} processes, {:.1} MiB PSS in all",
            rt.name(),
            procs.len(),
            total as f64 / 1024.0
        );
        for id in ids {
            remove_pod(*rt, &id)?;
        }
    }

    let stats = bench_stats(&runtimes, work.path(), runs, pods)?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (b_run, c_run) = (
        median(start_times[0].clone()),
        median(start_times[1].clone()),
    );
    let (b_rm, c_rm) = (median(stop_times[0].clone()), median(stop_times[1].clone()));
    let (b_ctr, c_ctr) = (median(ctr_times[0].clone()), median(ctr_times[1].clone()));
    let (b_exec, c_exec) = (median(exec_times[0].clone()), median(exec_times[1].clone()));
    let both: [Vec<Duration>; 2] = [0, 1].map(|i| {
        start_times[i]
            .iter()
            .zip(&ctr_times[i])
            .map(|(a, b)| *a + *b)
            .collect()
    });
    let (b_both, c_both) = (median(both[0].clone()), median(both[1].clone()));
    let network = if berth_bridge {
        "berth on berth-bridge, containerd on Debian bridge+host-local+portmap"
    } else {
        "both on Debian bridge+host-local+portmap"
    };
    let client = if grpc {
        "CRI over one gRPC connection, as kubelet calls"
    } else {
        "crictl start-up included"
    };
    println!("pods and containers, {network}, medians of {runs}; {client}");
    let row = |what: &str, b: Duration, c: Duration| {
        println!(
            "{what:<28} berth {:7.1} ms   containerd {:7.1} ms   ratio {:.2}",
            ms(b),
            ms(c),
            ms(b) / ms(c)
        );
    };
    row("RunPodSandbox", b_run, c_run);
    row("CreateContainer+Start", b_ctr, c_ctr);
    row("pod + container start", b_both, c_both);
    row("ExecSync (true)", b_exec, c_exec);
    row("Stop+RemovePodSandbox", b_rm, c_rm);
    println!(
        "memory per pod ({pods} pods, PSS of shims and sandbox holders)   berth {:.0} KiB   containerd {:.0} KiB   ratio {:.2}",
        pss_per_pod[0],
        pss_per_pod[1],
        pss_per_pod[0] / pss_per_pod[1]
    );
    println!("stats with {pods} pods of one running container each, over gRPC, medians of {runs}");
    for (what, [b, c]) in stats {
        match (b, c) {
            (Ok(b), Ok(c)) => row(what, b, c),
            (b, c) => println!("{what:<28} berth {b:?}   containerd {c:?}"),
        }
    }
    Ok(())
}

/// The two list calls kubelet polls for its summary API, with `pods` pods of one running
/// container each on both runtimes at once; each runtime gets one untimed call first (the
/// first reading of a container has no CPU rate yet, for either).
#[allow(clippy::type_complexity)]
fn bench_stats(
    runtimes: &[&dyn Runtime; 2],
    dir: &std::path::Path,
    runs: usize,
    pods: usize,
) -> Result<[(&'static str, [Result<Duration, String>; 2]); 2]> {
    let mut ids: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (i, rt) in runtimes.iter().enumerate() {
        for n in 0..pods {
            let name = format!("stats-{}-{n}", rt.name());
            let (id, _) = run_pod(*rt, dir, &name)?;
            start_container(*rt, dir, &id, &name)?;
            ids[i].push(id);
        }
    }
    let mut clients = [
        CriClient::connect(&runtimes[0].socket())?,
        CriClient::connect(&runtimes[1].socket())?,
    ];
    let mut ctr_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut pod_times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut errors: [[Option<String>; 2]; 2] = Default::default();
    for (i, c) in clients.iter_mut().enumerate() {
        if let Err(e) = c.list_container_stats() {
            errors[0][i] = Some(e.to_string());
        }
        if let Err(e) = c.list_pod_stats() {
            errors[1][i] = Some(e.to_string());
        }
    }
    for run in 0..runs {
        let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            if errors[0][i].is_none() {
                let (n, t) = clients[i].list_container_stats()?;
                anyhow::ensure!(n >= pods, "{}: {n} container stats", runtimes[i].name());
                ctr_times[i].push(t);
            }
            if errors[1][i].is_none() {
                let (n, t) = clients[i].list_pod_stats()?;
                anyhow::ensure!(n >= pods, "{}: {n} pod stats", runtimes[i].name());
                pod_times[i].push(t);
            }
        }
    }
    for (i, rt) in runtimes.iter().enumerate() {
        for id in &ids[i] {
            remove_pod(*rt, id)?;
        }
    }
    let result = |times: &[Vec<Duration>; 2], errs: &[Option<String>; 2]| {
        [0, 1].map(|i| match &errs[i] {
            Some(e) => Err(e.clone()),
            None => Ok(median(times[i].clone())),
        })
    };
    Ok([
        ("ListContainerStats", result(&ctr_times, &errors[0])),
        ("ListPodSandboxStats", result(&pod_times, &errors[1])),
    ])
}

fn bench_recovery(runs: usize, pods: usize) -> Result<()> {
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let pid = std::process::id();
    let work = tempfile::Builder::new()
        .prefix("berth-bench-recovery-")
        .tempdir()?;
    let mut berthd = Berthd::start(
        BerthdOptions::default()
            .mirror_critest_registries(&registry)
            .bridge_network(
                &format!("bbr{}", pid % 100_000),
                &format!("10.217.{}.0/24", pid % 200),
            ),
    )?;
    ok(berthd.crictl(&["pull", BUSYBOX])?, "berth pull")?;
    let mut containers = Vec::new();
    {
        let rt = BerthRuntime(berthd);
        for n in 0..pods {
            let name = format!("rec-{n}");
            let (pod, _) = run_pod(&rt, work.path(), &name)?;
            containers.push(start_container(&rt, work.path(), &pod, &name)?.0);
        }
        berthd = rt.0;
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        berthd.kill9()?;
        let start = Instant::now();
        berthd.start_again()?;
        times.push(start.elapsed());
        let listed = ok(
            berthd.crictl(&["ps", "-q", "--state", "running"])?,
            "berth ps",
        )?;
        let running = listed.lines().count();
        if running != containers.len() {
            bail!(
                "{running} of {} containers running after recovery",
                containers.len()
            );
        }
    }
    let log = std::fs::read_to_string(&berthd.paths().log).unwrap_or_default();
    let reconnect_errors = log.matches("reconnecting to the pod's shim").count();
    println!(
        "recovery after kill -9 with {pods} pods and {pods} running containers, {runs} restarts: \
         median {:.0} ms from exec to the first answer (crictl polling every 50 ms included), \
         max {:.0} ms; {reconnect_errors} reconnect errors",
        median(times.clone()).as_secs_f64() * 1000.0,
        times
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0,
    );
    for id in containers {
        let _ = berthd.crictl(&["rm", "-f", &id]);
    }
    let pods = ok(berthd.crictl(&["pods", "-q"])?, "berth pods")?;
    for pod in pods.lines() {
        let _ = berthd.crictl(&["rmp", "-f", pod]);
    }
    Ok(())
}
