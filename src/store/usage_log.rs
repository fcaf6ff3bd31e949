//! The usage log: records appended by many callers, written and flushed in groups by one thread,
//! each caller waiting until its own record is durable.
//!
//! This is the durable half of the SQLite design measured in BENCHMARKS.md ("Next steps"):
//! calls decided against counters in memory, each VALID call's record flushed here before it is
//! answered, and the counters folded into SQLite in rare passes. It is not wired into the meter
//! yet; what it guarantees is tested here on its own.
//!
//! Two files of a fixed size, made once (zero-filled and flushed, so a flush rewrites blocks
//! that exist and the file's size never changes), are used in turn: records go into one from its
//! start until the next would not fit, then into the other, which may be reused only once every
//! record in it has been folded (`release`). A record is its header (magic, sequence number,
//! length, CRC-32 of all three and the payload) and its payload; numbers run on by one across
//! both files. `replay` reads each file from its start while records are whole and consecutive,
//! so a torn write (never acknowledged: the flush after it did not return) and the older
//! records a new round left behind are both where reading stops.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

/// A record's number: the first is 1, each next one more.
pub type Seq = u64;

const MAGIC: u32 = 0x5457_4c31; // "TWL1"
const HEADER: usize = 4 + 8 + 4 + 4;
/// The files' names in the data directory.
const NAMES: [&str; 2] = ["usage-log.0", "usage-log.1"];

/// Why the log refuses a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Writing or flushing failed: what was appended since the last flush is in an unknown
    /// state, so nothing more is taken (until a restart replays what is on disk).
    #[error("the usage log failed: {0}")]
    Failed(String),
    /// The record does not fit in one file.
    #[error("a usage record of {0} bytes does not fit in the log")]
    TooLarge(usize),
    /// The log was shut down.
    #[error("the usage log is closed")]
    Closed,
}

/// What the writer thread and the appenders share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (records appended, records released, shutdown).
    wake: Condvar,
    /// The highest number durable (flushed, or written when not flushing), or why none will be.
    durable: watch::Sender<Result<Seq, LogError>>,
}

struct State {
    /// Encoded records not yet taken by the writer, and where each ends in `buf`.
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// The number the next record gets.
    next: Seq,
    /// Every record up to this one is folded: its space may be reused.
    released: Seq,
    failed: Option<LogError>,
    closed: bool,
}

/// The appending side; cheap to clone.
#[derive(Clone)]
pub struct UsageLog {
    shared: Arc<Shared>,
    size: u64,
}

/// The writer thread, to be joined at shutdown.
pub struct Writer(std::thread::JoinHandle<()>);

