//! One priority's log: its segments, where it has been consumed to, and appends.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::format::{
    FLAG_BATCH_END, FRAME_HEADER, FRAME_MAGIC, FrameHeader, SEGMENT_HEADER, SegmentKey, frame_size,
    parse_segment_header, segment_header,
};
use crate::head::HeadFile;
use crate::{Counters, Item, SyncPolicy};

/// Sequence numbers reserved per synced write of the head file.
const RESERVE_CHUNK: u64 = 1 << 16;
/// How much of a segment one read brings in.
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Segment {
    /// From the file name: no record in it has a lower sequence number, and every record of
    /// the segments before it has a lower one.
    pub first_seq: u64,
    /// Unique among the segments this process opened (names can come back: an empty
    /// segment may be replaced by one of the same name).
    id: u64,
    path: PathBuf,
    key: SegmentKey,
    file: File,
    pub len: u64,
    /// Valid records in the segment.
    pub records: u64,
    pub last_seq: Option<u64>,
    pub last_ms: u64,
    /// Only the newest segment takes appends, and only until a write to it failed or the
    /// queue was reopened.
    writable: bool,
}

/// Where a read ended: the next record to consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub segment: u64,
    pub offset: u64,
    /// Valid records of that segment before `offset`.
    pub consumed: u64,
    /// Every sequence number below this has been consumed.
    pub seq: u64,
}

/// What scanning one segment file found.
struct Scan {
    salt: [u8; 16],
    /// (offset, header) of each valid record.
    frames: Vec<(u64, FrameHeader)>,
    /// End of the last record that closed an append.
    committed_end: u64,
    corrupt_regions: u64,
    corrupt_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u8,
    dir: PathBuf,
    pub segments: VecDeque<Segment>,
    head_offset: u64,
    head_consumed: u64,
    pub head_seq: u64,
    pub next_seq: u64,
    reserved: u64,
    headfile: HeadFile,
    master: [u8; 32],
    max_record: u32,
    sync: SyncPolicy,
    buf: Vec<u8>,
    /// Which segment `buf` holds a part of.
    buf_segment: u64,
    buf_start: u64,
    next_id: u64,
}

fn io_ctx(context: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Re-encrypts the segment file `path` from master key `old` to `new` (same salt and
/// records, new segment key), through a synced temporary file renamed over it, so the
/// segment is whole under one of the two keys at any point. Records that open under
/// neither key (corrupt; skipped when the queue is opened anyway) are dropped. Returns the
/// records re-encrypted, `None` if it was under `new` already.
pub(crate) fn rekey_segment(
    path: &Path,
    old: &[u8; 32],
    new: &[u8; 32],
) -> io::Result<Option<u64>> {
    let data = fs::read(path).map_err(|e| io_ctx(format!("read {}", path.display()), e))?;
    let Some(header) = data.get(..SEGMENT_HEADER) else {
        return Ok(Some(0));
    };
    let stream = header[24];
    let Some(salt) = parse_segment_header(&data, stream) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a queue segment", path.display()),
        ));
    };
    let (from, to) = (
        SegmentKey::derive(old, &salt),
        SegmentKey::derive(new, &salt),
    );
    let mut out = header.to_vec();
    let (mut pos, mut records) = (SEGMENT_HEADER, 0u64);
    let max = u32::try_from(data.len()).unwrap_or(u32::MAX);
    while pos + FRAME_HEADER <= data.len() {
        let Some(h) = FrameHeader::decode(&data[pos..], max) else {
            pos += 1;
            continue;
        };
        let end = pos + FRAME_HEADER + h.len as usize;
        if end > data.len() {
            pos += 1;
            continue;
        }
        let mut body = data[pos + FRAME_HEADER..end].to_vec();
        if let Some(plain) = from.open(&h, &mut body) {
            to.seal(h.seq, h.enqueued_ms, h.flags, plain, &mut out);
            records += 1;
            pos = end;
            continue;
        }
        let mut body = data[pos + FRAME_HEADER..end].to_vec();
        if records == 0 && to.open(&h, &mut body).is_some() {
            return Ok(None);
        }
        pos += 1;
    }
    let tmp = path.with_extension("seg.rekey");
    {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_ctx(format!("create {}", tmp.display()), e))?;
        f.write_all(&out)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_ctx(format!("write {}", tmp.display()), e))?;
    }
    fs::rename(&tmp, path).map_err(|e| io_ctx(format!("rename {}", tmp.display()), e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(Some(records))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_ctx(format!("sync {}", dir.display()), e))
}

