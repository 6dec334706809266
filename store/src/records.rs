//! The records berthd keeps, and their protobuf schema.
//!
//! The `#[prost(..)]` attributes are the on-disk schema: a field's tag and wire type must never change
//! once released, and a tag, once removed, is never reused (see the migration rule in the crate docs).
//! In proto3 terms:
//!
//! ```text
//! message SandboxRecord {                  // column family "sandboxes", key = id
//!   string id = 1;  string name = 2;  string namespace = 3;  string uid = 4;
//!   uint32 attempt = 5;  SandboxState state = 6;  int64 created_at_ns = 7;
//!   map<string, string> labels = 8;  map<string, string> annotations = 9;
//!   string runtime_handler = 10;  string netns_path = 11;  string log_directory = 12;
//!   bytes config = 13;  repeated string ips = 14;  string shim_address = 15;  uint32 shim_pid = 16;
//!   uint32 pid_holder_pid = 17;
//! }
//! enum SandboxState { CREATING = 0; READY = 1; NOT_READY = 2; REMOVING = 3; }
//!
//! message ContainerRecord {                // column family "containers", key = id
//!   string id = 1;  string sandbox_id = 2;  string name = 3;  uint32 attempt = 4;
//!   ContainerState state = 5;  string image_ref = 6;
//!   int64 created_at_ns = 7;  int64 started_at_ns = 8;  int64 finished_at_ns = 9;
//!   int32 exit_code = 10;  string reason = 11;  string message = 12;
//!   map<string, string> labels = 13;  map<string, string> annotations = 14;
//!   string log_path = 15;  bytes config = 16;
//!   optional bytes resources = 17;  optional bytes resources_update = 18;
//! }
//! enum ContainerState { CREATING = 0; CREATED = 1; RUNNING = 2; EXITED = 3; UNKNOWN = 4; REMOVING = 5; }
//!
//! message ImageRecord {                    // column family "images", key = id
//!   string id = 1;  repeated string repo_tags = 2;  repeated string repo_digests = 3;
//!   uint64 size = 4;  bool pinned = 5;  bytes config = 6;
//! }
//!
//! message LeaseRecord {                    // column family "leases", key = id
//!   string id = 1;  int64 created_at_ns = 2;  int64 expires_at_ns = 3;
//!   repeated LeaseResource resources = 4;
//! }
//! message LeaseResource { string kind = 1; string id = 2; }
//! ```
//!
//! `resources` and `resources_update` were added in schema version 1 without a bump (see the rule in
//! the crate docs): a record written before them decodes with both absent (`None`), which is not
//! the same as present and empty (an encoded message whose every field is zero).
//!
//! Maps are `BTreeMap`s so that a record always encodes to the same bytes.
//! `Creating` is the zero value of both state enums: a record written before any side effect
//! (intent first) is in that state without saying so.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;

use crate::StoreError;

/// A kind of record; each kind lives in its own column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Sandbox,
    Container,
    Image,
    Lease,
}

impl RecordKind {
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Sandbox => "sandbox",
            RecordKind::Container => "container",
            RecordKind::Image => "image",
            RecordKind::Lease => "lease",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A value the store can hold. Sealed: the set of column families is part of the schema.
pub trait Record: Message + Default + sealed::Sealed {
    const KIND: RecordKind;

