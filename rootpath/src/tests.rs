use std::io::Write;
use std::os::unix::fs::symlink;

use nix::sys::stat::SFlag;

use super::*;

const MODES: [Resolve; 2] = [Resolve::Auto, Resolve::Walk];

/// A root and, beside it, a "host" directory with a marker file the root must never reach.
struct Fixture {
    root: tempfile::TempDir,
    host: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Self {
            root: tempfile::tempdir().unwrap(),
            host: tempfile::tempdir().unwrap(),
        };
        std::fs::write(f.host.path().join("passwd"), "HOST\n").unwrap();
        f
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.at(rel)).unwrap();
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.at(rel), text).unwrap();
    }

    fn link(&self, rel: &str, target: &str) {
        symlink(target, self.at(rel)).unwrap();
    }

    /// The host directory as a relative path climbing far past the root's depth.
    fn host_up(&self) -> String {
        format!("{}{}", "../".repeat(30), self.host.path().display())
    }

    fn open(&self, resolve: Resolve) -> Root {
        Root::open_with(self.root.path(), resolve).unwrap()
    }

    fn host_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.host.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("passwd")], "host dir changed");
        assert_eq!(
            std::fs::read_to_string(self.host.path().join("passwd")).unwrap(),
            "HOST\n"
        );
    }
}

fn read(root: &Root, rel: &str) -> Result<String, Error> {
    root.read_to_string(Path::new(rel), 1 << 20)
}

#[test]
fn plain_paths_read_in_both_modes() {
    let f = Fixture::new();
    f.mkdir("etc");
    f.write("etc/passwd", "root:x:0:0::/root:/bin/sh\n");
    for mode in MODES {
        let root = f.open(mode);
        assert_eq!(
            read(&root, "etc/passwd").unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            read(&root, "/etc/passwd").unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        assert_eq!(
            read(&root, "/etc/./passwd").unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        let missing = read(&root, "etc/group").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound, "{mode:?}");
        assert!(missing.to_string().contains("etc/group"), "{missing}");
    }
}

#[test]
fn an_absolute_symlink_at_the_first_component_resolves_inside_the_root() {
    let f = Fixture::new();
    f.link("etc", &f.host.path().display().to_string());
    for mode in MODES {
        let root = f.open(mode);
        let err = read(&root, "etc/passwd").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{mode:?}");
    }
    // The same path made inside the root is what the link means.
    let inside = f.host.path().strip_prefix("/").unwrap().join("passwd");
    std::fs::create_dir_all(f.at(inside.parent().unwrap().to_str().unwrap())).unwrap();
    std::fs::write(f.root.path().join(&inside), "IMAGE\n").unwrap();
    for mode in MODES {
        assert_eq!(
            read(&f.open(mode), "etc/passwd").unwrap(),
            "IMAGE\n",
            "{mode:?}"
        );
    }
    f.host_untouched();
}

#[test]
fn relative_symlinks_climbing_out_stop_at_the_root_at_every_component() {
    let f = Fixture::new();
    let up = f.host_up();
    // First component: `etc -> ../../…/host`.
    f.link("first", &up);
    // Middle component: `a/b -> ../../…/host`, read as `a/b/passwd`.
    f.mkdir("a");
    f.link("a/b", &up);
    // Last component: `etc/passwd -> ../../…/host/passwd`.
    f.mkdir("etc");
    f.link("etc/passwd", &format!("{up}/passwd"));
    for mode in MODES {
        let root = f.open(mode);
        for rel in [
            "first/passwd",
            "a/b/passwd",
            "etc/passwd",
            "../../../../passwd",
        ] {
            let err = read(&root, rel).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{mode:?} {rel}");
        }
    }
    // The image's own file at the resolved place is read instead.
    let inside = f.host.path().strip_prefix("/").unwrap();
    std::fs::create_dir_all(f.root.path().join(inside)).unwrap();
    std::fs::write(f.root.path().join(inside).join("passwd"), "IMAGE\n").unwrap();
    for mode in MODES {
        let root = f.open(mode);
        for rel in ["first/passwd", "a/b/passwd", "etc/passwd"] {
            assert_eq!(read(&root, rel).unwrap(), "IMAGE\n", "{mode:?} {rel}");
        }
    }
    f.host_untouched();
}

#[test]
fn symlinks_inside_the_root_keep_their_meaning() {
    let f = Fixture::new();
    f.mkdir("usr/etc");
    f.write("usr/etc/passwd", "usr\n");
    f.link("etc", "usr/etc");
    f.mkdir("x/y");
    f.link("x/y/up", "../../usr");
    f.link("slash", "/");
    f.link("abs", "/usr/etc/passwd");
    for mode in MODES {
        let root = f.open(mode);
        assert_eq!(read(&root, "etc/passwd").unwrap(), "usr\n", "{mode:?}");
        assert_eq!(
            read(&root, "x/y/up/etc/passwd").unwrap(),
            "usr\n",
            "{mode:?}"
        );
        assert_eq!(
            read(&root, "slash/../../usr/etc/passwd").unwrap(),
            "usr\n",
            "{mode:?}"
        );
        assert_eq!(read(&root, "abs").unwrap(), "usr\n", "{mode:?}");
        // `slash` names the root itself.
        root.open_dir(Path::new("slash")).unwrap();
    }
}

#[test]
fn symlink_loops_fail_with_eloop() {
    let f = Fixture::new();
    f.link("a", "b");
    f.link("b", "a");
    f.link("self", "self");
    f.mkdir("etc");
    f.link("etc/passwd", "/etc/passwd");
    for mode in MODES {
        let root = f.open(mode);
        for rel in ["a", "self/passwd", "etc/passwd"] {
            let err = read(&root, rel).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(nix::libc::ELOOP),
                "{mode:?} {rel}: {err}"
            );
        }
    }
}

