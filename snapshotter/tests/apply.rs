//! The layer applier against hand-built tars, as root.
#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use berth_snapshotter::{ApplyError, apply_layer};
use common::{Layer, Meta, get_xattr};
use nix::sys::stat::{major, minor};
use tar::EntryType;

fn apply(layer: &mut Layer, dest: &Path) -> Result<berth_snapshotter::ApplyStats, ApplyError> {
    apply_layer(&layer.finish()[..], dest)
}

/// A directory outside the destination that no entry may touch, with its listing.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("keep"), b"original").unwrap();
        Self { dir }
    }

    /// The sentinel's path without its leading `/`.
    fn rel(&self) -> String {
        self.dir
            .path()
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_owned()
    }

    fn assert_untouched(&self) {
        let names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec!["keep"],
            "entries appeared outside the layer root"
        );
        assert_eq!(fs::read(self.dir.path().join("keep")).unwrap(), b"original");
    }
}

#[test]
fn files_dirs_modes_ownership_and_mtimes_are_applied() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .dir_with(
            "./",
            &Meta {
                mode: 0o700,
                ..Meta::default()
            },
        )
        .dir_with(
            "usr/",
            &Meta {
                mode: 0o755,
                uid: 1000,
                gid: 1001,
                mtime: 1_000_000,
            },
        )
        .file_with(
            "usr/suid",
            b"hello",
            &Meta {
                mode: 0o4755,
                uid: 1000,
                gid: 1001,
                mtime: 1_234_567,
            },
        )
        .file_with(
            "usr/sgid",
            b"world!",
            &Meta {
                mode: 0o2711,
                uid: 0,
                gid: 50,
                mtime: 7,
            },
        )
        .dir_with(
            "tmp",
            &Meta {
                mode: 0o1777,
                ..Meta::default()
            },
        )
        .file("deep/implicit/parents", b"x");
    let stats = apply(&mut layer, dest.path()).unwrap();
    assert_eq!(stats.entries, 6);
    assert_eq!(stats.bytes, 12);

    let root = dest.path();
    let usr = fs::metadata(root.join("usr")).unwrap();
    assert_eq!((usr.uid(), usr.gid()), (1000, 1001));
    assert_eq!(usr.mtime(), 1_000_000, "dir mtime is set after its content");

    let suid = fs::metadata(root.join("usr/suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1000, 1001));
    assert_eq!(suid.mtime(), 1_234_567);
    assert_eq!(fs::read(root.join("usr/suid")).unwrap(), b"hello");

    let sgid = fs::metadata(root.join("usr/sgid")).unwrap();
    assert_eq!(sgid.permissions().mode() & 0o7777, 0o2711);
    assert_eq!(sgid.gid(), 50);

    let tmp = fs::metadata(root.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);

    let implicit = fs::metadata(root.join("deep/implicit")).unwrap();
    assert!(implicit.is_dir());
    assert_eq!(implicit.permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::read(root.join("deep/implicit/parents")).unwrap(), b"x");
}

#[test]
fn whiteouts_become_char_devices_and_opaque_markers_an_xattr() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .file(".wh.gone", b"")
        .dir("etc/")
        .file("etc/.wh.hosts", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/kept", b"k")
        .file(".wh..wh.plnk", b"")
        .file_raw(b".wh.caf\xe9", b"", &Meta::default());
    let stats = apply(&mut layer, dest.path()).unwrap();
    assert_eq!(stats.entries, 8);

    for name in ["gone", "etc/hosts"] {
        let meta = fs::symlink_metadata(dest.path().join(name)).unwrap();
        assert!(
            meta.file_type().is_char_device(),
            "{name} is not a char device"
        );
        assert_eq!((major(meta.rdev()), minor(meta.rdev())), (0, 0));
    }
    assert!(!dest.path().join(".wh.gone").exists());
    let latin1 = dest.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    assert!(
        fs::symlink_metadata(latin1)
            .unwrap()
            .file_type()
            .is_char_device(),
        "a whiteout of a name that is not UTF-8 keeps its bytes"
    );
    assert!(!dest.path().join("etc/.wh.hosts").exists());
    assert_eq!(
        get_xattr(&dest.path().join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.path().join("opaque/.wh..wh..opq").exists());
    assert_eq!(fs::read(dest.path().join("opaque/kept")).unwrap(), b"k");
    assert!(get_xattr(&dest.path().join("etc"), "trusted.overlay.opaque").is_none());
    let names: Vec<_> = fs::read_dir(dest.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".wh"))
        .collect();
    assert!(names.is_empty(), "whiteout meta files left: {names:?}");
}

#[test]
fn hard_links_share_the_inode() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .file("bin/busybox", b"#!busybox")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("/bin/ls", "/bin/busybox")
        .hardlink("usr/bin/env", "./bin/busybox");
    apply(&mut layer, dest.path()).unwrap();
    let ino = fs::metadata(dest.path().join("bin/busybox")).unwrap().ino();
    for name in ["bin/sh", "bin/ls", "usr/bin/env"] {
        assert_eq!(
            fs::metadata(dest.path().join(name)).unwrap().ino(),
            ino,
            "{name}"
        );
    }
    assert_eq!(
        fs::metadata(dest.path().join("bin/busybox"))
            .unwrap()
            .nlink(),
        4
    );
}

