//! Building layer tars byte by byte, so tests can write what `tar::Builder` refuses
//! (absolute names, `..`), as a hostile image would.
#![allow(dead_code, reason = "each test binary uses part of the helpers")]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{EntryType, Header};

pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
        }
    }
}

impl Layer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(&mut self, name: &[u8], kind: EntryType, link: &str, data: &[u8], meta: &Meta) {
        let mut header = Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap();
            assert!(name.len() < 100 && link.len() < 100);
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(meta.mode);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mtime(meta.mtime);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_with(name, data, &Meta::default())
    }

    pub fn file_with(&mut self, name: &str, data: &[u8], meta: &Meta) -> &mut Self {
        self.file_raw(name.as_bytes(), data, meta)
    }

    /// A regular file whose name is any bytes (not UTF-8, say).
    pub fn file_raw(&mut self, name: &[u8], data: &[u8], meta: &Meta) -> &mut Self {
        self.raw(name, EntryType::Regular, "", data, meta);
        self
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_with(
            name,
            &Meta {
                mode: 0o755,
                ..Meta::default()
            },
        )
    }

    pub fn dir_with(&mut self, name: &str, meta: &Meta) -> &mut Self {
        self.raw(name.as_bytes(), EntryType::Directory, "", &[], meta);
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            target,
            &[],
            &Meta {
                mode: 0o777,
                ..Meta::default()
            },
        );
        self
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            target,
            &[],
            &Meta::default(),
        );
        self
    }

    pub fn device(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(kind);
        header.set_size(0);
        header.set_mode(0o620);
        header.set_uid(0);
        header.set_gid(0);
        header.set_device_major(major).unwrap();
        header.set_device_minor(minor).unwrap();
        header.set_mtime(1_600_000_000);
        header.set_cksum();
        self.builder.append(&header, &[][..]).unwrap();
        self
    }

    /// A PAX extended header for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body_len = 1 + key.len() + 1 + value.len() + 1;
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(
            b"PaxHeaders/x",
            EntryType::XHeader,
            "",
            &data,
            &Meta::default(),
        );
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        self.builder.finish().unwrap();
        std::mem::take(self.builder.get_mut())
    }
}

/// Reads an xattr of `path` itself; `None` when it is not set.
pub fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = CString::new(name).unwrap();
    let mut buf = vec![0_u8; 256];
    // SAFETY: NUL-terminated strings that outlive the call; `buf` is writable for its length.
    let n = unsafe {
        nix::libc::lgetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buf.truncate(n);
    Some(buf)
}
