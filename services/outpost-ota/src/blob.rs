//! Artifact payloads at rest: encrypted in chunks, so any byte range can be read without
//! decrypting the rest.
//!
//! ```text
//! blob   = header chunk*
//! header = "OPBLOB01" salt[16] size:u64 chunk_size:u32 reserved[4]        (40 bytes, LE)
//! chunk  = ciphertext[min(chunk_size, what is left)] tag[16]
//! ```
//!
//! The key is HKDF-SHA256 of the service key with the blob's random salt; chunk `i` is
//! sealed with ChaCha20-Poly1305, nonce `i`, and the header plus a last-chunk flag as
//! associated data, so chunks cannot be reordered, dropped from the end or moved to
//! another blob. Blobs are named by the SHA-256 of their plaintext and stored once.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

pub const CHUNK: usize = 64 * 1024;
const MAGIC: &[u8; 8] = b"OPBLOB01";
const HEADER: usize = 40;
const TAG: usize = 16;

fn key(master: &[u8; 32], salt: &[u8; 16]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(master);
    let info = [&b"outpost-ota blob v1"[..]];
    let okm = prk
        .expand(&info, &aead::CHACHA20_POLY1305)
        .unwrap_or_else(|_| unreachable!("32-byte HKDF output is always available"));
    LessSafeKey::new(UnboundKey::from(okm))
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(header: &[u8; HEADER], last: bool) -> [u8; HEADER + 1] {
    let mut a = [0u8; HEADER + 1];
    a[..HEADER].copy_from_slice(header);
    a[HEADER] = u8::from(last);
    a
}

fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK as u64).max(1)
}

/// Writes a blob of a known size, hashing the plaintext as it goes.
pub struct BlobWriter {
    file: File,
    path: PathBuf,
    key: LessSafeKey,
    header: [u8; HEADER],
    size: u64,
    written: u64,
    index: u64,
    buf: Vec<u8>,
    hash: ring::digest::Context,
}

impl BlobWriter {
    /// Starts a blob of `size` bytes in a temporary file in `dir`.
    pub fn create(dir: &Path, master: &[u8; 32], size: u64) -> io::Result<Self> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
        let path = dir.join(format!("upload-{}.tmp", hex::encode(&salt[..8])));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..24].copy_from_slice(&salt);
        header[24..32].copy_from_slice(&size.to_le_bytes());
        header[32..36].copy_from_slice(&(CHUNK as u32).to_le_bytes());
        file.write_all(&header)?;
        Ok(Self {
            file,
            path,
            key: key(master, &salt),
            header,
            size,
            written: 0,
            index: 0,
            buf: Vec::with_capacity(CHUNK + TAG),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
        })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.index),
                Aad::from(aad(&self.header, last)),
                &mut self.buf,
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Adds payload bytes; fails once they go past the announced size.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.written + data.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the payload is larger than its manifest says",
            ));
        }
        self.hash.update(data);
        self.written += data.len() as u64;
        while !data.is_empty() {
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK && self.index + 1 < chunks(self.size) {
                self.seal(false)?;
            }
        }
        Ok(())
    }

    /// Completes the blob (synced); returns its temporary path and the SHA-256 of the
    /// payload, hex. Fails if fewer bytes came than announced.
    pub fn finish(mut self) -> io::Result<(PathBuf, String)> {
        if self.written != self.size {
            let _ = std::fs::remove_file(&self.path);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the payload ended after {} of {} bytes",
                    self.written, self.size
                ),
            ));
        }
        self.seal(true)?;
        self.file.sync_all()?;
        let sha = hex::encode(self.hash.clone().finish().as_ref());
        Ok((self.path.clone(), sha))
    }

    /// Removes the unfinished blob.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An open blob, for reading ranges.
pub struct BlobReader {
    file: File,
    key: LessSafeKey,
    header: [u8; HEADER],
    pub size: u64,
}

impl BlobReader {
    pub fn open(path: &Path, master: &[u8; 32]) -> io::Result<Self> {
        let file = File::open(path)?;
        let mut header = [0u8; HEADER];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a blob"));
        }
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&header[8..24]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&header[24..32]);
        if u32::from_le_bytes([header[32], header[33], header[34], header[35]]) as usize != CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown chunk size",
            ));
        }
        Ok(Self {
            file,
            key: key(master, &salt),
            header,
            size: u64::from_le_bytes(size),
        })
    }

    /// The plaintext of chunk `i`.
    pub fn chunk(&self, i: u64) -> io::Result<Vec<u8>> {
        let n = chunks(self.size);
        if i >= n {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "past the end"));
        }
        let plain = if i + 1 == n {
            (self.size - i * CHUNK as u64) as usize
        } else {
            CHUNK
        };
        let mut buf = vec![0u8; plain + TAG];
        self.file
            .read_exact_at(&mut buf, HEADER as u64 + i * (CHUNK + TAG) as u64)?;
        let len = self
            .key
            .open_in_place(nonce(i), Aad::from(aad(&self.header, i + 1 == n)), &mut buf)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a blob chunk failed authentication",
                )
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Calls `f` with the plaintext of `[start, end)` piece by piece (at most a chunk each).
    pub fn read_range(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(Vec<u8>) -> bool,
    ) -> io::Result<()> {
        let end = end.min(self.size);
        let mut pos = start;
        while pos < end {
            let i = pos / CHUNK as u64;
            let chunk = self.chunk(i)?;
            let from = (pos - i * CHUNK as u64) as usize;
            let to = ((end - i * CHUNK as u64) as usize).min(chunk.len());
            pos += (to - from) as u64;
            if !f(chunk[from..to].to_vec()) {
                break;
            }
        }
        Ok(())
    }
}