fn open_rw(path: &Path, create: bool) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_ctx(format!("open {}", path.display()), e))
}

fn read_exact_or_eof(file: &File, buf: &mut Vec<u8>, offset: u64, want: usize) -> io::Result<()> {
    buf.clear();
    buf.resize(want, 0);
    let mut n = 0;
    while n < want {
        match file.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf.truncate(n);
    Ok(())
}

/// The valid frame at `pos` of `data` (a whole segment), if there is one.
fn frame_at(
    data: &[u8],
    pos: usize,
    key: &SegmentKey,
    max_record: u32,
    min_seq: u64,
) -> Option<FrameHeader> {
    let h = FrameHeader::decode(data.get(pos..)?, max_record)?;
    let end = pos + FRAME_HEADER + h.len as usize;
    if end > data.len() || h.seq < min_seq {
        return None;
    }
    // Authenticate a copy: the scan must leave the bytes as they are.
    let mut body = data[pos + FRAME_HEADER..end].to_vec();
    key.open(&h, &mut body)?;
    Some(h)
}

fn scan(
    data: &[u8],
    stream: u8,
    master: &[u8; 32],
    first_seq: u64,
    max_record: u32,
) -> Option<Scan> {
    let salt = parse_segment_header(data, stream)?;
    let key = SegmentKey::derive(master, &salt);
    let mut out = Scan {
        salt,
        frames: Vec::new(),
        committed_end: SEGMENT_HEADER as u64,
        corrupt_regions: 0,
        corrupt_bytes: 0,
    };
    let mut pos = SEGMENT_HEADER;
    let mut min_seq = first_seq;
    while pos < data.len() {
        if let Some(h) = frame_at(data, pos, &key, max_record, min_seq) {
            out.frames.push((pos as u64, h));
            pos += FRAME_HEADER + h.len as usize;
            min_seq = h.seq + 1;
            if h.flags & FLAG_BATCH_END != 0 {
                out.committed_end = pos as u64;
            }
            continue;
        }
        // Not a record: find the next one, if any.
        let next = (pos + 1..data.len()).find(|&p| {
            data[p..].starts_with(&FRAME_MAGIC)
                && frame_at(data, p, &key, max_record, min_seq).is_some()
        });
        match next {
            Some(p) => {
                out.corrupt_regions += 1;
                out.corrupt_bytes += (p - pos) as u64;
                pos = p;
            }
            None => break,
        }
    }
    Some(out)
}

impl Stream {
    /// Opens the stream in `dir`: checks every segment, cuts an append that never completed,
    /// skips and counts corrupt records, and removes segments with nothing left to send.
    /// The next append starts a new segment (with a new key).
    pub fn open(
        dir: PathBuf,
        id: u8,
        master: &[u8; 32],
        max_record: u32,
        sync: SyncPolicy,
        counters: &mut Counters,
    ) -> io::Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| io_ctx(format!("create {}", dir.display()), e))?;
        let headfile = HeadFile::open(&dir.join("head"))
            .map_err(|e| io_ctx(format!("open {}/head", dir.display()), e))?;
        let state = headfile.state();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_ctx(format!("list {}", dir.display()), e))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push(first);
            }
        }
        names.sort_unstable();

        let mut segments = VecDeque::new();
        let mut head = None;
        let mut max_seq_seen = None::<u64>;
        let count = names.len();
        for (i, first_seq) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let path = dir.join(segment_name(first_seq));
            let data =
                fs::read(&path).map_err(|e| io_ctx(format!("read {}", path.display()), e))?;
            let file_len = data.len() as u64;
            let Some(found) = scan(&data, id, master, first_seq, max_record) else {
                if file_len < SEGMENT_HEADER as u64 && last {
                    // Created but never completed.
                    counters.truncated_bytes += file_len;
                } else {
                    counters.corrupt_records += 1;
                    counters.corrupt_bytes += file_len;
                    tracing::error!(path = %path.display(), bytes = file_len, "queue segment has no valid header; its data is lost and the file removed");
                }
                fs::remove_file(&path)
                    .map_err(|e| io_ctx(format!("remove {}", path.display()), e))?;
                continue;
            };
            counters.corrupt_records += found.corrupt_regions;
            counters.corrupt_bytes += found.corrupt_bytes;
            if found.corrupt_regions > 0 {
                tracing::error!(path = %path.display(), regions = found.corrupt_regions, bytes = found.corrupt_bytes, "skipped corrupt records in a queue segment");
            }
            let mut frames = found.frames;
            let mut len = file_len;
            let valid_end = frames.last().map_or(SEGMENT_HEADER as u64, |(off, h)| {
                off + FRAME_HEADER as u64 + h.len as u64
            });
            if last {
                // An append that never completed (a crash or power loss in the middle of
                // writing it; it was never acknowledged): cut it.
                let cut = found.committed_end;
                frames.retain(|(off, _)| *off < cut);
                if cut < len {
                    let f = open_rw(&path, false)?;
                    f.set_len(cut)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| io_ctx(format!("truncate {}", path.display()), e))?;
                    counters.truncated_bytes += len - cut;
                    tracing::warn!(path = %path.display(), bytes = len - cut, "cut the incomplete last append of a queue segment");
                    len = cut;
                }
            } else if valid_end < len {
                counters.corrupt_records += 1;
                counters.corrupt_bytes += len - valid_end;
                tracing::error!(path = %path.display(), bytes = len - valid_end, "skipped a corrupt end of a queue segment");
            }
            let last_seq = frames.last().map(|(_, h)| h.seq);
            if let Some(s) = last_seq {
                max_seq_seen = Some(max_seq_seen.map_or(s, |m| m.max(s)));
            }
            // A segment all of whose records are consumed is not needed.
            if last_seq.is_none_or(|s| s < state.head) {
                fs::remove_file(&path)
                    .map_err(|e| io_ctx(format!("remove {}", path.display()), e))?;
                continue;
            }
            if head.is_none() {
                let consumed = frames
                    .iter()
                    .take_while(|(_, h)| h.seq < state.head)
                    .count();
                let offset = frames.get(consumed).map_or(len, |(off, _)| *off);
                head = Some((offset, consumed as u64));
            }
            segments.push_back(Segment {
                first_seq,
                id: segments.len() as u64,
                file: open_rw(&path, false)?,
                path,
                key: SegmentKey::derive(master, &found.salt),
                len,
                records: frames.len() as u64,
                last_seq,
                last_ms: frames.last().map_or(0, |(_, h)| h.enqueued_ms),
                writable: false,
            });
        }

        let next_seq = state
            .reserve
            .max(max_seq_seen.map_or(0, |s| s + 1))
            .max(segments.back().map_or(0, |s| s.first_seq));
        let segments_len = segments.len() as u64;
        let (head_offset, head_consumed) = head.unwrap_or((SEGMENT_HEADER as u64, 0));
        let head_seq = match segments.front() {
            Some(front) => state.head.max(front.first_seq),
            None => next_seq,
        };
        let mut stream = Self {
            id,
            dir,
            segments,
            head_offset,
            head_consumed,
            head_seq,
            next_seq,
            reserved: next_seq,
            headfile,
            master: *master,
            max_record,
            sync,
            buf: Vec::new(),
            buf_segment: u64::MAX,
            buf_start: 0,
            next_id: segments_len,
        };
        stream.reserve(next_seq + RESERVE_CHUNK)?;
        stream.headfile_set_head()?;
        Ok(stream)
    }

    fn reserve(&mut self, upto: u64) -> io::Result<()> {
        self.headfile
            .reserve(upto)
            .map_err(|e| io_ctx(format!("write {}/head", self.dir.display()), e))?;
        self.reserved = upto;
        Ok(())
    }

    fn headfile_set_head(&mut self) -> io::Result<()> {
        self.headfile
            .set_head(self.head_seq)
            .map_err(|e| io_ctx(format!("write {}/head", self.dir.display()), e))
    }

    /// Starts a new segment for appends, with a new key.
    pub fn rotate(&mut self) -> io::Result<()> {
        // A newest segment without records (a write to it failed, say on a full disk) is
        // replaced, not kept: retries must not pile up empty files.
        if self.segments.back().is_some_and(|s| s.records == 0)
            && let Some(empty) = self.segments.pop_back()
        {
            fs::remove_file(&empty.path)
                .map_err(|e| io_ctx(format!("remove {}", empty.path.display()), e))?;
            if self.buf_segment == empty.id {
                self.buf_segment = u64::MAX;
            }
            if self.segments.is_empty() {
                self.head_offset = SEGMENT_HEADER as u64;
                self.head_consumed = 0;
            }
        }
        let first_seq = self.next_seq;
        let path = self.dir.join(segment_name(first_seq));
        // An empty segment may carry this name from before (opened twice without an
        // append); it holds nothing.
        if let Some(pos) = self.segments.iter().position(|s| s.first_seq == first_seq) {
            if self.segments[pos].records > 0 {
                return Err(io::Error::other(format!(
                    "segment {} already holds records",
                    path.display()
                )));
            }
            if let Some(old) = self.segments.remove(pos) {
                fs::remove_file(&old.path)
                    .map_err(|e| io_ctx(format!("remove {}", old.path.display()), e))?;
            }
            if pos == 0 {
                self.head_offset = SEGMENT_HEADER as u64;
                self.head_consumed = 0;
            }
        }
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        let file = open_rw(&path, true)?;
        let written = file
            .write_all_at(&segment_header(&salt, self.id), 0)
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(io_ctx(format!("write {}", path.display()), e));
        }
        // The new file must be on disk before anything that follows relies on it.
        sync_dir(&self.dir)?;
        if let Some(active) = self.segments.back_mut() {
            active.writable = false;
        }
        let was_empty = self.segments.is_empty();
        self.next_id += 1;
        self.segments.push_back(Segment {
            first_seq,
            id: self.next_id,
            path,
            key: SegmentKey::derive(&self.master, &salt),
            file,
            len: SEGMENT_HEADER as u64,
            records: 0,
            last_seq: None,
            last_ms: 0,
            writable: true,
        });
        if was_empty {
            self.head_offset = SEGMENT_HEADER as u64;
            self.head_consumed = 0;
        }
        // Empty segments before the new one carry nothing.
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.records == 0) {
            self.pop_front()?;
        }
        Ok(())
    }

    /// Whether an append of `bytes` goes to a new segment.
    pub fn needs_rotation(&self, bytes: u64, segment_bytes: u64) -> bool {
        self.segments
            .back()
            .is_none_or(|a| !a.writable || (a.records > 0 && a.len + bytes > segment_bytes))
    }

    /// Appends `items` as one append: durable on return when the sync policy says so, and
    /// either whole or (after a crash in the middle) cut on the next open.
    pub fn append<T: AsRef<[u8]>>(
        &mut self,
        items: &[T],
        now_ms: u64,
        segment_bytes: u64,
    ) -> io::Result<u64> {
        let bytes: u64 = items.iter().map(|i| frame_size(i.as_ref().len())).sum();
        if self.needs_rotation(bytes, segment_bytes) {
            self.rotate()?;
        }
        let n = items.len() as u64;
        if self.next_seq + n > self.reserved {
            self.reserve(self.next_seq + n + RESERVE_CHUNK)?;
        }
        let first = self.next_seq;
        let sync = self.sync;
        let Some(active) = self.segments.back_mut() else {
            return Err(io::Error::other("queue stream has no segment"));
        };
        let mut buf = Vec::with_capacity(bytes as usize);
        for (i, item) in items.iter().enumerate() {
            let flags = if i + 1 == items.len() {
                FLAG_BATCH_END
            } else {
                0
            };
            active
                .key
                .seal(first + i as u64, now_ms, flags, item.as_ref(), &mut buf);
        }
        let written = active.file.write_all_at(&buf, active.len).and_then(|()| {
            if sync == SyncPolicy::Batch {
                active.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Leave no part of the append behind, and never write to this key again.
            let _ = active.file.set_len(active.len);
            active.writable = false;
            return Err(io_ctx(format!("write {}", active.path.display()), e));
        }
        active.len += buf.len() as u64;
        active.records += n;
        if n > 0 {
            active.last_seq = Some(first + n - 1);
            active.last_ms = now_ms;
        }
        self.next_seq += n;
        Ok(first)
    }

    /// Items not consumed yet.
    pub fn items(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum::<u64>() - self.head_consumed
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether dropping the oldest segment frees anything.
    pub fn droppable(&self) -> bool {
        self.segments.len() > 1 || self.segments.front().is_some_and(|s| s.records > 0)
    }

    /// Removes the oldest segment (even the one taking appends: the next append starts a
    /// new one, so space is freed before anything is written); returns how many unconsumed
    /// items it held.
    pub fn drop_front(&mut self) -> io::Result<u64> {
        let live = self
            .segments
            .front()
            .map_or(0, |s| s.records - self.head_consumed);
        self.pop_front()?;
        if self.segments.is_empty() {
            self.head_seq = self.next_seq;
        }
        self.headfile_set_head()?;
        Ok(live)
    }

    fn pop_front(&mut self) -> io::Result<()> {
        if let Some(seg) = self.segments.pop_front() {
            fs::remove_file(&seg.path)
                .map_err(|e| io_ctx(format!("remove {}", seg.path.display()), e))?;
            if self.buf_segment == seg.id {
                self.buf_segment = u64::MAX;
            }
        }
        self.head_offset = SEGMENT_HEADER as u64;
        self.head_consumed = 0;
        if let Some(front) = self.segments.front() {
            self.head_seq = self.head_seq.max(front.first_seq);
        }
        Ok(())
    }

    /// The cursor at the head.
    pub fn head(&self) -> Cursor {
        Cursor {
            segment: self.segments.front().map_or(0, |s| s.first_seq),
            offset: self.head_offset,
            consumed: self.head_consumed,
            seq: self.head_seq,
        }
    }

    /// Moves the head to `to` (an end of a read); segments passed are removed.
    pub fn advance(&mut self, to: Cursor) -> io::Result<()> {
        let here = self.head();
        if (to.segment, to.offset) <= (here.segment, here.offset) {
            return Ok(());
        }
        if !self.segments.iter().any(|s| s.first_seq == to.segment) {
            // The segment was dropped meanwhile; the head is already past it.
            return Ok(());
        }
        while self
            .segments
            .front()
            .is_some_and(|s| s.first_seq != to.segment)
        {
            self.pop_front()?;
        }
        self.head_offset = to.offset;
        self.head_consumed = to.consumed;
        self.head_seq = self.head_seq.max(to.seq);
        // A fully consumed segment that takes no more appends is not needed (the next
        // append starts a new one; sequence numbers go on from the reservation).
        if self
            .segments
            .front()
            .is_some_and(|s| self.head_offset >= s.len && (self.segments.len() > 1 || !s.writable))
        {
            self.pop_front()?;
        }
        self.headfile_set_head()
    }

    /// Drops whole segments all of whose records are older than `cutoff_ms`; returns how
    /// many unconsumed items they held.
    pub fn expire_segments(&mut self, cutoff_ms: u64) -> io::Result<u64> {
        let mut expired = 0;
        while self.segments.len() > 1
            && self
                .segments
                .front()
                .is_some_and(|s| s.records > 0 && s.last_ms < cutoff_ms)
        {
            expired += self.drop_front()?;
        }
        Ok(expired)
    }

    /// Makes `self.buf` hold `[offset, offset + want)` of segment `idx` (or as much of it
    /// as there is); returns the start of that range in `self.buf`.
    fn fill(&mut self, idx: usize, offset: u64, want: usize) -> io::Result<usize> {
        let seg = &self.segments[idx];
        if self.buf_segment == seg.id
            && offset >= self.buf_start
            && offset + want as u64 <= self.buf_start + self.buf.len() as u64
        {
            return Ok((offset - self.buf_start) as usize);
        }
        let avail = seg.len.saturating_sub(offset) as usize;
        let len = want.max(READ_CHUNK).min(avail);
        read_exact_or_eof(&seg.file, &mut self.buf, offset, len)
            .map_err(|e| io_ctx(format!("read {}", seg.path.display()), e))?;
        self.buf_segment = seg.id;
        self.buf_start = offset;
        Ok(0)
    }

    /// Reads up to `max_items` items (and about `max_bytes` of data, at least one item) from
    /// the head without consuming them; items older than `expire_before_ms` at the head are
    /// consumed and counted instead. Returns the items and where they end.
    pub fn read(
        &mut self,
        max_items: usize,
        max_bytes: usize,
        expire_before_ms: Option<u64>,
        counters: &mut Counters,
    ) -> io::Result<(Vec<Item>, Cursor)> {
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut cur = self.head();
        let mut idx = 0;
        while idx < self.segments.len()
            && items.len() < max_items
            && (items.is_empty() || bytes < max_bytes)
        {
            let (seg_len, seg_first) = (self.segments[idx].len, self.segments[idx].first_seq);
            if cur.offset >= seg_len {
                // The end of a segment: go on with the next, if there is one.
                if idx + 1 >= self.segments.len() {
                    break;
                }
                idx += 1;
                cur = Cursor {
                    segment: self.segments[idx].first_seq,
                    offset: SEGMENT_HEADER as u64,
                    consumed: 0,
                    seq: cur.seq.max(self.segments[idx].first_seq),
                };
                continue;
            }
            let at = self.fill(idx, cur.offset, FRAME_HEADER)?;
            let header = self
                .buf
                .get(at..)
                .and_then(|b| FrameHeader::decode(b, self.max_record));
            let frame = match header {
                Some(h)
                    if cur.offset + FRAME_HEADER as u64 + u64::from(h.len) <= seg_len
                        && h.seq >= cur.seq =>
                {
                    let size = FRAME_HEADER + h.len as usize;
                    let at = self.fill(idx, cur.offset, size)?;
                    let seg = &self.segments[idx];
                    let body = &mut self.buf[at + FRAME_HEADER..at + size];
                    let mut copy = body.to_vec();
                    let plain = seg.key.open(&h, &mut copy).map(|p| p.len());
                    plain.map(|n| {
                        copy.truncate(n);
                        (h, copy, size)
                    })
                }
                _ => None,
            };
            let Some((h, data, size)) = frame else {
                // Damaged since the queue was opened: skip to the next valid record of this
                // segment, or its end.
                let skip = self.resync(idx, cur.offset, cur.seq)?;
                counters.corrupt_records += 1;
                counters.corrupt_bytes += skip;
                tracing::error!(
                    segment = seg_first,
                    offset = cur.offset,
                    bytes = skip,
                    "skipped a corrupt queue record"
                );
                cur.offset += skip;
                continue;
            };
            cur.offset += size as u64;
            cur.consumed += 1;
            cur.seq = h.seq + 1;
            if items.is_empty() && expire_before_ms.is_some_and(|cutoff| h.enqueued_ms < cutoff) {
                counters.expired += 1;
                self.advance(cur)?;
                idx = 0;
                cur = self.head();
                continue;
            }
            bytes += data.len();
            items.push(Item {
                seq: h.seq,
                enqueued_ms: h.enqueued_ms,
                data,
            });
        }
        Ok((items, cur))
    }

    /// Bytes from `offset` to the next valid record of segment `idx` (or its end).
    fn resync(&mut self, idx: usize, offset: u64, min_seq: u64) -> io::Result<u64> {
        let seg = &self.segments[idx];
        let mut rest = Vec::new();
        read_exact_or_eof(
            &seg.file,
            &mut rest,
            offset,
            seg.len.saturating_sub(offset) as usize,
        )
        .map_err(|e| io_ctx(format!("read {}", seg.path.display()), e))?;
        let next = (1..rest.len()).find(|&p| {
            rest[p..].starts_with(&FRAME_MAGIC)
                && frame_at(&rest, p, &seg.key, self.max_record, min_seq).is_some()
        });
        self.buf_segment = u64::MAX;
        Ok(next.unwrap_or(rest.len()).max(1) as u64)
    }

    /// When the item at the head was enqueued.
    pub fn head_ms(&self) -> Option<u64> {
        let mut cur = self.head();
        for seg in &self.segments {
            if seg.first_seq != cur.segment {
                if seg.first_seq < cur.segment {
                    continue;
                }
                cur.offset = SEGMENT_HEADER as u64;
            }
            if cur.offset < seg.len {
                let mut h = [0u8; FRAME_HEADER];
                seg.file.read_exact_at(&mut h, cur.offset).ok()?;
                return FrameHeader::decode(&h, self.max_record).map(|h| h.enqueued_ms);
            }
        }
        None
    }
}
