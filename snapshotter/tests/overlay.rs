//! The overlay snapshotter on a real filesystem, as root (the mount test mounts overlayfs).
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_snapshotter::{
    Kind, Mount, OverlaySnapshotter, SnapshotError, Snapshotter, Usage, apply_layer,
};
use common::Layer;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The value of `name=` in a mount's options.
fn option<'a>(mount: &'a Mount, name: &str) -> Option<&'a str> {
    mount
        .options
        .iter()
        .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
}

/// The layer directory (`fs/`) of an active snapshot, from its mounts.
fn upper_dir(mounts: &[Mount]) -> PathBuf {
    let m = &mounts[0];
    match m.fs_type.as_str() {
        "bind" => PathBuf::from(&m.source),
        _ => PathBuf::from(option(m, "upperdir").unwrap()),
    }
}

/// Commits a layer with the given files on top of `parent`, through prepare and commit.
fn committed(s: &OverlaySnapshotter, name: &str, parent: Option<&str>, files: &[(&str, &[u8])]) {
    let key = format!("extract-{name}");
    let mounts = s.prepare(&key, parent, no_labels()).unwrap();
    let dir = upper_dir(&mounts);
    for (path, data) in files {
        fs::write(dir.join(path), data).unwrap();
    }
    s.commit(name, &key, no_labels()).unwrap();
}

fn keys(s: &OverlaySnapshotter) -> Vec<String> {
    let mut keys = Vec::new();
    s.walk(&mut |info| {
        keys.push(info.key.clone());
        true
    })
    .unwrap();
    keys
}

#[test]
fn prepare_without_parent_is_a_writable_bind_and_view_a_read_only_one() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let mounts = s.prepare("c1", None, labels(&[("a", "b")])).unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].fs_type, "bind");
    assert_eq!(mounts[0].options, ["rbind", "rw"]);
    assert!(Path::new(&mounts[0].source).is_dir());
    assert!(mounts[0].source.starts_with(root.path().to_str().unwrap()));
    assert_eq!(s.mounts("c1").unwrap(), mounts);

    let info = s.stat("c1").unwrap();
    assert_eq!(info.kind, Kind::Active);
    assert_eq!(info.parent, None);
    assert_eq!(info.labels, labels(&[("a", "b")]));
    assert!(info.created_at_ns > 0 && info.updated_at_ns == info.created_at_ns);

    let view = s.view("v1", None, no_labels()).unwrap();
    assert_eq!(view[0].options, ["rbind", "ro"]);
    assert_eq!(s.stat("v1").unwrap().kind, Kind::View);
}

#[test]
fn prepare_needs_a_new_key_and_a_committed_parent() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    s.prepare("active", None, no_labels()).unwrap();
    assert!(matches!(
        s.prepare("active", None, no_labels()),
        Err(SnapshotError::AlreadyExists(k)) if k == "active"
    ));
    assert!(matches!(
        s.prepare("child", Some("active"), no_labels()),
        Err(SnapshotError::FailedPrecondition { key, .. }) if key == "active"
    ));
    assert!(matches!(
        s.view("child", Some("active"), no_labels()),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.prepare("child", Some("missing"), no_labels()),
        Err(SnapshotError::NotFound(k)) if k == "missing"
    ));
    assert!(matches!(s.stat("child"), Err(SnapshotError::NotFound(_))));
    assert!(matches!(s.mounts("child"), Err(SnapshotError::NotFound(_))));
    assert!(matches!(s.usage("child"), Err(SnapshotError::NotFound(_))));
}

