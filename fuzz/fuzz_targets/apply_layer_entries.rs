//! The layer applier on tars built from arbitrary entries, so that every input reaches the
//! applier (raw bytes rarely make a header with a valid checksum; `apply_layer` covers those).
//! Paths are drawn from a few names, `.`, `..`, empty components and the absolute path of a
//! "host" directory next to the destination, so that entries collide, whiteouts hit what earlier
//! entries made, and links point out of the layer. Besides not panicking it checks the applier's
//! promise: nothing outside the destination is created, changed or hard-linked into it.
//!
//! Run as root, as `apply_layer`.

#![no_main]

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"host file\n";

#[derive(Arbitrary, Debug)]
enum Part {
    A,
    B,
    Etc,
    Dot,
    DotDot,
    Empty,
    /// The absolute path of `<base>/host`, as a layer would name a host path.
    Host,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct TarPath {
    absolute: bool,
    parts: Vec<Part>,
}

impl TarPath {
    /// The path as tar bytes, `whiteout` prefixed to its last component.
    fn render(&self, whiteout: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        if self.absolute {
            out.push(b'/');
        }
        let last = self.parts.len().saturating_sub(1);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            if i == last
                && let Some(prefix) = whiteout
            {
                out.extend_from_slice(prefix.as_bytes());
            }
            match part {
                Part::A => out.push(b'a'),
                Part::B => out.push(b'b'),
                Part::Etc => out.extend_from_slice(b"etc"),
                Part::Dot => out.push(b'.'),
                Part::DotDot => out.extend_from_slice(b".."),
                Part::Empty => {}
                Part::Host => out.extend_from_slice(host().as_os_str().as_bytes()),
                Part::Raw(s) => out.extend_from_slice(s.as_bytes()),
            }
        }
        out
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(TarPath),
    Hardlink(TarPath),
    Char(u16, u16),
    Block(u16, u16),
    Fifo,
    /// `.wh.<last part>`.
    Whiteout,
    /// `<path>/.wh..wh..opq`.
    Opaque,
    /// Any other type byte.
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum PaxKey {
    Path,
    Linkpath,
    Mtime,
    UserXattr,
    OverlayOpaque,
    OverlayRedirect,
    Capability,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    path: TarPath,
    kind: Kind,
    mode: u16,
    uid: u16,
    gid: u16,
    mtime: u32,
    pax: Vec<(PaxKey, Vec<u8>)>,
}

fn base() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = tempfile::Builder::new()
            .prefix("berth-fuzz-entries-")
            .tempdir()
            .expect("fuzz base dir");
        std::fs::create_dir(base.path().join("host")).expect("host dir");
        std::fs::write(base.path().join("host/secret"), SECRET).expect("host file");
        base
    })
    .path()
}

fn host() -> PathBuf {
    base().join("host")
}

