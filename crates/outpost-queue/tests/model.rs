//! Model test of the queue: random appends, deliveries with and without acknowledgement,
//! crashes (with and without an append cut short), time passing and reopening. Checks that
//! every acknowledged append is delivered or counted as dropped, in order per priority, that
//! a receiver deduplicating by sequence number loses nothing, and that the files never
//! exceed the bound.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use outpost_queue::{Config, Counters, Overflow, Priority, Queue, QueueError, SyncPolicy};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append {
        high: bool,
        sizes: Vec<usize>,
    },
    Deliver {
        max_items: usize,
        ack: bool,
    },
    /// The process dies; with `cut`, in the middle of an append of `sizes`, leaving
    /// `cut` bytes of it short.
    Crash {
        torn: Option<(bool, Vec<usize>, u64)>,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), prop::collection::vec(0usize..300, 1..6))
            .prop_map(|(high, sizes)| Op::Append { high, sizes }),
        4 => (1usize..12, prop::bool::weighted(0.8))
            .prop_map(|(max_items, ack)| Op::Deliver { max_items, ack }),
        1 => prop::option::of((any::<bool>(), prop::collection::vec(0usize..300, 1..4), 1u64..2000))
            .prop_map(|torn| Op::Crash { torn }),
        1 => (0u64..40).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn config() -> impl Strategy<Value = Config> {
    (
        2048u64..12_000,
        prop_oneof![Just(0u64), 512u64..3000],
        any::<bool>(),
        prop::option::of(20u64..200),
    )
        .prop_map(|(max_bytes, segment_bytes, refuse, ttl)| Config {
            max_bytes,
            segment_bytes,
            max_item_bytes: 512,
            ttl: ttl.map(Duration::from_millis),
            overflow: if refuse {
                Overflow::RefuseNew
            } else {
                Overflow::DropOldest
            },
            sync: SyncPolicy::None,
        })
}

const KEY: [u8; 32] = [9; 32];

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for sub in std::fs::read_dir(dir).expect("list") {
        let sub = sub.expect("entry").path();
        if sub.is_dir() {
            for f in std::fs::read_dir(&sub).expect("list") {
                let f = f.expect("entry").path();
                if f.extension().is_some_and(|e| e == "seg") {
                    total += std::fs::metadata(&f).expect("stat").len();
                }
            }
        }
    }
    total
}

fn last_segment(dir: &Path, high: bool) -> std::path::PathBuf {
    let sub = dir.join(if high { "p0" } else { "p1" });
    let mut names: Vec<_> = std::fs::read_dir(&sub)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    names.sort();
    names.pop().expect("a segment")
}

fn payload(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag.wrapping_mul(31).wrapping_add(i as u64)) as u8)
        .collect()
}

fn add(total: &mut Counters, c: Counters) {
    total.appended += c.appended;
    total.acked += c.acked;
    total.dropped_overflow += c.dropped_overflow;
    total.expired += c.expired;
    total.refused += c.refused;
    total.corrupt_records += c.corrupt_records;
    total.corrupt_bytes += c.corrupt_bytes;
    total.truncated_bytes += c.truncated_bytes;
    total.disk_full += c.disk_full;
}

struct Model {
    /// Acknowledged appends per priority: seq -> data.
    appended: [BTreeMap<u64, Vec<u8>>; 2],
    /// What the receiver kept (deduplicated by sequence number) per priority.
    received: [Vec<u64>; 2],
    hwm: [Option<u64>; 2],
    counters: Counters,
    incarnation: u64,
}

impl Model {
    fn deliver(&mut self, q: &mut Queue, max_items: usize, ack: bool, now: u64) {
        let Some(batch) = q.peek(max_items, usize::MAX, now).expect("peek") else {
            return;
        };
        let p = batch.priority as usize;
        assert!(batch.items.len() <= max_items.max(1));
        let mut prev = None;
        for item in &batch.items {
            assert!(prev.is_none_or(|s| item.seq > s), "out of order in a batch");
            prev = Some(item.seq);
            let want = self.appended[p]
                .get(&item.seq)
                .unwrap_or_else(|| panic!("delivered seq {} was never acknowledged", item.seq));
            assert_eq!(
                &item.data, want,
                "seq {} delivered with other data",
                item.seq
            );
        }
        if ack {
            for item in &batch.items {
                if self.hwm[p].is_none_or(|h| item.seq > h) {
                    self.hwm[p] = Some(item.seq);
                    self.received[p].push(item.seq);
                }
            }
            q.ack(&batch).expect("ack");
        }
    }
}

