//! berthd's life: claim the root and the socket, probe the node, open the store, serve the CRI
//! until SIGTERM or SIGINT, then release everything.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_authority::AuthorityFix;
use berth_snapshotter::{OverlaySnapshotter, SnapshotError};
use berth_store::{SandboxRecord, Store, StoreError};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{getegid, geteuid};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::cgroups::CgroupFs;
use crate::config::Config;
use crate::containers::host::LinuxHost;
use crate::containers::service::Containers;
use crate::containers::tasks::{LinuxMounts, ShimTasks};
use crate::cri;
use crate::images::layers::{LayerStore, OverlayLayers};
use crate::images::{ImageError, Images};
use crate::node::{NodeError, NodeInfo};
use crate::sandbox::linux::{CniNetwork, PinnedNamespaces, prepare_network};
use crate::sandbox::service::{SandboxDirs, Sandboxes};
use crate::shims::{ProcessShims, SHIM_BINARY, locate_shim};
use crate::stats::{HostUsage, Stats};
use crate::tasks;

/// The CRI socket's mode: kubelet runs as root; a group may be given access.
const SOCKET_MODE: u32 = 0o660;
/// The mode berthd creates its root and state dirs with: only root writes there, and others may
/// traverse them, as runc needs to reach a bundle from inside a user namespace (containerd
/// uses the same).
const DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is writable by group or others (mode {mode:04o}); run chmod go-w on it")]
    DirWritableByOthers {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{what} {path} is owned by uid {owner}, not by berthd's uid {uid}; chown it")]
    DirNotOwned {
        what: &'static str,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "root {root} is locked by another berthd ({holder}); stop it or start with another --root"
    )]
    RootLocked { root: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket {path} is served by a running daemon; stop it or start with another --socket")]
    SocketInUse { path: PathBuf },
    #[error(
        "socket path {path} exists and is not a socket; remove it or start with another --socket"
    )]
    NotASocket { path: PathBuf },
    #[error("cannot use socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("image store: {0}")]
    Images(#[from] ImageError),
    #[error("snapshots: {0}")]
    Snapshots(#[from] SnapshotError),
    #[error("serving the CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(mut config: Config) -> Result<(), StartError> {
    private_dir("root", &config.root)?;
    private_dir("state", &config.state)?;
    let _root_lock = lock_root(&config.root)?;
    let node = NodeInfo::probe(&config)?;
    tracing::info!(
        cgroup = ?node.cgroup_version,
        oom_score_adj_floor = node.oom_score_adj_floor,
        runtimes = ?node.runtimes,
        "probed node"
    );
    let store = Store::open(&config.root.join("meta"))?;
    let snapshots = Arc::new(OverlaySnapshotter::open(config.root.join("snapshots"))?);
    let layers: Arc<dyn LayerStore> = Arc::new(OverlayLayers(snapshots.clone()));
    let stats_snapshots = snapshots.clone();
    let images = Images::open(
        &config.root,
        store.clone(),
        config.registry.clone(),
        Some(layers),
    )?;
    let listener = bind_socket(&config.socket)?;
    prepare_network(&mut config);
    let mut sigterm = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;

    let config = Arc::new(config);
    let (sandboxes, shims) = sandboxes(&config, &node, store.clone()).await;
    let shim_tasks = Arc::new(ShimTasks::new(
        shims.clone(),
        tokio::runtime::Handle::current(),
    ));
    let containers = Arc::new(Containers::new(
        store.clone(),
        config.state.clone(),
        sandboxes.clone(),
        images.clone(),
        snapshots,
        Arc::new(LinuxMounts),
        shim_tasks.clone(),
        node.oom_score_adj_floor,
        // The runtimes' features were probed once at start (`runc features`); the rest of the
        // node's facts are read here once.
        node.runtimes
            .iter()
            .map(|(name, bin)| {
                let facts =
                    LinuxHost::node_facts(bin.features.recursive_read_only_mounts, node.apparmor);
                (name.clone(), facts)
            })
            .collect(),
        tokio::runtime::Handle::current(),
    ));
    let recovering = containers.clone();
    match tokio::task::spawn_blocking(move || recovering.recover()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "recovering containers"),
        Err(e) => tracing::error!(error = %e, "recovering containers"),
    }
    // What a crash left between removing an image's record and sweeping its data.
    let collecting = images.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = collecting.collect_garbage() {
            tracing::warn!(error = %e, "collecting image garbage at start");
        }
    });
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let task_api = tasks::service(
        containers.clone(),
        sandboxes.clone(),
        shim_tasks.clone(),
        shims,
        stopping,
    );
    let stats = Arc::new(Stats::new(
        containers.clone(),
        sandboxes.clone(),
        Arc::new(HostUsage {
            probe: shim_tasks.clone(),
            snapshots: stats_snapshots,
            snapshot_root: config.root.join("snapshots"),
            cgroup: node.cgroup_version,
        }),
        node.cgroup_version,
    ));
    let cri = cri::Cri::new(config.clone(), Arc::new(node));
    tracing::info!(socket = %config.socket.display(), version = env!("CARGO_PKG_VERSION"), "berthd ready");
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
        }
        // Ends the task API's pending waits, which would hold the graceful shutdown.
        let _ = stopping_tx.send(true);
    };
    // Clients that send the socket path as :authority (old grpc-go, so kubelet < 1.30 and crictl
    // 1.29; grpc-java; grpcio) would get RST_STREAM from h2 without the rewrite.
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new));
    let served = Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .layer(crate::deadline::DeadlineLayer)
        .add_service(cri::runtime_service(cri, sandboxes, containers, stats))
        .add_service(cri::image_service(images))
        .add_service(task_api)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(e) = std::fs::remove_file(&config.socket) {
        tracing::warn!(socket = %config.socket.display(), error = %e, "cannot remove socket");
    }
    drop(store);
    served?;
    tracing::info!("berthd stopped");
    Ok(())
}