impl UsageLog {
    /// Opens (making them when missing) the two files of `size` bytes each in `dir`, and starts
    /// the writer. Every record numbered below `next` must have been folded: both files are free.
    /// With `flush`, a record is durable once `fdatasync` returned after it; without, once
    /// written (a killed process loses nothing, a power loss may).
    pub fn open(dir: &Path, size: u64, flush: bool, next: Seq) -> io::Result<(UsageLog, Writer)> {
        let files = NAMES
            .iter()
            .map(|n| prepared(&dir.join(n), size))
            .collect::<io::Result<Vec<File>>>()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                ends: Vec::new(),
                next,
                released: next.saturating_sub(1),
                failed: None,
                closed: false,
            }),
            wake: Condvar::new(),
            durable: watch::channel(Ok(next.saturating_sub(1))).0,
        });
        let log = UsageLog { shared, size };
        let writer = {
            let log = log.clone();
            std::thread::Builder::new()
                .name("usage-log".into())
                .spawn(move || log.run(files, flush))?
        };
        Ok((log, Writer(writer)))
    }

    /// Appends a record; it is durable once `wait` returns for its number.
    pub fn append(&self, payload: &[u8]) -> Result<Seq, LogError> {
        if (HEADER + payload.len()) as u64 > self.size {
            return Err(LogError::TooLarge(payload.len()));
        }
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &s.failed {
            return Err(e.clone());
        }
        if s.closed {
            return Err(LogError::Closed);
        }
        let seq = s.next;
        s.next += 1;
        encode(&mut s.buf, seq, payload);
        let end = s.buf.len();
        s.ends.push(end);
        drop(s);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Waits until record `seq` is durable.
    pub async fn wait(&self, seq: Seq) -> Result<(), LogError> {
        let mut rx = self.shared.durable.subscribe();
        let got = rx
            .wait_for(|d| !matches!(d, Ok(n) if *n < seq))
            .await
            .map_err(|_| LogError::Closed)?;
        got.clone().map(|_| ())
    }

    /// Every record up to `seq` is folded into the store: the space it takes may be reused.
    pub fn release(&self, seq: Seq) {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.released = s.released.max(seq);
        drop(s);
        self.shared.wake.notify_one();
    }

    /// Takes no more records; the writer writes (and flushes) what it has, then ends.
    pub fn close(&self, writer: Writer) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.wake.notify_one();
        let _ = writer.0.join();
    }

    /// The writer: takes everything appended, writes it after what the current file holds
    /// (moving to the other file, once it is released, when a record would not fit), flushes,
    /// and publishes the last number written.
    fn run(self, mut files: Vec<File>, flush: bool) {
        // Current file, where its next record goes, and the last number each file holds.
        let (mut cur, mut offset, mut last) = (0usize, 0u64, [0 as Seq; 2]);
        loop {
            let (buf, ends, first) = {
                let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                while s.ends.is_empty() && !s.closed {
                    s = self.shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                if s.ends.is_empty() {
                    return;
                }
                let first = s.next - s.ends.len() as Seq;
                (
                    std::mem::take(&mut s.buf),
                    std::mem::take(&mut s.ends),
                    first,
                )
            };
            let mut start = 0usize;
            let mut written = Ok(());
            for (i, &end) in ends.iter().enumerate() {
                let len = (end - start) as u64;
                if offset + len > self.size {
                    // What this pass wrote so far is made durable (the fold may be waiting for
                    // it), then the other file is taken once all it holds is folded.
                    written = self.settle(&files[cur], flush, first + i as Seq - 1);
                    let other = 1 - cur;
                    if written.is_ok() && !self.wait_released(last[other]) {
                        written = Err(io::Error::other("closed while waiting for a fold"));
                    }
                    if written.is_err() {
                        break;
                    }
                    cur = other;
                    offset = 0;
                }
                written = write_at(&mut files[cur], offset, &buf[start..end]);
                if written.is_err() {
                    break;
                }
                offset += len;
                last[cur] = first + i as Seq;
                start = end;
            }
            let written = written
                .and_then(|()| self.settle(&files[cur], flush, first + ends.len() as Seq - 1));
            match written {
                Ok(()) => {}
                Err(e) => {
                    let e = LogError::Failed(e.to_string());
                    tracing::error!(error = %e, "writing the usage log failed");
                    self.shared
                        .state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .failed = Some(e.clone());
                    let _ = self.shared.durable.send_replace(Err(e));
                    return;
                }
            }
        }
    }

    /// Flushes `file` (with `flush`) and publishes every record up to `seq` as durable.
    fn settle(&self, file: &File, flush: bool, seq: Seq) -> io::Result<()> {
        if flush {
            file.sync_data()?;
        }
        self.shared.durable.send_if_modified(|d| match d {
            Ok(n) if *n < seq => {
                *d = Ok(seq);
                true
            }
            _ => false,
        });
        Ok(())
    }

    /// Waits until every record up to `seq` is released; false if the log closed meanwhile with
    /// that still not so.
    fn wait_released(&self, seq: Seq) -> bool {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.released < seq {
            if s.closed {
                return false;
            }
            s = self.shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        true
    }
}

fn encode(buf: &mut Vec<u8>, seq: Seq, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&MAGIC.to_le_bytes());
    crc.update(&seq.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(payload);
}

fn write_at(f: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

/// Opens `path`, making it `size` bytes of zeros (flushed, with its directory) when it is
/// missing or shorter.
fn prepared(path: &PathBuf, size: u64) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if f.metadata()?.len() < size {
        let zeros = vec![0u8; 1 << 20];
        f.seek(SeekFrom::Start(0))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(f)
}

/// The records on disk numbered after `after`, in order: what a start must fold before
/// serving. Refused when one is missing between `after` and the last found (a flushed record
/// lost), which no crash of this process or the machine can cause.
pub fn replay(dir: &Path, after: Seq) -> io::Result<Vec<(Seq, Vec<u8>)>> {
    let mut found = Vec::new();
    for name in NAMES {
        match File::open(dir.join(name)) {
            Ok(f) => found.extend(scan(f)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    found.retain(|(seq, _)| *seq > after);
    found.sort_by_key(|(seq, _)| *seq);
    for (i, (seq, _)) in found.iter().enumerate() {
        if *seq != after + 1 + i as Seq {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the usage log lacks record {} (folded up to {after}, found {seq})",
                    after + 1 + i as Seq
                ),
            ));
        }
    }
    Ok(found)
}

/// The first `N` bytes of `b` (which has at least that many).
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// The whole, consecutive records from the start of one file.
fn scan(mut f: File) -> io::Result<Vec<(Seq, Vec<u8>)>> {
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut out: Vec<(Seq, Vec<u8>)> = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let h = &bytes[at..at + HEADER];
        let word = |at: usize| u32::from_le_bytes(array(&h[at..]));
        let seq = Seq::from_le_bytes(array(&h[4..]));
        let (magic, len, crc) = (word(0), word(12) as usize, word(16));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..16]);
        c.update(payload);
        let next_in_line = out.last().is_none_or(|(prev, _)| seq == prev + 1);
        if magic != MAGIC || c.finalize() != crc || !next_in_line {
            break;
        }
        out.push((seq, payload.to_vec()));
        at += HEADER + len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn payload(seq: Seq) -> Vec<u8> {
        format!("token-{seq} counted {}", seq * 7).into_bytes()
    }

    #[tokio::test]
    async fn records_flushed_in_groups_come_back_in_order_across_both_files() {
        let dir = tempfile::tempdir().unwrap();
        // Small files: a few dozen records each, so the log goes round several times.
        let (log, writer) = UsageLog::open(dir.path(), 1024, true, 1).unwrap();
        let mut folded = 0;
        for round in 0..20u64 {
            let seqs: Vec<Seq> = (0..10)
                .map(|i| log.append(&payload(round * 10 + i + 1)).unwrap())
                .collect();
            for s in &seqs {
                log.wait(*s).await.unwrap();
            }
            // Fold all but the last round's records.
            log.release(folded);
            folded = *seqs.last().unwrap();
        }
        log.close(writer);
        let got = replay(dir.path(), 190).unwrap();
        let want: Vec<(Seq, Vec<u8>)> = (191..=200).map(|s| (s, payload(s))).collect();
        assert_eq!(got, want);
        // Asked from further back than the files reach, the gap is named, not skipped.
        let e = replay(dir.path(), 0).unwrap_err();
        assert!(e.to_string().contains("lacks record 1"), "{e}");
    }

    #[tokio::test]
    async fn a_file_is_reused_only_once_its_records_are_folded() {
        let dir = tempfile::tempdir().unwrap();
        let rec = vec![b'x'; 100];
        // Room for 8 records per file.
        let (log, writer) = UsageLog::open(dir.path(), 8 * (HEADER + 100) as u64, true, 1).unwrap();
        let mut last = 0;
        for _ in 0..24 {
            last = log.append(&rec).unwrap();
        }
        // Records 1–16 fill both files; 17 must wait for the first file's fold.
        tokio::time::timeout(Duration::from_secs(5), log.wait(16))
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), log.wait(17))
                .await
                .is_err(),
            "record 17 overwrote unfolded records"
        );
        // Nothing folded is lost meanwhile: everything on disk is still there.
        assert_eq!(replay(dir.path(), 0).unwrap().len(), 16);
        log.release(8);
        tokio::time::timeout(Duration::from_secs(5), log.wait(last))
            .await
            .unwrap()
            .unwrap();
        log.close(writer);
        let got = replay(dir.path(), 8).unwrap();
        assert_eq!(got.first().map(|r| r.0), Some(9));
        assert_eq!(got.last().map(|r| r.0), Some(24));
    }

    #[test]
    fn a_torn_tail_ends_the_replay_at_the_last_whole_record_wherever_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (log, writer) = UsageLog::open(dir.path(), 4096, false, 1).unwrap();
        for s in 1..=5 {
            let seq = log.append(&payload(s)).unwrap();
            rt.block_on(log.wait(seq)).unwrap();
        }
        log.close(writer);
        let path = dir.path().join(NAMES[0]);
        let whole = std::fs::read(&path).unwrap();
        let ends: Vec<usize> = (1..=5u64)
            .scan(0, |at, s| {
                *at += HEADER + payload(s).len();
                Some(*at)
            })
            .collect();
        // Cut (zeros from there on, as an unwritten block reads back) at every byte of the
        // last two records, and flip each byte of them: only whole records come back.
        for cut in ends[2]..=ends[4] {
            let mut torn = whole.clone();
            torn[cut..].iter_mut().for_each(|b| *b = 0);
            std::fs::write(&path, &torn).unwrap();
            let n = replay(dir.path(), 0).unwrap().len();
            let want = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(n, want, "cut at byte {cut}");
            if cut < ends[4] {
                let mut flipped = whole.clone();
                flipped[cut] ^= 0x40;
                std::fs::write(&path, &flipped).unwrap();
                let got = replay(dir.path(), 0).unwrap();
                assert!(got.len() < 5, "a changed byte at {cut} went unnoticed");
                assert_eq!(
                    got,
                    (1..=got.len() as u64)
                        .map(|s| (s, payload(s)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    #[tokio::test]
    async fn records_left_from_an_earlier_round_are_not_replayed() {
        // Records of one length, so the old round's records start exactly where the new round's
        // end and only their numbers tell them apart.
        let fixed = |seq: Seq| format!("token-{seq:04}").into_bytes();
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = UsageLog::open(dir.path(), 4096, true, 1).unwrap();
        for s in 1..=20 {
            log.append(&fixed(s)).unwrap();
        }
        log.wait(20).await.unwrap();
        log.close(writer);
        // A restart after folding all 20 writes over the start of the same file.
        let (log, writer) = UsageLog::open(dir.path(), 4096, true, 21).unwrap();
        for s in 21..=23 {
            log.append(&fixed(s)).unwrap();
        }
        log.wait(23).await.unwrap();
        log.close(writer);
        let got = replay(dir.path(), 20).unwrap();
        assert_eq!(got, (21..=23).map(|s| (s, fixed(s))).collect::<Vec<_>>());
        assert_eq!(replay(dir.path(), 22).unwrap().len(), 1);
    }

    #[test]
    fn a_record_larger_than_a_file_or_after_close_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = UsageLog::open(dir.path(), 256, true, 1).unwrap();
        assert_eq!(log.append(&[0u8; 300]), Err(LogError::TooLarge(300)));
        log.close(writer);
        assert_eq!(log.append(b"late"), Err(LogError::Closed));
    }
}