    /// The id the record is stored under.
    fn key(&self) -> &str;
}

pub(crate) fn decode<R: Record>(key: &[u8], value: &[u8]) -> Result<R, StoreError> {
    R::decode(value).map_err(|source| StoreError::Corrupt {
        kind: R::KIND.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

macro_rules! record {
    ($ty:ident, $kind:ident) => {
        impl sealed::Sealed for $ty {}
        impl Record for $ty {
            const KIND: RecordKind = RecordKind::$kind;
            fn key(&self) -> &str {
                &self.id
            }
        }
    };
}

record!(SandboxRecord, Sandbox);
record!(ContainerRecord, Container);
record!(ImageRecord, Image);
record!(LeaseRecord, Lease);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum SandboxState {
    Creating = 0,
    Ready = 1,
    NotReady = 2,
    Removing = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct SandboxRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(string, tag = "4")]
    pub uid: String,
    #[prost(uint32, tag = "5")]
    pub attempt: u32,
    /// A [`SandboxState`]; use `state()` / `set_state()`.
    #[prost(enumeration = "SandboxState", tag = "6")]
    pub state: i32,
    #[prost(int64, tag = "7")]
    pub created_at_ns: i64,
    #[prost(btree_map = "string, string", tag = "8")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "9")]
    pub annotations: BTreeMap<String, String>,
    #[prost(string, tag = "10")]
    pub runtime_handler: String,
    #[prost(string, tag = "11")]
    pub netns_path: String,
    #[prost(string, tag = "12")]
    pub log_directory: String,
    /// The daemon's encoded CRI config; the store never interprets it.
    #[prost(bytes = "vec", tag = "13")]
    pub config: Vec<u8>,
    /// The pod's IP addresses from its network setup, the primary one first; empty for a pod
    /// on the host network or one without network.
    #[prost(string, repeated, tag = "14")]
    pub ips: Vec<String>,
    /// The ttrpc address of the pod's shim (`unix://...`); empty while no shim runs.
    #[prost(string, tag = "15")]
    pub shim_address: String,
    /// The pid of the pod's shim; 0 while no shim runs.
    #[prost(uint32, tag = "16")]
    pub shim_pid: u32,
    /// The init of the pod's shared PID namespace (forked by the shim); 0 when the pod's
    /// containers do not share one.
    #[prost(uint32, tag = "17")]
    pub pid_holder_pid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerState {
    Creating = 0,
    Created = 1,
    Running = 2,
    Exited = 3,
    Unknown = 4,
    Removing = 5,
}

#[derive(Clone, PartialEq, Message)]
pub struct ContainerRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub sandbox_id: String,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
    /// A [`ContainerState`]; use `state()` / `set_state()`.
    #[prost(enumeration = "ContainerState", tag = "5")]
    pub state: i32,
    #[prost(string, tag = "6")]
    pub image_ref: String,
    #[prost(int64, tag = "7")]
    pub created_at_ns: i64,
    #[prost(int64, tag = "8")]
    pub started_at_ns: i64,
    #[prost(int64, tag = "9")]
    pub finished_at_ns: i64,
    #[prost(int32, tag = "10")]
    pub exit_code: i32,
    #[prost(string, tag = "11")]
    pub reason: String,
    #[prost(string, tag = "12")]
    pub message: String,
    #[prost(btree_map = "string, string", tag = "13")]
    pub labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "14")]
    pub annotations: BTreeMap<String, String>,
    #[prost(string, tag = "15")]
    pub log_path: String,
    /// The daemon's encoded CRI config; the store never interprets it.
    #[prost(bytes = "vec", tag = "16")]
    pub config: Vec<u8>,
    /// The container's Linux resources as applied (the daemon's encoded CRI
    /// `LinuxContainerResources`); `None` in records written before the field existed.
    #[prost(bytes = "vec", optional, tag = "17")]
    pub resources: Option<Vec<u8>>,
    /// An UpdateContainerResources the runtime may not have applied yet (the daemon's encoded
    /// CRI request), written before the runtime is asked and cleared once it answered.
    #[prost(bytes = "vec", optional, tag = "18")]
    pub resources_update: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ImageRecord {
    /// The config digest, e.g. `sha256:...`.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, repeated, tag = "2")]
    pub repo_tags: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub repo_digests: Vec<String>,
    #[prost(uint64, tag = "4")]
    pub size: u64,
    #[prost(bool, tag = "5")]
    pub pinned: bool,
    /// The image config blob; the store never interprets it.
    #[prost(bytes = "vec", tag = "6")]
    pub config: Vec<u8>,
}

/// A garbage-collection root: content and snapshots named here are kept while the lease exists.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int64, tag = "2")]
    pub created_at_ns: i64,
    /// Zero means the lease never expires.
    #[prost(int64, tag = "3")]
    pub expires_at_ns: i64,
    #[prost(message, repeated, tag = "4")]
    pub resources: Vec<LeaseResource>,
}

#[derive(Clone, PartialEq, Eq, Hash, Message)]
pub struct LeaseResource {
    /// What `id` names, e.g. `content` or `snapshot`.
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub id: String,
}

#[cfg(test)]
mod tests {
    //! Golden encodings written by hand from the tags above, so that a changed tag or wire type
    //! fails here instead of silently breaking stores on disk.

    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn int_field(tag: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(tag) << 3, out);
        varint(v, out);
    }