/// The sandbox service on the real namespaces, CNI and shims, with the pods a previous berthd
/// left recovered (see [`Sandboxes::recover`]).
async fn sandboxes(
    config: &Config,
    node: &NodeInfo,
    store: Store,
) -> (Arc<Sandboxes>, Arc<ProcessShims>) {
    let shim = locate_shim().unwrap_or_else(|| {
        tracing::warn!("{SHIM_BINARY} not found next to berthd nor in PATH; pods cannot start");
        PathBuf::from(SHIM_BINARY)
    });
    tracing::info!(shim = %shim.display(), "pod shim");
    let network = Arc::new(CniNetwork::new(
        config.network.cni_conf_dir.clone(),
        config.network.cni_bin_dirs.clone(),
        config.state.join("cni"),
    ));
    let cgroups = CgroupFs::probe().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading cgroup mounts; pod cgroups will not be removed");
        CgroupFs::from_mountinfo("")
    });
    let shims = Arc::new(
        ProcessShims::new(
            shim,
            cgroups.clone(),
            config.state.clone(),
            tokio::runtime::Handle::current(),
        )
        .hiding_unified_cgroup_for(
            node.runtimes
                .values()
                .filter(|bin| bin.hide_unified_cgroup)
                .map(|bin| bin.path.clone()),
        ),
    );
    let sandboxes = Arc::new(Sandboxes::new(
        store.clone(),
        SandboxDirs::new(config.state.clone()),
        node.runtimes
            .iter()
            .map(|(name, bin)| (name.clone(), bin.path.clone()))
            .collect(),
        config.default_runtime.clone(),
        Arc::new(PinnedNamespaces),
        network.clone(),
        shims.clone(),
        Arc::new(cgroups),
    ));
    let recovering = sandboxes.clone();
    match tokio::task::spawn_blocking(move || recovering.recover()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "recovering pod sandboxes"),
        Err(e) => tracing::error!(error = %e, "recovering pod sandboxes"),
    }
    // After recovery, before serving: the pods left are exactly those berthd knows.
    match store.list::<SandboxRecord>() {
        Ok(records) => {
            let known: Vec<String> = records
                .into_iter()
                .filter(|r| !r.netns_path.is_empty())
                .map(|r| r.id)
                .collect();
            if let Err(e) =
                tokio::task::spawn_blocking(move || network.collect_garbage(&known)).await
            {
                tracing::error!(error = %e, "CNI garbage collection");
            }
        }
        Err(e) => tracing::error!(error = %e, "listing pods for CNI garbage collection"),
    }
    (sandboxes, shims)
}