#[test]
fn commit_turns_an_active_snapshot_into_a_committed_one() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let mounts = s.prepare("work", None, labels(&[("old", "1")])).unwrap();
    fs::write(upper_dir(&mounts).join("file"), b"content").unwrap();
    s.commit("sha256:aaaa", "work", labels(&[("new", "2")]))
        .unwrap();

    assert!(matches!(s.stat("work"), Err(SnapshotError::NotFound(_))));
    let info = s.stat("sha256:aaaa").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels, labels(&[("new", "2")]));

    // A view of the single committed layer is a read-only bind of its content.
    let view = s.view("v", Some("sha256:aaaa"), no_labels()).unwrap();
    assert_eq!(view[0].fs_type, "bind");
    assert_eq!(view[0].options, ["rbind", "ro"]);
    let layer_dir = PathBuf::from(&view[0].source);
    assert_eq!(fs::read(layer_dir.join("file")).unwrap(), b"content");
    assert!(
        !layer_dir.parent().unwrap().join("work").exists(),
        "a committed snapshot keeps no workdir"
    );

    assert!(matches!(
        s.commit("x", "v", no_labels()),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.commit("x", "sha256:aaaa", no_labels()),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
    assert!(matches!(
        s.commit("x", "missing", no_labels()),
        Err(SnapshotError::NotFound(_))
    ));
    s.prepare("other", None, no_labels()).unwrap();
    assert!(matches!(
        s.commit("sha256:aaaa", "other", no_labels()),
        Err(SnapshotError::AlreadyExists(_))
    ));
    assert_eq!(s.stat("other").unwrap().kind, Kind::Active);
    assert_eq!(s.mounts("other").unwrap()[0].options, ["rbind", "rw"]);
}

#[test]
fn mounts_stack_the_parent_chain_nearest_first() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    committed(&s, "l1", None, &[]);
    committed(&s, "l2", Some("l1"), &[]);
    let l1 = s.view("v1", Some("l1"), no_labels()).unwrap()[0]
        .source
        .clone();
    let l2 = s.view("v2", Some("l2"), no_labels()).unwrap();
    assert_eq!(l2[0].fs_type, "overlay");
    assert!(l2[0].options.contains(&"ro".to_owned()));
    assert!(option(&l2[0], "upperdir").is_none());
    let lowers = option(&l2[0], "lowerdir").unwrap().to_owned();
    let (nearest, farthest) = lowers.split_once(':').unwrap();
    assert_eq!(farthest, l1);
    assert!(nearest.ends_with("/fs") && nearest != l1);

    let active = s.prepare("c", Some("l2"), no_labels()).unwrap();
    assert_eq!(active[0].fs_type, "overlay");
    assert_eq!(option(&active[0], "lowerdir").unwrap(), lowers);
    let upper = option(&active[0], "upperdir").unwrap();
    let work = option(&active[0], "workdir").unwrap();
    assert!(Path::new(upper).is_dir() && Path::new(work).is_dir());
    assert_eq!(Path::new(upper).parent(), Path::new(work).parent());
    assert!(!active[0].options.contains(&"ro".to_owned()));

    let single = s.prepare("c1", Some("l1"), no_labels()).unwrap();
    assert_eq!(single[0].fs_type, "overlay");
    assert_eq!(option(&single[0], "lowerdir").unwrap(), l1);
    assert_eq!(s.stat("c").unwrap().parent.as_deref(), Some("l2"));
}

#[test]
fn remove_refuses_parents_and_accepts_missing_keys() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    committed(&s, "base", None, &[("f", b"x")]);
    let mounts = s.prepare("c", Some("base"), no_labels()).unwrap();
    let dir = upper_dir(&mounts).parent().unwrap().to_path_buf();
    assert!(matches!(
        s.remove("base"),
        Err(SnapshotError::FailedPrecondition { key, .. }) if key == "base"
    ));
    s.remove("c").unwrap();
    assert!(!dir.exists());
    assert!(matches!(s.stat("c"), Err(SnapshotError::NotFound(_))));
    s.remove("c").unwrap();
    s.remove("never-existed").unwrap();
    s.remove("base").unwrap();
    assert!(keys(&s).is_empty());
    let mut left: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["staging", "tmp"]);
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn walk_visits_every_snapshot_until_told_to_stop() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    committed(&s, "a", None, &[]);
    s.prepare("b", Some("a"), no_labels()).unwrap();
    s.view("c", Some("a"), no_labels()).unwrap();
    assert_eq!(keys(&s), ["a", "b", "c"]);
    let mut seen = 0;
    s.walk(&mut |_| {
        seen += 1;
        false
    })
    .unwrap();
    assert_eq!(seen, 1);
    // The visitor may call back into the snapshotter.
    s.walk(&mut |info| s.stat(&info.key).is_ok()).unwrap();
}