/// One ustar header block for `name`, `link` and `kind`; names longer than the header holds
/// are cut, as PAX records can carry the full ones.
fn header(name: &[u8], link: &[u8], kind: tar::EntryType, size: u64, e: &Entry) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let old = h.as_old_mut();
    let n = name.len().min(old.name.len());
    old.name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(old.linkname.len());
    old.linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(u32::from(e.mode));
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(u64::from(e.mtime));
    if let Kind::Char(major, minor) | Kind::Block(major, minor) = e.kind {
        let _ = h.set_device_major(u32::from(major));
        let _ = h.set_device_minor(u32::from(minor));
    }
    h.set_cksum();
    h
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    // The length counts its own digits.
    let mut len = body + body.to_string().len();
    if len.to_string().len() != (len - body) {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn build(entries: &[Entry]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let whiteout = matches!(e.kind, Kind::Whiteout).then_some(".wh.");
        let mut name = e.path.render(whiteout);
        if let Kind::Opaque = e.kind {
            if !name.is_empty() && !name.ends_with(b"/") {
                name.push(b'/');
            }
            name.extend_from_slice(b".wh..wh..opq");
        }
        let (kind, link, data): (_, Vec<u8>, &[u8]) = match &e.kind {
            Kind::File(data) => (tar::EntryType::Regular, Vec::new(), data),
            Kind::Dir => (tar::EntryType::Directory, Vec::new(), &[]),
            Kind::Symlink(t) => (tar::EntryType::Symlink, t.render(None), &[]),
            Kind::Hardlink(t) => (tar::EntryType::Link, t.render(None), &[]),
            Kind::Char(..) => (tar::EntryType::Char, Vec::new(), &[]),
            Kind::Block(..) => (tar::EntryType::Block, Vec::new(), &[]),
            Kind::Fifo => (tar::EntryType::Fifo, Vec::new(), &[]),
            Kind::Whiteout | Kind::Opaque => (tar::EntryType::Regular, Vec::new(), &[]),
            Kind::Other(b) => (tar::EntryType::new(*b), Vec::new(), &[]),
        };
        let mut pax = Vec::new();
        if name.len() > 100 {
            pax.extend(pax_record("path", &name));
        }
        if link.len() > 100 {
            pax.extend(pax_record("linkpath", &link));
        }
        for (key, value) in &e.pax {
            let key = match key {
                PaxKey::Path => "path",
                PaxKey::Linkpath => "linkpath",
                PaxKey::Mtime => "mtime",
                PaxKey::UserXattr => "SCHILY.xattr.user.fuzz",
                PaxKey::OverlayOpaque => "SCHILY.xattr.trusted.overlay.opaque",
                PaxKey::OverlayRedirect => "SCHILY.xattr.trusted.overlay.redirect",
                PaxKey::Capability => "SCHILY.xattr.security.capability",
                PaxKey::Raw(k) => k,
            };
            pax.extend(pax_record(key, value));
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..3].copy_from_slice(b"pax");
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            tar.append(&h, pax.as_slice()).expect("append to a Vec");
        }
        let h = header(&name, &link, kind, data.len() as u64, e);
        tar.append(&h, data).expect("append to a Vec");
    }
    tar.into_inner().expect("finish a Vec")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list fuzz dir")
        .map(|e| {
            e.expect("fuzz dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Every inode under `dir` (not following symlinks) with the links found to it there.
fn inodes(dir: &Path, seen: &mut HashMap<(u64, u64), (u64, u64)>) {
    for entry in std::fs::read_dir(dir).expect("walk upper dir") {
        let path = entry.expect("upper dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("lstat upper entry");
        if meta.is_dir() {
            inodes(&path, seen);
        } else {
            seen.entry((meta.dev(), meta.ino()))
                .or_insert((meta.nlink(), 0))
                .1 += 1;
        }
    }
}

fuzz_target!(|entries: Vec<Entry>| {
    let tar = build(&entries);
    let layer = base().join("layer");
    let upper = layer.join("upper");
    std::fs::create_dir_all(&upper).expect("create upper dir");
    let _ = berth_snapshotter::apply_layer(tar.as_slice(), &upper);

    assert_eq!(
        names(base()),
        ["host", "layer"],
        "an entry escaped to the base dir"
    );
    assert_eq!(names(&layer), ["upper"], "an entry escaped the upper dir");
    assert_eq!(
        names(&host()),
        ["secret"],
        "an entry was created in the host dir"
    );
    let secret = host().join("secret");
    assert_eq!(std::fs::read(&secret).expect("read host file"), SECRET);
    assert_eq!(
        std::fs::metadata(&secret).expect("stat host file").nlink(),
        1,
        "the host file was hard-linked"
    );
    let mut seen = HashMap::new();
    inodes(&upper, &mut seen);
    for (nlink, found) in seen.values() {
        assert_eq!(nlink, found, "an inode in the layer has links outside it");
    }
    std::fs::remove_dir_all(&layer).expect("remove upper dir");
});
