//! The behaviour every backend must have, written once and run against `Store::in_memory()` and a
//! RocksDB store in a temporary directory.

#![allow(clippy::unwrap_used, reason = "a panic is how a test reports failure")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use berth_store::{
    ContainerRecord, ContainerState, ImageRecord, LeaseRecord, RecordKind, SandboxRecord,
    SandboxState, Store, StoreError,
};
use common::{container, image, lease, sandbox};

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $test() {
                    super::$test(&berth_store::Store::in_memory());
                }
            )*
        }

        mod rocksdb {
            $(
                #[test]
                fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = berth_store::Store::open(&dir.path().join("meta")).unwrap();
                    super::$test(&store);
                }
            )*
        }
    };
}

suite!(
    sandbox_round_trips_with_maps_and_state,
    container_round_trips_with_maps_and_state,
    image_round_trips,
    lease_round_trips_with_resources,
    get_of_missing_id_is_none,
    list_of_empty_kind_is_empty,
    list_is_ordered_by_id,
    put_replaces_existing_record,
    delete_removes_record_and_is_idempotent,
    same_id_in_different_kinds_is_independent,
    batch_spanning_kinds_applies_every_operation,
    batch_operations_apply_in_order,
    empty_batch_is_a_no_op,
    empty_id_is_rejected_and_rest_of_batch_not_applied,
    clones_share_the_same_data,
    concurrent_writers_from_many_threads_all_land,
    readers_never_observe_a_partial_batch,
);

fn sandbox_round_trips_with_maps_and_state(store: &Store) {
    let record = sandbox("s1");
    store.put(&record).unwrap();
    let got = store.get::<SandboxRecord>("s1").unwrap().unwrap();
    assert_eq!(got, record);
    assert_eq!(got.state(), SandboxState::Ready);
    assert_eq!(got.labels.len(), 2);
    assert_eq!(got.annotations["a/tier"], "front");
}

fn container_round_trips_with_maps_and_state(store: &Store) {
    let record = container("c1", "s1");
    store.put(&record).unwrap();
    let got = store.get::<ContainerRecord>("c1").unwrap().unwrap();
    assert_eq!(got, record);
    assert_eq!(got.state(), ContainerState::Exited);
    assert_eq!(got.exit_code, -9);
    assert_eq!(got.labels["l/app"], "web");
}

fn image_round_trips(store: &Store) {
    let record = image("sha256:1111");
    store.put(&record).unwrap();
    assert_eq!(
        store.get::<ImageRecord>("sha256:1111").unwrap(),
        Some(record)
    );
}

fn lease_round_trips_with_resources(store: &Store) {
    let record = lease("pull-1");
    store.put(&record).unwrap();
    let got = store.get::<LeaseRecord>("pull-1").unwrap().unwrap();
    assert_eq!(got.resources.len(), 2);
    assert_eq!(got, record);
}

fn get_of_missing_id_is_none(store: &Store) {
    assert_eq!(store.get::<SandboxRecord>("nope").unwrap(), None);
    assert_eq!(store.get::<ContainerRecord>("nope").unwrap(), None);
    assert_eq!(store.get::<ImageRecord>("nope").unwrap(), None);
    assert_eq!(store.get::<LeaseRecord>("nope").unwrap(), None);
}

fn list_of_empty_kind_is_empty(store: &Store) {
    assert!(store.list::<SandboxRecord>().unwrap().is_empty());
    assert!(store.list::<LeaseRecord>().unwrap().is_empty());
}

fn list_is_ordered_by_id(store: &Store) {
    for id in ["m", "b", "z", "a", "bb", "A"] {
        store.put(&sandbox(id)).unwrap();
    }
    let ids: Vec<String> = store
        .list::<SandboxRecord>()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["A", "a", "b", "bb", "m", "z"]);
}

fn put_replaces_existing_record(store: &Store) {
    let mut record = sandbox("s1");
    store.put(&record).unwrap();
    record.set_state(SandboxState::NotReady);
    record.labels.clear();
    store.put(&record).unwrap();

    let got = store.get::<SandboxRecord>("s1").unwrap().unwrap();
    assert_eq!(got.state(), SandboxState::NotReady);
    assert!(got.labels.is_empty());
    assert_eq!(store.list::<SandboxRecord>().unwrap().len(), 1);
}

fn delete_removes_record_and_is_idempotent(store: &Store) {
    store.put(&image("sha256:1")).unwrap();
    store.put(&image("sha256:2")).unwrap();
    store.delete::<ImageRecord>("sha256:1").unwrap();
    assert_eq!(store.get::<ImageRecord>("sha256:1").unwrap(), None);
    store.delete::<ImageRecord>("sha256:1").unwrap();
    store.delete::<ImageRecord>("never-existed").unwrap();
    let left = store.list::<ImageRecord>().unwrap();
    assert_eq!(left, vec![image("sha256:2")]);
}

fn same_id_in_different_kinds_is_independent(store: &Store) {
    store.put(&sandbox("x")).unwrap();
    store.put(&container("x", "x")).unwrap();
    store.delete::<SandboxRecord>("x").unwrap();
    assert_eq!(store.get::<SandboxRecord>("x").unwrap(), None);
    assert_eq!(
        store.get::<ContainerRecord>("x").unwrap(),
        Some(container("x", "x"))
    );
}