#[test]
fn usage_counts_the_own_layer_and_hard_links_once() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let mounts = s.prepare("c", None, no_labels()).unwrap();
    assert_eq!(s.usage("c").unwrap().inodes, 1, "the empty root dir");
    let dir = upper_dir(&mounts);
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/big"), vec![7_u8; 100_000]).unwrap();
    fs::hard_link(dir.join("d/big"), dir.join("link")).unwrap();
    std::os::unix::fs::symlink("d/big", dir.join("sym")).unwrap();
    let Usage { bytes, inodes } = s.usage("c").unwrap();
    assert_eq!(inodes, 4, "root, d, big (twice linked), sym");
    assert!((100_000..200_000).contains(&bytes), "{bytes}");

    s.commit("l", "c", no_labels()).unwrap();
    s.prepare("top", Some("l"), no_labels()).unwrap();
    assert_eq!(s.usage("top").unwrap().inodes, 1, "parents do not count");
}

#[test]
fn usage_never_follows_a_symlink_out_of_the_layer() {
    let host = tempfile::tempdir().unwrap();
    for n in 0..10 {
        fs::write(host.path().join(n.to_string()), vec![1_u8; 10_000]).unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let mounts = s.prepare("c", None, no_labels()).unwrap();
    let dir = upper_dir(&mounts);
    std::os::unix::fs::symlink(host.path(), dir.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", dir.join("up")).unwrap();
    let Usage { inodes, .. } = s.usage("c").unwrap();
    assert_eq!(inodes, 3, "root and the two links, nothing behind them");
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct MountGuard(PathBuf);

impl MountGuard {
    fn mount(mounts: &[Mount], target: &Path) -> Self {
        assert_eq!(mounts.len(), 1);
        let m = &mounts[0];
        let data = m.options.join(",");
        mount(
            Some(m.source.as_str()),
            target,
            Some(m.fs_type.as_str()),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        Self(target.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[test]
fn overlay_mount_of_a_two_layer_chain_with_an_active_layer() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();

    let base = s.stage().unwrap();
    let mut layer = Layer::new();
    layer
        .dir("etc/")
        .file("etc/os-release", b"berth")
        .file("etc/doomed", b"x")
        .dir("var/")
        .file("var/old", b"old");
    apply_layer(&layer.finish()[..], base.path()).unwrap();
    let top = s.stage().unwrap();
    let mut layer = Layer::new();
    layer
        .file("etc/.wh.doomed", b"")
        .dir("var/")
        .file("var/.wh..wh..opq", b"")
        .file("var/new", b"new");
    apply_layer(&layer.finish()[..], top.path()).unwrap();
    s.import("sha256:l1", None, base, no_labels()).unwrap();
    s.import("sha256:l2", Some("sha256:l1"), top, no_labels())
        .unwrap();

    let mounts = s.prepare("ctr", Some("sha256:l2"), no_labels()).unwrap();
    let upper = upper_dir(&mounts);
    let target = tempfile::tempdir().unwrap();
    {
        let _guard = MountGuard::mount(&mounts, target.path());
        let rootfs = target.path();
        assert_eq!(fs::read(rootfs.join("etc/os-release")).unwrap(), b"berth");
        assert!(!rootfs.join("etc/doomed").exists(), "whiteout hides it");
        assert!(!rootfs.join("var/old").exists(), "opaque dir hides it");
        assert_eq!(fs::read(rootfs.join("var/new")).unwrap(), b"new");
        fs::write(rootfs.join("etc/written"), b"upper").unwrap();
        fs::remove_file(rootfs.join("etc/os-release")).unwrap();
    }
    assert_eq!(fs::read(upper.join("etc/written")).unwrap(), b"upper");
    let whiteout = fs::symlink_metadata(upper.join("etc/os-release")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let lower = s.view("check", Some("sha256:l1"), no_labels()).unwrap();
    assert_eq!(
        fs::read(Path::new(&lower[0].source).join("etc/os-release")).unwrap(),
        b"berth",
        "the lower layer is untouched"
    );
}

#[test]
fn staged_imports_commit_by_rename_and_report_shared_layers() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let staging = s.stage().unwrap();
    let staged_dir = staging.path().parent().unwrap().to_path_buf();
    assert!(staged_dir.starts_with(root.path().join("staging")));
    fs::write(staging.path().join("f"), b"layer").unwrap();
    s.import("sha256:one", None, staging, labels(&[("l", "v")]))
        .unwrap();
    assert!(!staged_dir.exists());
    let info = s.stat("sha256:one").unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels, labels(&[("l", "v")]));
    let view = s.view("v", Some("sha256:one"), no_labels()).unwrap();
    assert_eq!(
        fs::read(Path::new(&view[0].source).join("f")).unwrap(),
        b"layer"
    );

    let again = s.stage().unwrap();
    let again_dir = again.path().parent().unwrap().to_path_buf();
    assert!(matches!(
        s.import("sha256:one", None, again, no_labels()),
        Err(SnapshotError::AlreadyExists(k)) if k == "sha256:one"
    ));
    assert!(!again_dir.exists(), "the dropped staging dir is removed");

    let orphan = s.stage().unwrap();
    assert!(matches!(
        s.import("sha256:two", Some("sha256:missing"), orphan, no_labels()),
        Err(SnapshotError::NotFound(_))
    ));
    let unused = s.stage().unwrap();
    let unused_dir = unused.path().parent().unwrap().to_path_buf();
    drop(unused);
    assert!(!unused_dir.exists());
    assert_eq!(
        fs::read_dir(root.path().join("staging")).unwrap().count(),
        0
    );
}

#[test]
fn stages_unpack_in_parallel_threads() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let staged: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = &s;
                scope.spawn(move || {
                    let staging = s.stage().unwrap();
                    let mut layer = Layer::new();
                    layer.file(&format!("layer{i}"), b"x");
                    apply_layer(&layer.finish()[..], staging.path()).unwrap();
                    staging
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut parent: Option<String> = None;
    for (i, staging) in staged.into_iter().enumerate() {
        let name = format!("chain{i}");
        s.import(&name, parent.as_deref(), staging, no_labels())
            .unwrap();
        parent = Some(name);
    }
    assert_eq!(s.stat("chain3").unwrap().parent.as_deref(), Some("chain2"));
}

#[test]
fn reopen_rebuilds_the_index() {
    let root = tempfile::tempdir().unwrap();
    {
        let s = OverlaySnapshotter::open(root.path()).unwrap();
        committed(&s, "sha256:base", None, &[("f", b"x")]);
        s.prepare(
            "ctr/rw layer: any string",
            Some("sha256:base"),
            labels(&[("k", "v")]),
        )
        .unwrap();
        s.view("v", Some("sha256:base"), no_labels()).unwrap();
    }
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    assert_eq!(keys(&s), ["ctr/rw layer: any string", "sha256:base", "v"]);
    let active = s.stat("ctr/rw layer: any string").unwrap();
    assert_eq!(active.kind, Kind::Active);
    assert_eq!(active.parent.as_deref(), Some("sha256:base"));
    assert_eq!(active.labels, labels(&[("k", "v")]));
    assert_eq!(s.stat("sha256:base").unwrap().kind, Kind::Committed);
    assert_eq!(s.stat("v").unwrap().kind, Kind::View);
    let mounts = s.mounts("ctr/rw layer: any string").unwrap();
    assert_eq!(mounts[0].fs_type, "overlay");
    assert!(matches!(
        s.remove("sha256:base"),
        Err(SnapshotError::FailedPrecondition { .. })
    ));
}

#[test]
fn open_cleans_up_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let (active_dir, fs_dir) = {
        let s = OverlaySnapshotter::open(root.path()).unwrap();
        committed(&s, "base", None, &[]);
        let mounts = s.prepare("k", None, no_labels()).unwrap();
        let fs_dir = upper_dir(&mounts);
        fs::write(fs_dir.join("data"), b"kept").unwrap();
        (fs_dir.parent().unwrap().to_path_buf(), fs_dir)
    };
    // A snapshot half-built in tmp/, a staging dir mid-unpack, a removal mid-delete.
    let half = root.path().join("tmp/new-crashed");
    fs::create_dir_all(half.join("fs/some/dir")).unwrap();
    fs::write(half.join("fs/some/dir/file"), b"partial").unwrap();
    let staged = root.path().join("staging/stage-crashed/fs");
    fs::create_dir_all(&staged).unwrap();
    fs::write(staged.join("partial"), b"p").unwrap();
    fs::write(root.path().join("tmp/stray-file"), b"").unwrap();
    // A commit of "k" as "committed-k" interrupted after its metadata was rewritten.
    let meta_path = active_dir.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).unwrap()).unwrap();
    meta["key"] = "committed-k".into();
    meta["kind"] = "committed".into();
    fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    fs::write(active_dir.join("meta.json.tmp"), b"{").unwrap();

    let s = OverlaySnapshotter::open(root.path()).unwrap();
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(root.path().join("staging")).unwrap().count(),
        0
    );
    assert_eq!(keys(&s), ["base", "committed-k"]);
    assert_eq!(s.stat("committed-k").unwrap().kind, Kind::Committed);
    assert!(!fs_dir.exists(), "moved to the committed id");
    let view = s.view("v", Some("committed-k"), no_labels()).unwrap();
    let committed_dir = PathBuf::from(&view[0].source);
    assert_eq!(fs::read(committed_dir.join("data")).unwrap(), b"kept");
    let dir = committed_dir.parent().unwrap();
    assert!(!dir.join("work").exists() && !dir.join("meta.json.tmp").exists());
}

#[test]
fn snapshotter_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<OverlaySnapshotter>();
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..20 {
                    let key = format!("t{t}-{i}");
                    s.prepare(&key, None, no_labels()).unwrap();
                    s.commit(&format!("{key}-c"), &key, no_labels()).unwrap();
                }
            });
        }
    });
    assert_eq!(keys(&s).len(), 80);
}

