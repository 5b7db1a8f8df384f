//! The on-disk format: segment headers, record frames and their encryption.
//!
//! ```text
//! segment  = header frame*
//! header   = "OPQSEG01" salt[16] stream:u8 reserved[7]                (32 bytes)
//! frame    = magic[3] flags:u8 len:u32 seq:u64 enqueued_ms:u64         (24 bytes, little endian)
//!            ciphertext[len - 16] tag[16]
//! ```
//!
//! Each segment has its own key, HKDF-SHA256 of the queue's master key with the segment's
//! random salt; a record is sealed with ChaCha20-Poly1305 under that key, with its sequence
//! number as the nonce and its frame header as associated data. Sequence numbers never repeat
//! within a segment (a segment is never appended to again once a write to it failed or the
//! queue was reopened), so no nonce is ever used twice with one key. The tag authenticates
//! the header too: a flipped bit anywhere in a frame makes the frame invalid.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"OPQSEG01";
pub(crate) const SEGMENT_HEADER: usize = 32;
pub(crate) const FRAME_MAGIC: [u8; 3] = [0xA7, b'O', b'Q'];
pub(crate) const FRAME_HEADER: usize = 24;
pub(crate) const TAG: usize = 16;
/// Flag of the last record of an append: records after the last such flag at the end of a
/// segment belong to an append that never completed and are cut when the queue is opened.
pub(crate) const FLAG_BATCH_END: u8 = 1;

const HKDF_INFO: &[u8] = b"outpost-queue segment v1";

/// The size on disk of a record holding `len` bytes of data.
pub(crate) fn frame_size(len: usize) -> u64 {
    (FRAME_HEADER + len + TAG) as u64
}

/// A record's frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub flags: u8,
    /// Length of ciphertext and tag.
    pub len: u32,
    pub seq: u64,
    pub enqueued_ms: u64,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut h = [0u8; FRAME_HEADER];
        h[..3].copy_from_slice(&FRAME_MAGIC);
        h[3] = self.flags;
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h[16..24].copy_from_slice(&self.enqueued_ms.to_le_bytes());
        h
    }

    /// Decodes a header if `b` starts with one that is plausible: the magic matches, no
    /// unknown flag is set and the length leaves room for the tag and is at most `max_len`.
    pub fn decode(b: &[u8], max_len: u32) -> Option<Self> {
        let h: &[u8; FRAME_HEADER] = b.get(..FRAME_HEADER)?.try_into().ok()?;
        if h[..3] != FRAME_MAGIC || h[3] & !FLAG_BATCH_END != 0 {
            return None;
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if (len as usize) < TAG || len > max_len {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&h[8..16]);
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&h[16..24]);
        Some(Self {
            flags: h[3],
            len,
            seq: u64::from_le_bytes(seq),
            enqueued_ms: u64::from_le_bytes(ms),
        })
    }
}

/// The key of one segment.
pub(crate) struct SegmentKey(LessSafeKey);

impl std::fmt::Debug for SegmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentKey(<redacted>)")
    }
}

impl SegmentKey {
    pub fn derive(master: &[u8; 32], salt: &[u8; 16]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(master);
        let info = [HKDF_INFO];
        // `expand` fails only when the requested length exceeds 255 hash lengths; a
        // ChaCha20 key is one.
        let okm = prk
            .expand(&info, &aead::CHACHA20_POLY1305)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output is always available"));
        Self(LessSafeKey::new(UnboundKey::from(okm)))
    }

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Appends the frame of `data` to `out`.
    pub fn seal(&self, seq: u64, enqueued_ms: u64, flags: u8, data: &[u8], out: &mut Vec<u8>) {
        let header = FrameHeader {
            flags,
            len: (data.len() + TAG) as u32,
            seq,
            enqueued_ms,
        }
        .encode();
        out.extend_from_slice(&header);
        let start = out.len();
        out.extend_from_slice(data);
        let tag = self
            .0
            .seal_in_place_separate_tag(Self::nonce(seq), Aad::from(&header), &mut out[start..])
            .unwrap_or_else(|_| unreachable!("records are far below ChaCha20's length limit"));
        out.extend_from_slice(tag.as_ref());
    }

    /// Verifies and decrypts a frame's body (ciphertext and tag) in place; the plaintext is
    /// the returned prefix. `None` if the frame is not authentic.
    pub fn open<'a>(&self, header: &FrameHeader, body: &'a mut [u8]) -> Option<&'a mut [u8]> {
        let aad = header.encode();
        self.0
            .open_in_place(Self::nonce(header.seq), Aad::from(&aad), body)
            .ok()
    }
}

/// A segment header.
pub(crate) fn segment_header(salt: &[u8; 16], stream: u8) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..24].copy_from_slice(salt);
    h[24] = stream;
    h
}

/// The salt of a segment header, if `b` starts with one of `stream`.
pub(crate) fn parse_segment_header(b: &[u8], stream: u8) -> Option<[u8; 16]> {
    let h = b.get(..SEGMENT_HEADER)?;
    if &h[..8] != SEGMENT_MAGIC || h[24] != stream {
        return None;
    }
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&h[8..24]);
    Some(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_opens_and_any_flipped_bit_is_refused() {
        let key = SegmentKey::derive(&[7; 32], &[1; 16]);
        let mut out = Vec::new();
        key.seal(42, 1000, FLAG_BATCH_END, b"hello", &mut out);
        assert_eq!(out.len() as u64, frame_size(5));
        let open = |frame: &mut Vec<u8>| {
            FrameHeader::decode(frame, 1 << 20)
                .and_then(|h| key.open(&h, &mut frame[FRAME_HEADER..]).map(|p| p.to_vec()))
        };
        assert_eq!(open(&mut out.clone()).as_deref(), Some(&b"hello"[..]));
        for bit in 0..out.len() * 8 {
            let mut frame = out.clone();
            frame[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                open(&mut frame),
                None,
                "bit {bit} flipped and still accepted"
            );
        }
        let other = SegmentKey::derive(&[7; 32], &[2; 16]);
        let h = FrameHeader::decode(&out, 1 << 20).expect("header");
        assert!(other.open(&h, &mut out[FRAME_HEADER..]).is_none());
    }
}
