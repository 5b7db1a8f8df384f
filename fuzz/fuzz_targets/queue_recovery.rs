//! The export queue's files after a crash, a torn write or a bad disk: a valid queue whose
//! segment, head or meta file is cut and has bytes flipped, then opened as on start. Opening
//! may refuse but never panic; every item it gives back is one that was appended (the
//! frames are authenticated, so no damage can forge or alter an item); and the recovered
//! queue takes a new item and gives it back after another reopen.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use outpost_queue::{Config, Priority, Queue, SyncPolicy};

const KEY: [u8; 32] = [7; 32];
const ITEMS: [&[u8]; 5] = [
    b"alert-1",
    b"alert-2",
    b"reading-1",
    b"reading-2",
    b"reading-3",
];

#[derive(Debug, Arbitrary)]
struct Damage {
    /// Which file: a segment or head of either priority, or the meta file.
    file: u8,
    /// Cut the file to this many bytes (modulo its length + 1), if given.
    cut: Option<u16>,
    /// (offset, xor) pairs applied after the cut.
    flips: Vec<(u16, u8)>,
    /// Bytes appended (a torn frame of a write that never completed).
    tail: Vec<u8>,
}

fn config() -> Config {
    // No fsync: what is on disk is whatever the damage left, and an exec stays fast.
    Config {
        max_bytes: 1 << 20,
        sync: SyncPolicy::None,
        ..Config::default()
    }
}

/// The files of a queue holding ITEMS, made once: (path relative to the queue, bytes).
static TEMPLATE: LazyLock<Vec<(PathBuf, Vec<u8>)>> = LazyLock::new(|| {
    let dir = scratch("template");
    let mut q = Queue::open(&dir, &KEY, config()).expect("a new queue");
    q.append(Priority::High, &ITEMS[..2], 1).expect("append");
    q.append(Priority::Normal, &ITEMS[2..], 2).expect("append");
    drop(q);
    let mut files = Vec::new();
    collect(&dir, &dir, &mut files);
    files.sort();
    files
});

fn scratch(name: &str) -> PathBuf {
    // A RAM-backed directory where there is one.
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() { base.to_path_buf() } else { std::env::temp_dir() };
    let d = base.join(format!("outpost-fuzz-queue-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).expect("inside").to_path_buf();
            out.push((rel, std::fs::read(&p).expect("read")));
        }
    }
}

fn drain(q: &mut Queue) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Ok(Some(batch)) = q.peek(100, 1 << 20, 3) {
        got.extend(batch.items.iter().map(|i| i.data.clone()));
        if q.ack(&batch).is_err() {
            break;
        }
    }
    got
}

libfuzzer_sys::fuzz_target!(|d: Damage| {
    let dir = scratch("work");
    let template = &*TEMPLATE;
    for (rel, bytes) in template {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write");
    }
    let (rel, bytes) = &template[usize::from(d.file) % template.len()];
    let mut damaged = bytes.clone();
    if let Some(cut) = d.cut {
        damaged.truncate(usize::from(cut) % (damaged.len() + 1));
    }
    for (at, x) in &d.flips {
        if !damaged.is_empty() {
            let n = damaged.len();
            damaged[usize::from(*at) % n] ^= x;
        }
    }
    damaged.extend_from_slice(&d.tail);
    std::fs::write(dir.join(rel), &damaged).expect("write");

    let Ok(mut q) = Queue::open(&dir, &KEY, config()) else {
        return;
    };
    for item in drain(&mut q) {
        assert!(
            ITEMS.contains(&item.as_slice()),
            "recovery made up an item: {item:?}"
        );
    }
    if q.append(Priority::Normal, &[b"after".as_slice()], 4)
        .is_err()
    {
        return;
    }
    drop(q);
    let mut q = Queue::open(&dir, &KEY, config()).expect("a queue it wrote itself opens");
    assert_eq!(
        drain(&mut q),
        vec![b"after".to_vec()],
        "the item appended after recovery"
    );
});