#[test]
fn magic_link_paths_are_not_the_process_root() {
    let f = Fixture::new();
    f.link("proc-root", "/proc/self/root/etc");
    f.link("proc-fd", "/proc/self/cwd");
    for mode in MODES {
        let root = f.open(mode);
        for rel in ["proc-root/passwd", "proc-fd/passwd"] {
            let err = read(&root, rel).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{mode:?} {rel}");
        }
    }
}

#[test]
fn only_regular_files_are_read() {
    let f = Fixture::new();
    f.mkdir("etc/passwd");
    f.link("null", "/dev/null");
    for mode in MODES {
        let root = f.open(mode);
        assert!(read(&root, "etc/passwd").is_err(), "{mode:?}");
        // `/dev/null` of the root does not exist; the host's is never opened.
        assert_eq!(
            read(&root, "null").unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}

#[test]
fn files_are_created_through_a_dangling_symlink_inside_the_root() {
    for mode in MODES {
        let f = Fixture::new();
        f.link("out", &format!("{}/created", f.host.path().display()));
        let inside = f.root.path().join(f.host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let root = f.open(mode);
        let fd = root
            .open_at(
                Path::new("out"),
                OFlag::O_WRONLY | OFlag::O_CREAT,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
        File::from(fd).write_all(b"x").unwrap();
        assert_eq!(
            std::fs::read(inside.join("created")).unwrap(),
            b"x",
            "{mode:?}"
        );
        f.host_untouched();
    }
}

#[test]
fn create_dir_all_stays_inside_the_root() {
    for mode in MODES {
        let f = Fixture::new();
        f.link("work", &f.host.path().display().to_string());
        f.link("rel", &f.host_up());
        let root = f.open(mode);
        let dir_mode = Mode::from_bits_truncate(0o755);
        // The links dangle inside the root: nothing to create under, and nothing on the host.
        for rel in ["/work/a/b", "rel/c"] {
            let err = root.create_dir_all(Path::new(rel), dir_mode).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{mode:?} {rel}");
        }
        f.host_untouched();
        // Once their target exists inside the root, they are followed there.
        let inside = f.root.path().join(f.host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        root.create_dir_all(Path::new("/work/a/b"), dir_mode)
            .unwrap();
        root.create_dir_all(Path::new("rel/c"), dir_mode).unwrap();
        root.create_dir_all(Path::new("plain/d"), dir_mode).unwrap();
        assert!(inside.join("a/b").is_dir(), "{mode:?}");
        assert!(inside.join("c").is_dir(), "{mode:?}");
        assert!(f.at("plain/d").is_dir(), "{mode:?}");
        f.host_untouched();
        assert!(root.create_dir_all(Path::new("x/../y"), dir_mode).is_err());
    }
}

#[test]
fn the_walk_refuses_a_loop_in_create_dir_all() {
    let f = Fixture::new();
    f.link("a", "b");
    f.link("b", "a");
    for mode in MODES {
        let err = f
            .open(mode)
            .create_dir_all(Path::new("a/x"), Mode::from_bits_truncate(0o755))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP), "{mode:?}");
    }
}

#[test]
fn lstat_reports_a_last_symlink_itself() {
    let f = Fixture::new();
    f.link("dev", &f.host.path().display().to_string());
    f.mkdir("usr");
    f.link("lib", "usr");
    for mode in MODES {
        let root = f.open(mode);
        let kind = |rel: &str| root.lstat(Path::new(rel)).unwrap().st_mode & SFlag::S_IFMT.bits();
        assert_eq!(kind("dev"), SFlag::S_IFLNK.bits(), "{mode:?}");
        assert_eq!(kind("/lib"), SFlag::S_IFLNK.bits(), "{mode:?}");
        assert_eq!(kind("lib/."), SFlag::S_IFDIR.bits(), "{mode:?}");
        assert_eq!(kind("usr"), SFlag::S_IFDIR.bits(), "{mode:?}");
        assert_eq!(
            root.lstat(Path::new("dev/x")).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }
}
