//! Bounded fan-out of blocking work on scoped threads.
//!
//! Start-up recovery talks to one shim per pod; each call may wait for a timeout when a shim
//! hangs. Running them side by side keeps recovery of many pods close to the slowest one,
//! without a thread per pod.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many shims start-up recovery talks to at once.
pub const RECOVERY_WORKERS: usize = 16;

/// Calls `f` once for every item, on at most `workers` threads, and returns when all calls
/// have returned. Items are taken in order; no order of completion is promised.
pub fn for_each<T: Sync>(items: &[T], workers: usize, f: impl Fn(&T) + Sync) {
    let workers = workers.clamp(1, items.len().max(1));
    if workers == 1 {
        items.iter().for_each(f);
        return;
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    f(item);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_item_is_visited_once() {
        let items: Vec<usize> = (0..100).collect();
        let seen = Mutex::new(Vec::new());
        for_each(&items, 8, |i| seen.lock().unwrap().push(*i));
        let mut seen = seen.into_inner().unwrap();
        seen.sort_unstable();
        assert_eq!(seen, items);
    }

    #[test]
    fn no_more_than_the_worker_count_run_at_once() {
        let items = vec![(); 24];
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        for_each(&items, 4, |()| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::yield_now();
            running.fetch_sub(1, Ordering::SeqCst);
        });
        assert!(peak.load(Ordering::SeqCst) <= 4);
    }

    #[test]
    fn workers_run_side_by_side() {
        // Each call waits for all four to have started: one thread alone would never get there.
        let items = vec![(); 4];
        let arrived = Mutex::new(0);
        let all_here = Condvar::new();
        for_each(&items, 4, |()| {
            let mut n = arrived.lock().unwrap();
            *n += 1;
            all_here.notify_all();
            let (n, timeout) = all_here
                .wait_timeout_while(n, Duration::from_secs(10), |n| *n < 4)
                .unwrap();
            assert!(!timeout.timed_out(), "only {} of 4 calls ran at once", *n);
        });
    }

    #[test]
    fn empty_input_calls_nothing() {
        let items: Vec<u8> = Vec::new();
        for_each(&items, 8, |_| panic!("called"));
    }
}