/// Re-encrypts the blob at `path` from service key `old` to `new` (a new salt, the same
/// payload), through a synced temporary file renamed over it, so the blob is whole under
/// one of the two keys at any point. Returns false if it was under `new` already.
pub fn rekey(path: &Path, old: &[u8; 32], new: &[u8; 32]) -> io::Result<bool> {
    let reader = BlobReader::open(path, old)?;
    if reader.chunk(0).is_err() {
        // Under the new key already, or damaged: the new key must open it.
        BlobReader::open(path, new)?.chunk(0)?;
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut w = BlobWriter::create(dir, new, reader.size)?;
    for i in 0..chunks(reader.size) {
        if let Err(e) = reader.chunk(i).and_then(|c| w.write(&c)) {
            w.abandon();
            return Err(e);
        }
    }
    let (tmp, _) = w.finish()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rekeyed_blob_reads_back_under_the_new_key_only() {
        let dir = tempfile::tempdir().expect("dir");
        let (old, new) = ([5u8; 32], [6u8; 32]);
        let data: Vec<u8> = (0..2 * CHUNK + 3).map(|i| (i % 251) as u8).collect();
        let mut w = BlobWriter::create(dir.path(), &old, data.len() as u64).expect("create");
        w.write(&data).expect("write");
        let (path, _) = w.finish().expect("finish");
        assert!(rekey(&path, &old, &new).expect("rekey"));
        assert!(!rekey(&path, &old, &new).expect("again"));
        assert!(
            BlobReader::open(&path, &old)
                .expect("open")
                .chunk(0)
                .is_err()
        );
        let r = BlobReader::open(&path, &new).expect("open");
        let mut back = Vec::new();
        r.read_range(0, r.size, |c| {
            back.extend_from_slice(&c);
            true
        })
        .expect("read");
        assert_eq!(back, data);
    }

    #[test]
    fn any_range_reads_back_and_damage_is_detected() {
        let dir = tempfile::tempdir().expect("dir");
        let master = [5u8; 32];
        for size in [0usize, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let mut w = BlobWriter::create(dir.path(), &master, size as u64).expect("create");
            for part in data.chunks(10_000) {
                w.write(part).expect("write");
            }
            let (path, sha) = w.finish().expect("finish");
            assert_eq!(
                sha,
                hex::encode(ring::digest::digest(&ring::digest::SHA256, &data))
            );
            let on_disk = std::fs::read(&path).expect("read");
            assert!(
                size < 64
                    || !on_disk
                        .windows(64)
                        .any(|w| data.windows(64).next() == Some(w))
            );
            let r = BlobReader::open(&path, &master).expect("open");
            for (a, b) in [
                (0, size),
                (size / 3, size / 2),
                (size.saturating_sub(5), size),
            ] {
                let mut got = Vec::new();
                r.read_range(a as u64, b as u64, |p| {
                    got.extend(p);
                    true
                })
                .expect("range");
                assert_eq!(got, data[a..b], "size {size} range {a}..{b}");
            }
            std::fs::remove_file(&path).expect("rm");
        }
        // A flipped bit in a chunk, or a short file, fails authentication.
        let mut w = BlobWriter::create(dir.path(), &master, 2 * CHUNK as u64).expect("create");
        w.write(&vec![1u8; 2 * CHUNK]).expect("write");
        let (path, _) = w.finish().expect("finish");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER + 100] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let r = BlobReader::open(&path, &master).expect("open");
        assert!(r.chunk(0).is_err());
        assert!(r.chunk(1).is_ok());
        // Too much or too little payload is refused.
        let mut w = BlobWriter::create(dir.path(), &master, 10).expect("create");
        assert!(w.write(&[0u8; 11]).is_err());
        w.abandon();
        let mut w = BlobWriter::create(dir.path(), &master, 10).expect("create");
        w.write(&[0u8; 9]).expect("write");
        assert!(w.finish().is_err());
    }
}