fn run(config: Config, ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let mut q = Queue::open(&path, &KEY, config.clone()).expect("open");
    let mut m = Model {
        appended: [BTreeMap::new(), BTreeMap::new()],
        received: [Vec::new(), Vec::new()],
        hwm: [None, None],
        counters: Counters::default(),
        incarnation: q.incarnation(),
    };
    let mut now = 1_000_000u64;
    let mut tag = 0u64;
    for op in ops {
        match op {
            Op::Append { high, sizes } => {
                let items: Vec<Vec<u8>> = sizes
                    .iter()
                    .map(|&s| {
                        tag += 1;
                        payload(tag, s)
                    })
                    .collect();
                let prio = if high {
                    Priority::High
                } else {
                    Priority::Normal
                };
                match q.append(prio, &items, now) {
                    Ok(a) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let seq = a.first_seq + i as u64;
                            let p = prio as usize;
                            assert!(
                                m.appended[p]
                                    .keys()
                                    .next_back()
                                    .is_none_or(|&last| seq > last),
                                "sequence numbers went back"
                            );
                            assert!(
                                m.hwm[p].is_none_or(|h| seq > h),
                                "a new item has a sequence number the receiver already saw"
                            );
                            m.appended[p].insert(seq, item);
                        }
                    }
                    Err(QueueError::Full { .. }) => {
                        assert_eq!(config.overflow, Overflow::RefuseNew)
                    }
                    Err(QueueError::TooLarge { .. }) => {}
                    Err(e) => panic!("append failed: {e}"),
                }
            }
            Op::Deliver { max_items, ack } => m.deliver(&mut q, max_items, ack, now),
            Op::Crash { torn } => {
                if let Some((high, sizes, cut)) = torn {
                    let items: Vec<Vec<u8>> = sizes.iter().map(|&s| payload(u64::MAX, s)).collect();
                    let prio = if high {
                        Priority::High
                    } else {
                        Priority::Normal
                    };
                    let appended = q.append(prio, &items, now).is_ok();
                    add(&mut m.counters, q.counters());
                    drop(q);
                    // Bytes of the append left on disk, after the cut.
                    let mut left = 0;
                    if appended {
                        let seg = last_segment(&path, high);
                        let len = std::fs::metadata(&seg).expect("stat").len();
                        let this_append: u64 = sizes.iter().map(|s| (s + 40) as u64).sum();
                        let cut = cut.min(this_append);
                        let f = std::fs::OpenOptions::new()
                            .write(true)
                            .open(&seg)
                            .expect("open");
                        f.set_len(len - cut).expect("cut");
                        left = this_append - cut;
                    }
                    q = Queue::open(&path, &KEY, config.clone()).expect("reopen");
                    // The incomplete append is found and cut (its items are never
                    // delivered: `deliver` panics on an item that was not acknowledged).
                    assert!(
                        left == 0 || q.counters().truncated_bytes > 0,
                        "a torn append ({left} bytes of it left) was not cut on reopen"
                    );
                } else {
                    add(&mut m.counters, q.counters());
                    drop(q);
                    q = Queue::open(&path, &KEY, config.clone()).expect("reopen");
                }
                assert_eq!(q.incarnation(), m.incarnation);
            }
            Op::Tick { ms } => now += ms,
        }
        let on_disk = segment_bytes_on_disk(&path);
        assert!(
            on_disk <= config.max_bytes,
            "{on_disk} bytes on disk > bound {}",
            config.max_bytes
        );
        assert_eq!(on_disk, q.bytes());
    }
    // Drain everything that is left, without time passing.
    for _ in 0..100_000 {
        if q.is_empty() {
            break;
        }
        m.deliver(&mut q, 64, true, now);
    }
    assert!(q.peek(64, usize::MAX, now).expect("peek").is_none());
    add(&mut m.counters, q.counters());
    let appended: usize = m.appended.iter().map(BTreeMap::len).sum();
    let received: usize = m.received.iter().map(Vec::len).sum();
    assert_eq!(m.counters.corrupt_records, 0);
    assert_eq!(
        appended as u64,
        received as u64 + m.counters.dropped_overflow + m.counters.expired,
        "every acknowledged item is delivered or counted as dropped ({:?})",
        m.counters
    );
    if config.ttl.is_none() {
        assert_eq!(m.counters.expired, 0);
    }
    if config.overflow == Overflow::RefuseNew {
        assert_eq!(m.counters.dropped_overflow, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn acknowledged_items_are_delivered_in_order_or_counted(config in config(), ops in prop::collection::vec(op(), 1..120)) {
        run(config, ops);
    }
}