#[test]
fn symlinks_are_kept_verbatim() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .symlink("rel", "../../x/y")
        .symlink("abs", "/etc/passwd")
        .symlink("dir/dot", ".");
    apply(&mut layer, dest.path()).unwrap();
    assert_eq!(
        fs::read_link(dest.path().join("rel")).unwrap(),
        Path::new("../../x/y")
    );
    assert_eq!(
        fs::read_link(dest.path().join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(dest.path().join("dir/dot")).unwrap(),
        Path::new(".")
    );
}

#[test]
fn dotdot_and_absolute_paths_stay_inside_the_root() {
    let dest = tempfile::tempdir().unwrap();
    let sentinel = Sentinel::new();
    let mut layer = Layer::new();
    layer
        .file("../../../escaped", b"1")
        .file("/abs/file", b"2")
        .file("a/../../b", b"3")
        .file(&format!("/{}/dropped", sentinel.rel()), b"4")
        .file(
            &format!("../../../../../../{}/dropped2", sentinel.rel()),
            b"5",
        );
    apply(&mut layer, dest.path()).unwrap();
    assert_eq!(fs::read(dest.path().join("escaped")).unwrap(), b"1");
    assert_eq!(fs::read(dest.path().join("abs/file")).unwrap(), b"2");
    assert_eq!(fs::read(dest.path().join("b")).unwrap(), b"3");
    let inside = dest.path().join(sentinel.rel());
    assert_eq!(fs::read(inside.join("dropped")).unwrap(), b"4");
    assert_eq!(fs::read(inside.join("dropped2")).unwrap(), b"5");
    sentinel.assert_untouched();
}

#[test]
fn entries_through_symlinks_leaving_the_root_land_inside() {
    let dest = tempfile::tempdir().unwrap();
    let sentinel = Sentinel::new();
    let rel = sentinel.rel();
    let depth = dest.path().components().count();
    let up = "../".repeat(depth + 2);
    let mut layer = Layer::new();
    layer
        .symlink("slash", "/")
        .symlink("up", &up)
        .symlink("sent", &format!("/{rel}"))
        .symlink("sent-file", &format!("/{rel}/keep"))
        .dir("d/")
        .symlink("d/up", "../../..")
        .file(&format!("slash/{rel}/via-slash"), b"1")
        .file(&format!("up/{rel}/via-up"), b"2")
        .file("sent/via-abs-link", b"3")
        .file("d/up/via-dotdot-link", b"4")
        .dir("sent/newdir/")
        .file("sent-file", b"replaced the link, not its target");
    apply(&mut layer, dest.path()).unwrap();
    let inside = dest.path().join(&rel);
    assert_eq!(fs::read(inside.join("via-slash")).unwrap(), b"1");
    assert_eq!(fs::read(inside.join("via-up")).unwrap(), b"2");
    assert_eq!(fs::read(inside.join("via-abs-link")).unwrap(), b"3");
    assert!(inside.join("newdir").is_dir());
    assert_eq!(fs::read(dest.path().join("via-dotdot-link")).unwrap(), b"4");
    let sent_file = fs::symlink_metadata(dest.path().join("sent-file")).unwrap();
    assert!(sent_file.is_file());
    sentinel.assert_untouched();
}

