//! Segment files: naming, recovery scanning, and sequential reading.
//!
//! A segment is `{first_lsn:020}.wal`, a run of frames (see [`super::record`]) in LSN order.
//! LSNs rise but may have gaps (an append that failed on I/O keeps its number).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Take};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::{FRAME_HEADER, MAX_PAYLOAD};

pub(crate) const EXTENSION: &str = "wal";

pub(crate) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.{EXTENSION}"))
}

/// The segments in `dir`, by first LSN.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == EXTENSION)
            && let Some(lsn) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((lsn, path));
        }
    }
    out.sort();
    Ok(out)
}

/// How far past the last good LSN a frame found after damage may be: LSNs rise by one per
/// append (an append that failed keeps its number), so a frame further on is noise. This
/// keeps the search through damaged bytes linear: noise almost never passes it, so the
/// CRC of a random length is almost never computed.
const SEARCH_LSN_GAP: u64 = 1 << 32;
/// A run of two or more frames found after damage is taken back if it starts this close to
/// the last good LSN (the damaged records' own LSNs lie between).
const RESUME_LSN_GAP: u64 = 1024;

/// A valid frame at `offset` of `bytes` after LSN `after`: its LSN and total length.
fn frame_at(bytes: &[u8], offset: usize, after: u64) -> Option<(u64, usize)> {
    frame_within(bytes, offset, after, u64::MAX)
}

/// [`frame_at`], for an LSN of at most `max_lsn`.
fn frame_within(bytes: &[u8], offset: usize, after: u64, max_lsn: u64) -> Option<(u64, usize)> {
    let header = bytes.get(offset..offset + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if !(8..=MAX_PAYLOAD).contains(&len) {
        return None;
    }
    let payload = bytes.get(offset + FRAME_HEADER..offset + FRAME_HEADER + len)?;
    let lsn = u64::from_le_bytes(payload[0..8].try_into().ok()?);
    // Cheap checks first; the CRC last.
    if lsn <= after || lsn > max_lsn || crc32c::crc32c(payload) != crc {
        return None;
    }
    Some((lsn, FRAME_HEADER + len))
}

/// What a scan found in one segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Last valid LSN (`after` if the segment holds none).
    pub last_lsn: u64,
    /// Records found valid.
    pub records: u64,
    /// Bytes of valid frames from the start (where a torn tail is cut).
    pub valid_end: u64,
    /// A bad frame at `offset`, followed by valid frames from `resumes_at` (mid-segment
    /// corruption) or by nothing valid (`None`: a torn tail, or garbage to the end).
    pub damage: Option<Damage>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Damage {
    pub offset: u64,
    pub resumes_at: Option<u64>,
}

/// Checks every frame of a segment's bytes (LSNs must rise past `after`).
pub fn scan(bytes: &[u8], after: u64) -> Scan {
    let mut offset = 0;
    let mut last = after;
    let mut records = 0;
    while offset < bytes.len() {
        match frame_at(bytes, offset, last) {
            Some((lsn, len)) => {
                last = lsn;
                records += 1;
                offset += len;
            }
            None => {
                let resumes_at = next_frame(bytes, offset + 1, last).map(|p| p as u64);
                return Scan {
                    last_lsn: last,
                    records,
                    valid_end: offset as u64,
                    damage: Some(Damage {
                        offset: offset as u64,
                        resumes_at,
                    }),
                };
            }
        }
    }
    Scan {
        last_lsn: last,
        records,
        valid_end: offset as u64,
        damage: None,
    }
}

/// Where the next frame after damage may start, at or after `from` (see [`SEARCH_LSN_GAP`]).
fn next_frame(bytes: &[u8], from: usize, last: u64) -> Option<usize> {
    let max = last.saturating_add(SEARCH_LSN_GAP);
    (from..bytes.len()).find(|&p| frame_within(bytes, p, last, max).is_some())
}

/// The valid frames of `bytes`, skipping damaged stretches: what remains of a segment
/// when the operator chooses to skip corruption.
///
/// After damage, reading resumes with a run of valid frames (rising LSNs) only if it runs to
/// the end of the segment, or is followed by nothing that could be a frame (a torn tail), or
/// holds two frames or more and starts within `RESUME_LSN_GAP` of the last good LSN (a
/// run between two damaged stretches). A frame found at just any
/// offset is not enough: readings carry client-chosen bytes (float values), and a frame
/// embedded in a record the damage cut must not come back as a record of its own, nor hide
/// the genuine records after it behind its higher LSN. Each offset is tried once, so the
/// work stays linear in the segment.
pub fn salvage(bytes: &[u8], after: u64) -> (Vec<u8>, u64, u64) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut offset = 0;
    let mut last = after;
    let mut skipped = 0u64;
    let mut damaged = false;
    // Frame starts already walked as part of a run that was not taken back.
    let mut refused = std::collections::HashSet::new();
    while offset < bytes.len() {
        if !damaged {
            if let Some((lsn, len)) = frame_at(bytes, offset, last) {
                out.extend_from_slice(&bytes[offset..offset + len]);
                last = lsn;
                offset += len;
                continue;
            }
            damaged = true;
        }
        let max = last.saturating_add(SEARCH_LSN_GAP);
        if !refused.contains(&offset)
            && let Some((first, _)) = frame_within(bytes, offset, last, max)
        {
            // Walk the run.
            let mut frames = Vec::new();
            let (mut at, mut run_last) = (offset, last);
            while let Some((lsn, len)) = frame_at(bytes, at, run_last) {
                frames.push(at);
                run_last = lsn;
                at += len;
            }
            let taken = at == bytes.len()
                || (frames.len() >= 2 && first <= last.saturating_add(RESUME_LSN_GAP))
                || next_frame(bytes, at, last).is_none();
            if taken {
                out.extend_from_slice(&bytes[offset..at]);
                last = run_last;
                offset = at;
                damaged = false;
                continue;
            }
            refused.extend(frames);
        }
        offset += 1;
        skipped += 1;
    }
    (out, last, skipped)
}