    fn bytes_field(tag: u32, v: &[u8], out: &mut Vec<u8>) {
        varint((u64::from(tag) << 3) | 2, out);
        varint(v.len() as u64, out);
        out.extend_from_slice(v);
    }

    fn map_entry(tag: u32, k: &str, v: &str, out: &mut Vec<u8>) {
        let mut entry = Vec::new();
        bytes_field(1, k.as_bytes(), &mut entry);
        bytes_field(2, v.as_bytes(), &mut entry);
        bytes_field(tag, &entry, out);
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sandbox_record_encoding_matches_documented_tags() {
        let mut record = SandboxRecord {
            id: "i".into(),
            name: "n".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            attempt: 2,
            state: 0,
            created_at_ns: 7,
            labels: map(&[("a", "b")]),
            annotations: map(&[("c", "d")]),
            runtime_handler: "r".into(),
            netns_path: "/n".into(),
            log_directory: "/l".into(),
            config: vec![1, 2],
            ips: vec!["10.0.0.2".into(), "fd00::2".into()],
            shim_address: "unix:///s".into(),
            shim_pid: 42,
            pid_holder_pid: 43,
        };
        record.set_state(SandboxState::NotReady);

        let mut want = Vec::new();
        bytes_field(1, b"i", &mut want);
        bytes_field(2, b"n", &mut want);
        bytes_field(3, b"ns", &mut want);
        bytes_field(4, b"u", &mut want);
        int_field(5, 2, &mut want);
        int_field(6, 2, &mut want);
        int_field(7, 7, &mut want);
        map_entry(8, "a", "b", &mut want);
        map_entry(9, "c", "d", &mut want);
        bytes_field(10, b"r", &mut want);
        bytes_field(11, b"/n", &mut want);
        bytes_field(12, b"/l", &mut want);
        bytes_field(13, &[1, 2], &mut want);
        bytes_field(14, b"10.0.0.2", &mut want);
        bytes_field(14, b"fd00::2", &mut want);
        bytes_field(15, b"unix:///s", &mut want);
        int_field(16, 42, &mut want);
        int_field(17, 43, &mut want);

        assert_eq!(record.encode_to_vec(), want);
        assert_eq!(SandboxRecord::decode(want.as_slice()).unwrap(), record);
    }

    #[test]
    fn container_record_encoding_matches_documented_tags() {
        let mut record = ContainerRecord {
            id: "i".into(),
            sandbox_id: "s".into(),
            name: "n".into(),
            attempt: 1,
            state: 0,
            image_ref: "img".into(),
            created_at_ns: 10,
            started_at_ns: 11,
            finished_at_ns: 12,
            exit_code: 137,
            reason: "OOMKilled".into(),
            message: "m".into(),
            labels: map(&[("a", "b")]),
            annotations: map(&[("c", "d")]),
            log_path: "/log".into(),
            config: vec![9],
            resources: Some(vec![8]),
            resources_update: Some(Vec::new()),
        };
        record.set_state(ContainerState::Exited);

        let mut want = Vec::new();
        bytes_field(1, b"i", &mut want);
        bytes_field(2, b"s", &mut want);
        bytes_field(3, b"n", &mut want);
        int_field(4, 1, &mut want);
        int_field(5, 3, &mut want);
        bytes_field(6, b"img", &mut want);
        int_field(7, 10, &mut want);
        int_field(8, 11, &mut want);
        int_field(9, 12, &mut want);
        int_field(10, 137, &mut want);
        bytes_field(11, b"OOMKilled", &mut want);
        bytes_field(12, b"m", &mut want);
        map_entry(13, "a", "b", &mut want);
        map_entry(14, "c", "d", &mut want);
        bytes_field(15, b"/log", &mut want);
        bytes_field(16, &[9], &mut want);
        bytes_field(17, &[8], &mut want);
        bytes_field(18, &[], &mut want);

        assert_eq!(record.encode_to_vec(), want);
        assert_eq!(ContainerRecord::decode(want.as_slice()).unwrap(), record);
    }

    #[test]
    fn container_record_without_resources_decodes_with_them_absent() {
        // What a berthd before tags 17 and 18 wrote.
        let mut old = Vec::new();
        bytes_field(1, b"i", &mut old);
        int_field(5, 2, &mut old);
        bytes_field(16, &[9], &mut old);
        let record = ContainerRecord::decode(old.as_slice()).unwrap();
        assert_eq!(
            (record.id.as_str(), record.state()),
            ("i", ContainerState::Running)
        );
        assert_eq!(record.resources, None);
        assert_eq!(record.resources_update, None);
        assert_eq!(
            record.encode_to_vec(),
            old,
            "absent fields stay absent when written back"
        );
    }

    #[test]
    fn image_record_encoding_matches_documented_tags() {
        let record = ImageRecord {
            id: "sha256:ab".into(),
            repo_tags: vec!["t1".into(), "t2".into()],
            repo_digests: vec!["d".into()],
            size: 300,
            pinned: true,
            config: vec![7],
        };

        let mut want = Vec::new();
        bytes_field(1, b"sha256:ab", &mut want);
        bytes_field(2, b"t1", &mut want);
        bytes_field(2, b"t2", &mut want);
        bytes_field(3, b"d", &mut want);
        int_field(4, 300, &mut want);
        int_field(5, 1, &mut want);
        bytes_field(6, &[7], &mut want);

        assert_eq!(record.encode_to_vec(), want);
        assert_eq!(ImageRecord::decode(want.as_slice()).unwrap(), record);
    }

    #[test]
    fn lease_record_encoding_matches_documented_tags() {
        let record = LeaseRecord {
            id: "l".into(),
            created_at_ns: 5,
            expires_at_ns: 6,
            resources: vec![LeaseResource {
                kind: "content".into(),
                id: "sha256:x".into(),
            }],
        };

        let mut resource = Vec::new();
        bytes_field(1, b"content", &mut resource);
        bytes_field(2, b"sha256:x", &mut resource);
        let mut want = Vec::new();
        bytes_field(1, b"l", &mut want);
        int_field(2, 5, &mut want);
        int_field(3, 6, &mut want);
        bytes_field(4, &resource, &mut want);

        assert_eq!(record.encode_to_vec(), want);
        assert_eq!(LeaseRecord::decode(want.as_slice()).unwrap(), record);
    }

    #[test]
    fn state_enums_keep_their_numbers() {
        let sandbox = [
            (SandboxState::Creating, 0),
            (SandboxState::Ready, 1),
            (SandboxState::NotReady, 2),
            (SandboxState::Removing, 3),
        ];
        for (state, n) in sandbox {
            assert_eq!(i32::from(state), n);
            assert_eq!(SandboxState::try_from(n), Ok(state));
        }
        let container = [
            (ContainerState::Creating, 0),
            (ContainerState::Created, 1),
            (ContainerState::Running, 2),
            (ContainerState::Exited, 3),
            (ContainerState::Unknown, 4),
            (ContainerState::Removing, 5),
        ];
        for (state, n) in container {
            assert_eq!(i32::from(state), n);
            assert_eq!(ContainerState::try_from(n), Ok(state));
        }
    }
}