/// Creates berthd's root or state dir, or checks an existing one: whoever else can write there
/// can swap the metadata, the snapshots or the shim sockets under berthd, which acts on them as
/// root.
fn private_dir(what: &'static str, path: &Path) -> Result<(), StartError> {
    create_dir(path, DIR_MODE)?;
    // Followed: a root that is a symlink to a data disk is a common and safe set-up.
    let meta = std::fs::metadata(path).map_err(|source| StartError::CreateDir {
        path: path.to_path_buf(),
        source,
    })?;
    check_private(what, path, &meta, geteuid().as_raw())
}

fn check_private(
    what: &'static str,
    path: &Path,
    meta: &std::fs::Metadata,
    uid: u32,
) -> Result<(), StartError> {
    if meta.uid() != uid {
        return Err(StartError::DirNotOwned {
            what,
            path: path.to_path_buf(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StartError::DirWritableByOthers {
            what,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn create_dir(path: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| StartError::CreateDir {
            path: path.to_path_buf(),
            source,
        })
}

/// Takes an exclusive lock on `<root>/berthd.lock` for the daemon's lifetime, and writes our
/// pid there so that a second daemon can say who holds it. The kernel drops the lock when the
/// process dies, so a crashed daemon never leaves the root locked.
fn lock_root(root: &Path) -> Result<File, StartError> {
    let path = root.join("berthd.lock");
    let lock_err = |source| StartError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // Best effort: the holder may be writing its pid right now.
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(StartError::RootLocked {
                root: root.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    file.set_len(0).map_err(lock_err)?;
    file.rewind().map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

/// Binds the CRI socket. A socket file left by a crashed daemon (nobody accepts on it) is
/// replaced; one that a live daemon answers on is refused.
fn bind_socket(path: &Path) -> Result<UnixListener, StartError> {
    let sock_err = |source| StartError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(StartError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(StartError::SocketInUse {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                tracing::info!(socket = %path.display(), "replacing stale socket");
                std::fs::remove_file(path).map_err(sock_err)?;
            }
            Err(e) => return Err(sock_err(e)),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    if let Some(parent) = path.parent() {
        create_dir(parent, DIR_MODE)?;
    }
    // bind creates the socket with 0777 less the umask, and a client that connects before the
    // mode and owner are set keeps its connection: bind with only the owner let in. The umask
    // is the process's, so another thread creating a file meanwhile makes it private at worst.
    let previous = umask(Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    umask(previous);
    let listener = bound.map_err(sock_err)?;
    // A setgid state dir would otherwise hand its group to the socket.
    std::os::unix::fs::chown(path, Some(geteuid().as_raw()), Some(getegid().as_raw()))
        .map_err(sock_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(sock_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_root_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_root(dir.path()).unwrap();
        let err = lock_root(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StartError::RootLocked { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn lock_is_released_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock_root(dir.path()).unwrap());
        lock_root(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A socket nobody listens on any more, as a killed daemon leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = bind_socket(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
        assert_eq!(
            (meta.uid(), meta.gid()),
            (geteuid().as_raw(), getegid().as_raw())
        );

        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, StartError::SocketInUse { .. }), "{err}");
        drop(live);
    }

    #[test]
    fn regular_file_at_socket_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, "").unwrap();
        let err = bind_socket(&path).unwrap_err();
        assert!(matches!(err, StartError::NotASocket { .. }), "{err}");
        assert!(
            path.exists(),
            "a file that is not a socket is never removed"
        );
    }

    #[test]
    fn root_writable_by_others_is_refused_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        for mode in [0o777, 0o775, 0o757, 0o1777] {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = private_dir("root", &root).unwrap_err();
            assert!(
                matches!(err, StartError::DirWritableByOthers { mode: m, .. } if m == mode),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&root.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        }
        for mode in [0o755, 0o711, 0o700] {
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
            private_dir("root", &root).unwrap();
        }
    }

    #[test]
    fn dir_owned_by_someone_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let other = meta.uid() + 1;
        let err = check_private("state", dir.path(), &meta, other).unwrap_err();
        assert!(matches!(err, StartError::DirNotOwned { .. }), "{err}");
        assert!(err.to_string().starts_with("state "), "{err}");
        check_private("state", dir.path(), &meta, meta.uid()).unwrap();
    }

    #[test]
    fn missing_dirs_are_created_private_and_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        private_dir("state", &state).unwrap();
        for path in [dir.path().join("a"), state] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o022, 0, "{} is {mode:o}", path.display());
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = private_dir("root", &file).unwrap_err();
        assert!(matches!(err, StartError::CreateDir { .. }), "{err}");
    }
}
