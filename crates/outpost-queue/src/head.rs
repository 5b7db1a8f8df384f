//! A stream's head file: how far the stream has been consumed, and the sequence numbers
//! reserved for appends.
//!
//! Two 32-byte slots, `generation:u64 head:u64 reserve:u64 check:u64`, where `check` is the
//! first 8 bytes of SHA-256 over the rest. Writes alternate between the slots; the valid slot
//! with the higher generation wins, so a torn write of one slot leaves the other. Moving the
//! head is not synced: a head lost on power loss only means items are sent again, and the
//! receiver drops them by sequence number. Raising the reservation is synced into both slots
//! before any sequence number above the old reservation is used, so sequence numbers never go
//! back, even when the last appends of an unsynced queue are lost.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

const SLOT: usize = 32;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeadState {
    /// Every sequence number below this has been consumed (sent and acknowledged, dropped
    /// or expired).
    pub head: u64,
    /// No sequence number at or above this has been used.
    pub reserve: u64,
}

#[derive(Debug)]
pub(crate) struct HeadFile {
    file: File,
    generation: u64,
    state: HeadState,
}

fn encode(generation: u64, s: HeadState) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..8].copy_from_slice(&generation.to_le_bytes());
    b[8..16].copy_from_slice(&s.head.to_le_bytes());
    b[16..24].copy_from_slice(&s.reserve.to_le_bytes());
    let check = ring::digest::digest(&ring::digest::SHA256, &b[..24]);
    b[24..].copy_from_slice(&check.as_ref()[..8]);
    b
}

fn decode(b: &[u8]) -> Option<(u64, HeadState)> {
    if b.len() < SLOT {
        return None;
    }
    let check = ring::digest::digest(&ring::digest::SHA256, &b[..24]);
    if b[24..SLOT] != check.as_ref()[..8] {
        return None;
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(w)
    };
    Some((
        word(0),
        HeadState {
            head: word(8),
            reserve: word(16),
        },
    ))
}

impl HeadFile {
    /// Opens or creates the head file; a missing or unreadable one starts at zero.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut buf = [0u8; 2 * SLOT];
        let n = read_up_to(&file, &mut buf)?;
        let best = [decode(&buf[..n.min(SLOT)]), decode(&buf[SLOT.min(n)..n])]
            .into_iter()
            .flatten()
            .max_by_key(|(generation, _)| *generation);
        let (generation, state) = best.unwrap_or_default();
        Ok(Self {
            file,
            generation,
            state,
        })
    }

    pub fn state(&self) -> HeadState {
        self.state
    }

    /// Records a new head; not synced.
    pub fn set_head(&mut self, head: u64) -> io::Result<()> {
        if head == self.state.head {
            return Ok(());
        }
        self.state.head = head;
        self.generation += 1;
        let slot = (self.generation % 2) * SLOT as u64;
        self.file
            .write_all_at(&encode(self.generation, self.state), slot)
    }

    /// Raises the reservation, synced into both slots before it returns.
    pub fn reserve(&mut self, reserve: u64) -> io::Result<()> {
        self.state.reserve = reserve;
        self.generation += 1;
        let slot = encode(self.generation, self.state);
        let mut both = [0u8; 2 * SLOT];
        both[..SLOT].copy_from_slice(&slot);
        both[SLOT..].copy_from_slice(&slot);
        self.file.write_all_at(&both, 0)?;
        self.file.sync_data()
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head");
        let mut h = HeadFile::open(&path).expect("open");
        assert_eq!(h.state(), HeadState::default());
        h.reserve(1000).expect("reserve");
        h.set_head(10).expect("head");
        h.set_head(20).expect("head");
        drop(h);
        let h = HeadFile::open(&path).expect("reopen");
        assert_eq!(
            h.state(),
            HeadState {
                head: 20,
                reserve: 1000
            }
        );
        // Tear the newest slot: the other one, one step older, is used.
        let generation = h.generation;
        drop(h);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let slot = (generation % 2) * SLOT as u64;
        f.write_all_at(&[0xFF; 5], slot + 3).expect("tear");
        let h = HeadFile::open(&path).expect("reopen");
        assert_eq!(
            h.state(),
            HeadState {
                head: 10,
                reserve: 1000
            }
        );
    }
}