/// Cuts a segment at `len` bytes, durably.
pub(crate) fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

/// Each segment's length as far as the writer has written it whole, by first LSN.
pub(crate) type Lengths = Arc<Mutex<BTreeMap<u64, u64>>>;

/// Reads records in order across segments, up to what the writer has committed.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    /// First LSN of the segment being read, and the reader on it.
    current: Option<(u64, BufReader<Take<File>>)>,
    /// The last LSN returned (or skipped over).
    last_lsn: u64,
    /// A reader of a live log reads no byte of a segment past its written length: a write
    /// that failed is cut back and its LSNs never answered, and bytes of it read ahead
    /// into a buffer would come back as records (a reading its device was told was refused,
    /// then sent again). `None` for a log no writer has open.
    lengths: Option<Lengths>,
    /// Bytes of the current segment the reader has been allowed so far.
    granted: u64,
}

impl Reader {
    /// A reader that returns records with LSN greater than `after`.
    pub fn new(dir: &Path, after: u64) -> Reader {
        Reader {
            dir: dir.to_path_buf(),
            current: None,
            last_lsn: after,
            lengths: None,
            granted: 0,
        }
    }

    /// [`Reader::new`] for a log a writer has open: reads no byte past `lengths`.
    pub fn bounded(dir: &Path, after: u64, lengths: Lengths) -> Reader {
        Reader {
            lengths: Some(lengths),
            ..Reader::new(dir, after)
        }
    }