#[test]
fn hard_links_leaving_the_layer_fail() {
    for target in ["/etc/passwd", "../x", "../../../../etc/passwd", "missing"] {
        let dest = tempfile::tempdir().unwrap();
        let mut layer = Layer::new();
        layer
            .file("x", b"inside? no: ../x resolves to /x")
            .hardlink("evil", target);
        if target == "../x" {
            // `../x` clamps to `/x`, which this layer wrote: that one is inside.
            apply(&mut layer, dest.path()).unwrap();
            let ino = fs::metadata(dest.path().join("x")).unwrap().ino();
            assert_eq!(fs::metadata(dest.path().join("evil")).unwrap().ino(), ino);
            continue;
        }
        match apply(&mut layer, dest.path()) {
            Err(ApplyError::HardlinkOutsideLayer { entry, target: t }) => {
                assert_eq!(entry, Path::new("evil"));
                assert_eq!(t, Path::new(target));
            }
            other => panic!("hard link to {target}: {other:?}"),
        }
        assert!(!dest.path().join("evil").exists());
    }

    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer.hardlink("passwd", "../x");
    let err = apply(&mut layer, dest.path()).unwrap_err();
    assert!(
        matches!(err, ApplyError::HardlinkOutsideLayer { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("passwd"), "{err}");

    // Through a symlink to the host's /etc: resolved inside the root, where nothing is.
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .symlink("hostetc", "/etc")
        .hardlink("stolen", "hostetc/passwd");
    let err = apply(&mut layer, dest.path()).unwrap_err();
    assert!(
        matches!(err, ApplyError::HardlinkOutsideLayer { .. }),
        "{err:?}"
    );
}

#[test]
fn device_nodes_and_fifos_are_created() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .device("dev/null", EntryType::Char, 1, 3)
        .device("dev/loop0", EntryType::Block, 7, 0)
        .device("run/fifo", EntryType::Fifo, 0, 0);
    apply(&mut layer, dest.path()).unwrap();
    let null = fs::symlink_metadata(dest.path().join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((major(null.rdev()), minor(null.rdev())), (1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o620);
    let loop0 = fs::symlink_metadata(dest.path().join("dev/loop0")).unwrap();
    assert!(loop0.file_type().is_block_device());
    assert_eq!((major(loop0.rdev()), minor(loop0.rdev())), (7, 0));
    let fifo = fs::symlink_metadata(dest.path().join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
}

#[test]
fn pax_records_set_xattrs_mtime_and_owner() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .pax(&[
            ("SCHILY.xattr.user.berth", b"value\0with nul"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("mtime", b"1700000000.25"),
            ("uid", b"3000000"),
        ])
        .file("f", b"data")
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("d/")
        .file("d/inner", b"");
    apply(&mut layer, dest.path()).unwrap();
    let f = dest.path().join("f");
    assert_eq!(
        get_xattr(&f, "user.berth").as_deref(),
        Some(&b"value\0with nul"[..])
    );
    assert!(
        get_xattr(&f, "trusted.overlay.redirect").is_none(),
        "layers must not steer overlayfs"
    );
    let meta = fs::metadata(&f).unwrap();
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_700_000_000, 250_000_000)
    );
    assert_eq!(meta.uid(), 3_000_000);
    assert_eq!(
        get_xattr(&dest.path().join("d"), "user.dir").as_deref(),
        Some(&b"d"[..])
    );
}

#[test]
fn entries_replace_what_is_there() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer
        .dir("a/")
        .file("a/child", b"c")
        .file("a", b"dir replaced by file")
        .file("b", b"file")
        .dir("b/")
        .file("b/inside", b"file replaced by dir")
        .dir("keep/")
        .file("keep/one", b"1")
        .dir_with(
            "keep/",
            &Meta {
                mode: 0o700,
                ..Meta::default()
            },
        )
        .file("keep/two", b"2")
        .file("f", b"old")
        .file("f", b"new")
        .symlink("s", "/etc")
        .symlink("s", "/usr")
        .dir("gone/")
        .dir("gone/sub/")
        .file("gone", b"a dir whose subdir had a time to set");
    apply(&mut layer, dest.path()).unwrap();
    assert_eq!(
        fs::read(dest.path().join("a")).unwrap(),
        b"dir replaced by file"
    );
    assert_eq!(
        fs::read(dest.path().join("b/inside")).unwrap(),
        b"file replaced by dir"
    );
    assert_eq!(fs::read(dest.path().join("keep/one")).unwrap(), b"1");
    assert_eq!(fs::read(dest.path().join("keep/two")).unwrap(), b"2");
    assert_eq!(
        fs::metadata(dest.path().join("keep"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o700
    );
    assert_eq!(fs::read(dest.path().join("f")).unwrap(), b"new");
    assert_eq!(
        fs::read_link(dest.path().join("s")).unwrap(),
        Path::new("/usr")
    );
    assert!(dest.path().join("gone").is_file());
}

#[test]
fn errors_name_the_entry() {
    let dest = tempfile::tempdir().unwrap();
    let mut layer = Layer::new();
    layer.file("plain", b"").file("plain/under-a-file", b"");
    let err = apply(&mut layer, dest.path()).unwrap_err();
    match &err {
        ApplyError::Entry { entry, .. } => assert_eq!(entry, Path::new("plain/under-a-file")),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("plain/under-a-file"), "{err}");
}