#[test]
fn chains_too_deep_for_one_mount_are_refused_before_creating_anything() {
    let root = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(root.path()).unwrap();
    let bottom = s.stage().unwrap();
    fs::write(bottom.path().join("bottom"), b"deep").unwrap();
    s.import("layer-1", None, bottom, no_labels()).unwrap();
    let mut deepest_ok = None;
    for depth in 2..=200 {
        let name = format!("layer-{depth}");
        let parent = format!("layer-{}", depth - 1);
        s.import(&name, Some(&parent), s.stage().unwrap(), no_labels())
            .unwrap();
        match s.prepare("probe", Some(&name), no_labels()) {
            Ok(_) => {
                s.remove("probe").unwrap();
                deepest_ok = Some(depth);
            }
            Err(SnapshotError::FailedPrecondition { key, message }) => {
                assert_eq!(key, "probe");
                assert!(message.contains("overlay options"), "{message}");
                assert!(matches!(s.stat("probe"), Err(SnapshotError::NotFound(_))));
                assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let depth = deepest_ok.unwrap();
    assert!((20..200).contains(&depth), "{depth}");

    // The deepest chain accepted really mounts.
    let mounts = s
        .prepare("ctr", Some(&format!("layer-{depth}")), no_labels())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let _guard = MountGuard::mount(&mounts, target.path());
    assert_eq!(fs::read(target.path().join("bottom")).unwrap(), b"deep");
}