fn batch_spanning_kinds_applies_every_operation(store: &Store) {
    store.put(&image("old")).unwrap();

    let mut batch = store.batch();
    batch.put(&sandbox("s1"));
    batch.put(&container("c1", "s1"));
    batch.put(&lease("l1"));
    batch.delete::<ImageRecord>("old");
    assert_eq!(batch.len(), 4);
    store.write(batch).unwrap();

    assert_eq!(
        store.get::<SandboxRecord>("s1").unwrap(),
        Some(sandbox("s1"))
    );
    assert_eq!(
        store.get::<ContainerRecord>("c1").unwrap(),
        Some(container("c1", "s1"))
    );
    assert_eq!(store.get::<LeaseRecord>("l1").unwrap(), Some(lease("l1")));
    assert_eq!(store.get::<ImageRecord>("old").unwrap(), None);
}

fn batch_operations_apply_in_order(store: &Store) {
    let mut first = sandbox("s1");
    first.attempt = 1;
    let mut second = sandbox("s1");
    second.attempt = 2;

    let mut batch = store.batch();
    batch
        .put(&first)
        .put(&second)
        .put(&image("gone"))
        .delete::<ImageRecord>("gone")
        .delete::<LeaseRecord>("back")
        .put(&lease("back"));
    store.write(batch).unwrap();

    assert_eq!(store.get::<SandboxRecord>("s1").unwrap(), Some(second));
    assert_eq!(store.get::<ImageRecord>("gone").unwrap(), None);
    assert_eq!(
        store.get::<LeaseRecord>("back").unwrap(),
        Some(lease("back"))
    );
}

fn empty_batch_is_a_no_op(store: &Store) {
    let batch = store.batch();
    assert!(batch.is_empty());
    store.write(batch).unwrap();
    assert!(store.list::<SandboxRecord>().unwrap().is_empty());
}

fn empty_id_is_rejected_and_rest_of_batch_not_applied(store: &Store) {
    let mut batch = store.batch();
    batch.put(&sandbox("s1"));
    batch.put(&container("", "s1"));
    let err = store.write(batch).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::EmptyId {
                kind: RecordKind::Container
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "container record with an empty id");
    assert_eq!(store.get::<SandboxRecord>("s1").unwrap(), None);

    let err = store.put(&image("")).unwrap_err();
    assert!(matches!(err, StoreError::EmptyId { .. }), "{err:?}");
    let err = store.delete::<LeaseRecord>("").unwrap_err();
    assert!(matches!(err, StoreError::EmptyId { .. }), "{err:?}");
}

fn clones_share_the_same_data(store: &Store) {
    let other = store.clone();
    other.put(&lease("l1")).unwrap();
    assert_eq!(store.get::<LeaseRecord>("l1").unwrap(), Some(lease("l1")));
}

fn concurrent_writers_from_many_threads_all_land(store: &Store) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..10 {
                    store.put(&sandbox(&format!("t{t}-{i:02}"))).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.list::<SandboxRecord>().unwrap().len(), 40);
}

/// Batch i writes the counter (an image record whose size is i), then sandbox s-i, then container
/// c-i. Nothing is ever deleted, so a reader that sees the counter at n must afterwards see every
/// s-j and c-j up to n, and a reader that saw a container must afterwards see its sandbox: a
/// non-atomic write (in that order) would show a counter or a container ahead of its sandbox.
fn readers_never_observe_a_partial_batch(store: &Store) {
    const BATCHES: u64 = 60;
    let done = Arc::new(AtomicBool::new(false));

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            let done = done.clone();
            thread::spawn(move || {
                let mut checks = 0u64;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    if let Some(counter) = store.get::<ImageRecord>("counter").unwrap() {
                        let n = counter.size;
                        for j in [0, n / 2, n] {
                            assert!(
                                store
                                    .get::<SandboxRecord>(&format!("s-{j:04}"))
                                    .unwrap()
                                    .is_some()
                            );
                            assert!(
                                store
                                    .get::<ContainerRecord>(&format!("c-{j:04}"))
                                    .unwrap()
                                    .is_some()
                            );
                        }
                    }
                    let containers = store.list::<ContainerRecord>().unwrap();
                    for c in &containers {
                        assert!(
                            store.get::<SandboxRecord>(&c.sandbox_id).unwrap().is_some(),
                            "container {} visible without sandbox {}",
                            c.id,
                            c.sandbox_id
                        );
                    }
                    checks += 1;
                    if finished {
                        return checks;
                    }
                }
            })
        })
        .collect();

    for i in 0..BATCHES {
        let mut batch = store.batch();
        batch.put(&ImageRecord {
            id: "counter".to_string(),
            size: i,
            ..Default::default()
        });
        batch.put(&sandbox(&format!("s-{i:04}")));
        batch.put(&container(&format!("c-{i:04}"), &format!("s-{i:04}")));
        store.write(batch).unwrap();
    }
    done.store(true, Ordering::Release);

    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(
        store.list::<SandboxRecord>().unwrap().len(),
        BATCHES as usize
    );
    assert_eq!(
        store.list::<ContainerRecord>().unwrap().len(),
        BATCHES as usize
    );
}