    /// Lets the reader read the current segment up to its written length.
    fn extend_limit(&mut self) {
        let (Some(lengths), Some((first, reader))) = (&self.lengths, self.current.as_mut()) else {
            return;
        };
        let len = lengths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(first)
            .copied()
            // No longer listed: released, so written whole.
            .unwrap_or(u64::MAX);
        let take = reader.get_mut();
        let passed = self.granted - take.limit();
        let allowed = len.saturating_sub(passed);
        take.set_limit(allowed);
        self.granted = passed + allowed;
    }

    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// Opens the segment that holds the first record after `last_lsn`.
    fn open_next(&mut self) -> io::Result<bool> {
        let segments = list(&self.dir)?;
        let from = self.current.as_ref().map(|(first, _)| *first);
        // The last segment starting at or before the next LSN, but never going back.
        let target = segments
            .iter()
            .rev()
            .find(|(first, _)| *first <= self.last_lsn + 1)
            .or_else(|| segments.first());
        let next = match (from, target) {
            (Some(current), _) => segments.iter().find(|(first, _)| *first > current),
            (None, t) => t,
        };
        match next {
            Some((first, path)) => {
                let limit = if self.lengths.is_some() { 0 } else { u64::MAX };
                let file = File::open(path)?.take(limit);
                self.current = Some((*first, BufReader::with_capacity(1 << 20, file)));
                self.granted = limit;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next record's payload with LSN ≤ `committed`, or `None` if there is none yet.
    pub fn next(&mut self, committed: u64) -> io::Result<Option<Vec<u8>>> {
        let mut payload = Vec::new();
        Ok(self.next_into(committed, &mut payload)?.then_some(payload))
    }

    /// Like [`Reader::next`], into a buffer the caller reuses; `false` if there is no record yet.
    pub fn next_into(&mut self, committed: u64, payload: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            if self.last_lsn >= committed {
                return Ok(false);
            }
            if self.current.is_none() && !self.open_next()? {
                return Ok(false);
            }
            self.extend_limit();
            let Some((_, reader)) = self.current.as_mut() else {
                return Ok(false);
            };
            let mut header = [0u8; FRAME_HEADER];
            match read_full(reader, &mut header)? {
                0 => {
                    // End of this segment: the next record is in a later one.
                    if !self.open_next()? {
                        return Ok(false);
                    }
                    continue;
                }
                n if n < FRAME_HEADER => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "partial WAL frame header",
                    ));
                }
                _ => {}
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if !(8..=MAX_PAYLOAD).contains(&len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "WAL frame length out of range",
                ));
            }
            payload.clear();
            payload.resize(len, 0);
            reader.read_exact(payload)?;
            if crc32c::crc32c(payload) != crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "WAL frame CRC mismatch",
                ));
            }
            let lsn = u64::from_le_bytes(payload[0..8].try_into().unwrap_or([0; 8]));
            if lsn <= self.last_lsn {
                // Already returned (a reader positioned at a segment's start skips ahead).
                continue;
            }
            self.last_lsn = lsn;
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod salvage_tests {
    use super::*;

    /// A frame: `len crc payload` with the LSN first in the payload.
    fn frame(lsn: u64, body: &[u8]) -> Vec<u8> {
        let mut payload = lsn.to_le_bytes().to_vec();
        payload.extend_from_slice(body);
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend(crc32c::crc32c(&payload).to_le_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn a_frame_inside_a_damaged_record_does_not_come_back() {
        // Record 2 carries client bytes that happen to form a frame (LSN 99).
        let embedded = frame(99, b"forged readings");
        let mut body = b"header".to_vec();
        body.extend(&embedded);
        body.extend(b"rest of record 2");
        let mut bytes = frame(1, b"record 1");
        let second_at = bytes.len();
        bytes.extend(frame(2, &body));
        bytes.extend(frame(3, b"record 3"));
        bytes.extend(frame(4, b"record 4"));
        // Damage the second record's header: the embedded frame is now visible on its own.
        bytes[second_at] ^= 0xff;
        let (good, last, skipped) = salvage(&bytes, 0);
        let mut want = frame(1, b"record 1");
        want.extend(frame(3, b"record 3"));
        want.extend(frame(4, b"record 4"));
        assert_eq!(good, want);
        assert_eq!(last, 4);
        assert_eq!(skipped as usize, bytes.len() - want.len());
    }

    #[test]
    fn runs_between_damage_and_a_torn_tail_are_kept() {
        // A bit flipped in record 2, records 3 to 5 whole, record 6 torn by a crash.
        let mut bytes = frame(1, b"record 1");
        let second_at = bytes.len();
        bytes.extend(frame(2, b"record 2"));
        let mut want = frame(1, b"record 1");
        for lsn in 3..=5 {
            bytes.extend(frame(lsn, b"a record"));
            want.extend(frame(lsn, b"a record"));
        }
        let torn = frame(6, b"record six, cut short");
        bytes.extend(&torn[..torn.len() - 5]);
        bytes[second_at + 10] ^= 0x01;
        let (good, last, _) = salvage(&bytes, 0);
        assert_eq!(good, want);
        assert_eq!(last, 5);

        // Two damaged records with whole ones between and after them: all whole ones kept.
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        let mut damaged = Vec::new();
        for lsn in 1..=8u64 {
            if lsn == 3 || lsn == 6 {
                damaged.push(bytes.len());
            } else {
                want.extend(frame(lsn, b"a record"));
            }
            bytes.extend(frame(lsn, b"a record"));
        }
        for at in damaged {
            bytes[at + 12] ^= 0x80;
        }
        let (good, last, _) = salvage(&bytes, 0);
        assert_eq!(good, want);
        assert_eq!(last, 8);
    }

    #[test]
    fn salvage_of_noise_is_linear() {
        // 8 MiB of noise: every offset is tried once, cheaply (no CRC over random lengths).
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..8 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let started = std::time::Instant::now();
        let (good, _, skipped) = salvage(&noise, 0);
        assert!(good.is_empty());
        assert_eq!(skipped as usize, noise.len());
        // Generous: a quadratic search takes hours here.
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
    }

    #[test]
    fn damage_at_the_end_keeps_what_came_before() {
        let mut bytes = frame(1, b"one");
        bytes.extend(frame(2, b"two"));
        let keep = bytes.len();
        bytes.extend(b"\xff\xff garbage");
        let (good, last, _) = salvage(&bytes, 0);
        assert_eq!(good, bytes[..keep]);
        assert_eq!(last, 2);
    }
}
