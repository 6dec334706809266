//! What only an on-disk store does: survive a close, keep a second berthd out.

#![allow(clippy::unwrap_used, reason = "a panic is how a test reports failure")]

mod common;

use berth_store::{ContainerRecord, ImageRecord, LeaseRecord, SandboxRecord, Store, StoreError};
use common::{container, image, lease, sandbox};

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root").join("meta");
    let store = Store::open(&path).unwrap();
    store.put(&sandbox("s1")).unwrap();
    assert!(path.join("CURRENT").is_file());
}

#[test]
fn reopen_after_close_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    {
        let store = Store::open(&path).unwrap();
        let mut batch = store.batch();
        batch
            .put(&sandbox("s1"))
            .put(&sandbox("s2"))
            .put(&container("c1", "s1"))
            .put(&image("sha256:1"))
            .put(&lease("l1"));
        store.write(batch).unwrap();
        store.delete::<SandboxRecord>("s2").unwrap();
    }

    let store = Store::open(&path).unwrap();
    assert_eq!(store.list::<SandboxRecord>().unwrap(), vec![sandbox("s1")]);
    assert_eq!(
        store.list::<ContainerRecord>().unwrap(),
        vec![container("c1", "s1")]
    );
    assert_eq!(
        store.list::<ImageRecord>().unwrap(),
        vec![image("sha256:1")]
    );
    assert_eq!(store.list::<LeaseRecord>().unwrap(), vec![lease("l1")]);
    drop(store);

    // And again, now that the records have been through recovery once.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list::<SandboxRecord>().unwrap().len(), 1);
}

#[test]
fn second_open_while_first_is_open_fails_with_locked_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let first = Store::open(&path).unwrap();
    first.put(&sandbox("s1")).unwrap();

    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::Locked { path: locked } => assert_eq!(locked, &path),
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("locked"), "{message}");

    // The refused open must not disturb the first one.
    first.put(&sandbox("s2")).unwrap();
    assert_eq!(first.list::<SandboxRecord>().unwrap().len(), 2);
}

#[test]
fn lock_is_released_when_the_last_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let store = Store::open(&path).unwrap();
    let clone = store.clone();
    drop(store);
    assert!(matches!(
        Store::open(&path).unwrap_err(),
        StoreError::Locked { .. }
    ));
    drop(clone);
    Store::open(&path).unwrap();
}

#[test]
fn open_of_a_file_instead_of_a_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    std::fs::write(&path, b"not a directory").unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
