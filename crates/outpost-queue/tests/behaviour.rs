//! The queue's behaviour at its edges: corruption, priorities, bounds, TTL, encryption.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_queue::{Config, Overflow, Priority, Queue, QueueError, SyncPolicy};

const KEY: [u8; 32] = [3; 32];

fn segments(dir: &Path, p: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join(p))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn drain(q: &mut Queue, now: u64) -> Vec<(Priority, u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(b) = q.peek(7, usize::MAX, now).expect("peek") {
        for i in &b.items {
            out.push((b.priority, i.seq, i.data.clone()));
        }
        q.ack(&b).expect("ack");
    }
    out
}

fn item(n: u32) -> Vec<u8> {
    format!("reading-{n:06}-temperature=21.5").into_bytes()
}

/// A queue at `<dir>/q` with items 0 to 9 appended one at a time; the dir, the path and the
/// queue.
fn ten_items() -> (tempfile::TempDir, PathBuf, Queue) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let mut q = Queue::open(&path, &KEY, Config::default()).expect("open");
    for n in 0..10 {
        q.append(Priority::Normal, &[item(n)], 1).expect("append");
    }
    (dir, path, q)
}

#[test]
fn data_on_disk_is_encrypted_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let mut q = Queue::open(&path, &KEY, Config::default()).expect("open");
    let items: Vec<_> = (0..100).map(item).collect();
    q.append(Priority::Normal, &items, 1).expect("append");
    drop(q);
    for seg in segments(&path, "p1") {
        let bytes = std::fs::read(&seg).expect("read");
        assert!(
            !bytes.windows(7).any(|w| w == b"reading"),
            "plaintext in {}",
            seg.display()
        );
    }
    // Another key is refused before anything is touched.
    let err = Queue::open(&path, &[4; 32], Config::default()).expect_err("wrong key");
    assert!(err.to_string().contains("key"), "{err}");
    let mut q = Queue::open(&path, &KEY, Config::default()).expect("reopen");
    assert_eq!(drain(&mut q, 1).len(), 100);
}

#[test]
fn a_corrupt_record_is_skipped_and_counted_and_the_rest_delivered() {
    let (_dir, path, q) = ten_items();
    drop(q);
    // Flip one byte inside the fourth record.
    let seg = &segments(&path, "p1")[0];
    let mut bytes = std::fs::read(seg).expect("read");
    let record = 24 + item(0).len() + 16;
    bytes[32 + 3 * record + 30] ^= 0x40;
    std::fs::write(seg, &bytes).expect("write");

    let mut q = Queue::open(&path, &KEY, Config::default()).expect("reopen");
    assert_eq!(q.counters().corrupt_records, 1);
    let got: Vec<Vec<u8>> = drain(&mut q, 1).into_iter().map(|(_, _, d)| d).collect();
    let want: Vec<Vec<u8>> = (0..10).filter(|&n| n != 3).map(item).collect();
    assert_eq!(got, want);
}

#[test]
fn damage_after_opening_is_skipped_when_read() {
    let (_dir, path, mut q) = ten_items();
    let seg = &segments(&path, "p1")[0];
    let mut bytes = std::fs::read(seg).expect("read");
    let record = 24 + item(0).len() + 16;
    // The length field of the sixth record: the reader must find the seventh by itself.
    bytes[32 + 5 * record + 5] ^= 0x7f;
    std::fs::write(seg, &bytes).expect("write");
    let got: Vec<Vec<u8>> = drain(&mut q, 1).into_iter().map(|(_, _, d)| d).collect();
    let want: Vec<Vec<u8>> = (0..10).filter(|&n| n != 5).map(item).collect();
    assert_eq!(got, want);
    assert_eq!(q.counters().corrupt_records, 1);
}

#[test]
fn a_segment_with_a_broken_header_is_counted_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let config = Config {
        segment_bytes: 512,
        ..Config::default()
    };
    let mut q = Queue::open(&path, &KEY, config.clone()).expect("open");
    for n in 0..40 {
        q.append(Priority::Normal, &[item(n)], 1).expect("append");
    }
    drop(q);
    let segs = segments(&path, "p1");
    assert!(segs.len() > 3);
    let mut bytes = std::fs::read(&segs[1]).expect("read");
    bytes[0] = b'X';
    std::fs::write(&segs[1], &bytes).expect("write");
    let mut q = Queue::open(&path, &KEY, config).expect("reopen");
    assert_eq!(q.counters().corrupt_records, 1);
    let got = drain(&mut q, 1);
    assert!(got.len() < 40 && got.len() > 30, "{} delivered", got.len());
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1));
    q.append(Priority::Normal, &[item(99)], 1)
        .expect("append after damage");
    assert_eq!(drain(&mut q, 1).len(), 1);
}

#[test]
fn alerts_go_first_and_each_priority_keeps_its_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::open(&dir.path().join("q"), &KEY, Config::default()).expect("open");
    q.append(Priority::Normal, &[item(1), item(2)], 1)
        .expect("append");
    q.append(Priority::High, &[item(100)], 1).expect("append");
    q.append(Priority::Normal, &[item(3)], 1).expect("append");
    q.append(Priority::High, &[item(101)], 1).expect("append");
    let got: Vec<_> = drain(&mut q, 1)
        .into_iter()
        .map(|(p, _, d)| (p, d))
        .collect();
    assert_eq!(
        got,
        vec![
            (Priority::High, item(100)),
            (Priority::High, item(101)),
            (Priority::Normal, item(1)),
            (Priority::Normal, item(2)),
            (Priority::Normal, item(3)),
        ]
    );
}

#[test]
fn overflow_drops_the_oldest_bulk_data_first_and_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let config = Config {
        max_bytes: 8 * 1024,
        segment_bytes: 1024,
        ..Config::default()
    };
    let mut q = Queue::open(&path, &KEY, config).expect("open");
    q.append(Priority::High, &[item(0)], 1).expect("alert");
    let mut dropped = 0;
    for n in 1..1000 {
        dropped += q
            .append(Priority::Normal, &[item(n)], 1)
            .expect("append")
            .dropped;
        let on_disk: u64 = ["p0", "p1"]
            .iter()
            .flat_map(|p| segments(&path, p))
            .map(|s| std::fs::metadata(s).expect("stat").len())
            .sum();
        assert!(on_disk <= 8 * 1024);
    }
    assert!(dropped > 800);
    assert_eq!(q.counters().dropped_overflow, dropped);
    let got = drain(&mut q, 1);
    // The alert survived; what is left of the rest is the newest, in order.
    assert_eq!(got[0], (Priority::High, 0, item(0)));
    assert_eq!(got.last().map(|g| g.2.clone()), Some(item(999)));
    assert_eq!(got.len() as u64 - 1 + dropped, 999);
}

#[test]
fn refuse_new_keeps_old_data_and_refuses_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        max_bytes: 4 * 1024,
        segment_bytes: 1024,
        overflow: Overflow::RefuseNew,
        ..Config::default()
    };
    let mut q = Queue::open(&dir.path().join("q"), &KEY, config).expect("open");
    let mut accepted = 0;
    let err = loop {
        match q.append(Priority::Normal, &[item(accepted)], 1) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, QueueError::Full { .. }), "{err}");
    assert!(err.to_string().contains("queue full"));
    assert_eq!(q.counters().refused, 1);
    let got: Vec<_> = drain(&mut q, 1).into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(got, (0..accepted).map(item).collect::<Vec<_>>());
    // Drained: there is room again.
    q.append(Priority::Normal, &[item(0)], 1)
        .expect("room again");
}

#[test]
fn items_older_than_the_ttl_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        ttl: Some(Duration::from_secs(60)),
        segment_bytes: 512,
        ..Config::default()
    };
    let mut q = Queue::open(&dir.path().join("q"), &KEY, config).expect("open");
    let old: Vec<_> = (0..30).map(item).collect();
    q.append(Priority::Normal, &old, 1_000).expect("append");
    q.append(Priority::Normal, &[item(30)], 50_000)
        .expect("append");
    let got = drain(&mut q, 70_000);
    assert_eq!(
        got.into_iter().map(|g| g.2).collect::<Vec<_>>(),
        vec![item(30)]
    );
    assert_eq!(q.counters().expired, 30);
}

#[test]
fn too_large_items_are_refused_and_nothing_else_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        max_item_bytes: 100,
        sync: SyncPolicy::None,
        ..Config::default()
    };
    let mut q = Queue::open(&dir.path().join("q"), &KEY, config).expect("open");
    q.append(Priority::Normal, &[item(1)], 1).expect("append");
    let err = q
        .append(Priority::Normal, &[item(2), vec![0; 101]], 1)
        .expect_err("too large");
    assert!(matches!(err, QueueError::TooLarge { .. }));
    assert_eq!(drain(&mut q, 1).len(), 1);
}

#[test]
fn sequence_numbers_never_go_back_even_when_everything_was_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let mut last = None;
    for round in 0..5 {
        let mut q = Queue::open(&path, &KEY, Config::default()).expect("open");
        let a = q
            .append(Priority::Normal, &[item(round)], 1)
            .expect("append");
        assert!(last.is_none_or(|l| a.first_seq > l));
        last = Some(a.first_seq);
        drain(&mut q, 1);
        // Even with the head file lost, numbers go on from what is on disk.
        if round == 3 {
            drop(q);
            std::fs::remove_file(path.join("p1").join("head")).expect("remove head");
        }
    }
}

#[test]
fn a_rekeyed_queue_keeps_every_item_and_opens_with_the_new_key_only() {
    let (_dir, path, mut q) = ten_items();
    q.append(Priority::High, &[item(100)], 1).expect("append");
    // The high-priority item consumed: the rest, and only the rest, come back (the
    // consumed record stays in its segment until the segment goes, re-encrypted too).
    let b = q.peek(1, usize::MAX, 1).expect("peek").expect("batch");
    q.ack(&b).expect("ack");
    drop(q);
    let new = [9u8; 32];
    let before: Vec<_> = segments(&path, "p1")
        .iter()
        .map(|s| std::fs::read(s).expect("read"))
        .collect();
    assert_eq!(outpost_queue::rekey(&path, &KEY, &new).expect("rekey"), 11);
    let after: Vec<_> = segments(&path, "p1")
        .iter()
        .map(|s| std::fs::read(s).expect("read"))
        .collect();
    assert_ne!(before, after, "the segments were not rewritten");
    // Again: nothing left to do.
    assert_eq!(outpost_queue::rekey(&path, &KEY, &new).expect("rekey"), 0);
    assert!(matches!(
        Queue::open(&path, &KEY, Config::default()),
        Err(QueueError::Meta { .. })
    ));
    // A third key is not taken for the old one.
    assert!(outpost_queue::rekey(&path, &[1; 32], &[2; 32]).is_err());
    let mut q = Queue::open(&path, &new, Config::default()).expect("open with the new key");
    let got: Vec<_> = drain(&mut q, 1).into_iter().map(|(_, _, d)| d).collect();
    let want: Vec<_> = (0..10).map(item).collect();
    assert_eq!(got, want);
}
