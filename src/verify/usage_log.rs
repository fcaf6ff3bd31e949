//! The usage log: records appended by many callers, written and flushed in groups by one thread,
//! each caller waiting until its own record is durable.
//!
//! This is the durable half of the SQLite ledger (BENCHMARKS.md, "What limits each number"):
//! calls decided against counters in memory, each VALID call's record flushed here before it is
//! answered, and the counters folded into SQLite in rare passes. `verify::ledger` drives it.
//!
//! Two files are used in turn: records go into one from its start until the next would not fit,
//! then into the other, which may be reused only once every record in it has been folded
//! (`release`). A file holds records only where it was zero-filled and flushed beforehand, so a
//! flush rewrites blocks that exist and leaves the file's size alone. Each start makes both files
//! one `chunk` long; the writer zero-fills one more chunk ahead of the records only while the other
//! file still waits for a fold, up to the configured size, so the files grow with what arrives
//! between two folds and an idle store stays small. A failed zero-fill (a full disk) only keeps a
//! file at its length: records then wait for a fold (`Behind`) instead of failing the log.
//!
//! A record is its header (magic, the run's epoch, sequence number, length, CRC-32 of all four
//! and the payload) and its payload; numbers run on by one across both files. Each start of the
//! daemon folds everything on disk and then writes under a new epoch, so a record of another epoch is either folded or was never acknowledged
//! (written but not flushed when the machine stopped; blocks can reach the disk out of order).
//! `replay` reads each file from its start while records are whole, of the epoch asked for and
//! consecutive, and returns the run of numbers after the folded one up to the first gap:
//! nothing after a missing record was acknowledged, since a record is acknowledged only once
//! every record before it is flushed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

/// A record's number: the first is 1, each next one more.
pub type Seq = u64;

/// A record read back: its number and payload.
pub type Record = (Seq, Vec<u8>);

const MAGIC: u32 = 0x5457_4c31; // "TWL1"
/// A record's header in bytes (before its payload).
pub const HEADER: usize = 4 + 8 + 8 + 4 + 4;
/// The files' names: the base path (the database file's) with these suffixes.
const SUFFIXES: [&str; 2] = ["-usage.0", "-usage.1"];

/// The two files of the log at `base`.
pub fn file_paths(base: &Path) -> [std::path::PathBuf; 2] {
    SUFFIXES.map(|s| {
        let mut p = base.as_os_str().to_owned();
        p.push(s);
        p.into()
    })
}

/// Why the log refuses a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Writing or flushing failed: what was appended since the last flush is in an unknown
    /// state, so nothing more is taken (until a restart replays what is on disk).
    #[error("the usage log failed: {0}")]
    Failed(String),
    /// The record does not fit in one file.
    #[error("a usage record's payload of {0} bytes does not fit in one log file")]
    TooLarge(usize),
    /// The record would have to wait for a fold to free the other file.
    #[error("the usage log is waiting for a fold")]
    Behind,
    /// The log was shut down.
    #[error("the usage log is closed")]
    Closed,
}

/// What the writer thread and the appenders share.
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (records appended, records released, shutdown).
    wake: Condvar,
    /// What is durable, and why nothing more will be.
    durable: watch::Sender<Durable>,
}

/// The highest number durable (flushed, or written when not flushing): a failure later does
/// not take that back. `failed` says why nothing after it will be.
#[derive(Debug, Clone)]
struct Durable {
    upto: Seq,
    failed: Option<LogError>,
}

struct State {
    /// Encoded records not yet taken by the writer, and for each where it ends in `buf` and the
    /// file it goes to (at the end of the records before it there, or at the start).
    buf: Vec<u8>,
    ends: Vec<(usize, usize)>,
    /// The number the next record gets.
    next: Seq,
    /// Every record up to this one is folded: its space may be reused.
    released: Seq,
    closed: bool,
    /// Callers of `append_waiting`, in number order, each told once its record is durable (or
    /// will never be). Only these are woken: a `watch` would wake every waiter at each flush.
    waiters: std::collections::VecDeque<(Seq, Notice)>,
    /// Set with the failure, under this lock, so no waiter is queued after the writer stopped.
    failed: Option<LogError>,
    /// How far each file is zero-filled: where records may go.
    filled: [u64; 2],
    /// The writer sleeps on `wake`: an append must wake it (otherwise it will look again by
    /// itself, and waking it would cost a system call per record).
    writer_waiting: bool,
    /// Where the records appended so far end up, as the writer will place them: the file the
    /// last one goes to, where the next would start in it, and the last number each file holds.
    /// A record is taken only where the writer can write it without waiting for a fold, so an
    /// answer never waits on the store (a caller whose record waited could time out, and the
    /// call would be counted all the same).
    tail: (usize, u64),
    last_in: [Seq; 2],
}

/// The appending side; cheap to clone.
#[derive(Clone)]
pub struct UsageLog {
    shared: Arc<Shared>,
    /// The most a file may grow to.
    size: u64,
    /// What a file starts at, and grows by.
    chunk: u64,
    epoch: u64,
}

/// The step a file of at most `size` bytes grows by: small enough that an idle store stays small
/// and a zero-fill is a short pause for the writer, large enough to be rare.
pub fn chunk_for(size: u64) -> u64 {
    (size / 64).clamp(64 << 10, 2 << 20).min(size)
}

/// The writer thread, to be joined at shutdown.
pub struct Writer(std::thread::JoinHandle<()>);

type Notice = tokio::sync::oneshot::Sender<Result<(), LogError>>;

/// Resolves once an appended record is durable (`UsageLog::append_waiting`).
pub struct Durability(tokio::sync::oneshot::Receiver<Result<(), LogError>>);

impl Durability {
    /// Waits for the record.
    pub async fn wait(self) -> Result<(), LogError> {
        self.0.await.unwrap_or(Err(LogError::Closed))
    }
}

impl UsageLog {
    /// Opens the two files at `base` (`file_paths`), each made one chunk (`chunk_for(size)`) of
    /// zeros and allowed to grow to `size` bytes, and starts the writer, numbering from `next`
    /// (at least 1) under `epoch`, which differs from every earlier run's. Every record on disk
    /// must have been replayed and folded before: both files are free. With `flush`, a record is durable once `fdatasync` returned
    /// after it; without, once written (a killed process loses nothing, a power loss may).
    pub fn open(
        base: &Path,
        size: u64,
        flush: bool,
        next: Seq,
        epoch: u64,
    ) -> io::Result<(UsageLog, Writer)> {
        if next == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage log numbers start at 1",
            ));
        }
        let chunk = chunk_for(size);
        let files = file_paths(base)
            .iter()
            .map(|p| prepared(p, chunk))
            .collect::<io::Result<Vec<File>>>()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::new(),
                ends: Vec::new(),
                next,
                released: next - 1,
                closed: false,
                waiters: Default::default(),
                failed: None,
                writer_waiting: false,
                tail: (0, 0),
                last_in: [0; 2],
                filled: [chunk; 2],
            }),
            wake: Condvar::new(),
            durable: watch::channel(Durable {
                upto: next - 1,
                failed: None,
            })
            .0,
        });
        let log = UsageLog {
            shared,
            size,
            chunk,
            epoch,
        };
        let writer = {
            let log = log.clone();
            std::thread::Builder::new()
                .name("usage-log".into())
                .spawn(move || {
                    super::ledger::abort_on_panic("usage log", || log.run(files, flush))
                })?
        };
        Ok((log, Writer(writer)))
    }

    /// Appends a record; it is durable once `wait` returns for its number. Refused when it could
    /// not be written before a fold frees space (`Behind`), so a stalled fold neither grows
    /// memory nor keeps a caller waiting.
    pub fn append(&self, payload: &[u8]) -> Result<Seq, LogError> {
        self.push(payload, None)
    }

    /// Appends a record, and returns what resolves once it is durable (`Err` when it never
    /// will be: the log failed or closed first).
    pub fn append_waiting(&self, payload: &[u8]) -> Result<(Seq, Durability), LogError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seq = self.push(payload, Some(tx))?;
        Ok((seq, Durability(rx)))
    }

    fn push(&self, payload: &[u8], notice: Option<Notice>) -> Result<Seq, LogError> {
        if (HEADER + payload.len()) as u64 > self.chunk {
            return Err(LogError::TooLarge(payload.len()));
        }
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (file, offset) = self.place(&s, payload.len())?;
        let seq = s.next;
        s.next += 1;
        s.tail = (file, offset + (HEADER + payload.len()) as u64);
        s.last_in[file] = seq;
        encode(&mut s.buf, self.epoch, seq, payload);
        let end = s.buf.len();
        s.ends.push((end, file));
        if let Some(n) = notice {
            s.waiters.push_back((seq, n));
        }
        let wake = s.writer_waiting;
        drop(s);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(seq)
    }

    /// Whether an append of a payload of at most `len` bytes would be taken now: `Err` with the
    /// reason it would be refused, appending nothing. It still holds at the caller's next append
    /// when every append is made under one lock of the caller's, held across both (the ledger's
    /// cache): then only the writer can change it, by failing for good.
    pub fn admits(&self, len: usize) -> Result<(), LogError> {
        if (HEADER + len) as u64 > self.chunk {
            return Err(LogError::TooLarge(len));
        }
        let s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        self.place(&s, len).map(|_| ())
    }

    /// Where a record with a payload of `len` bytes would go (file, offset), or why it is
    /// refused: the log failed or closed, or it would have to wait for a fold to free the other
    /// file, or for the writer to zero-fill more of this one (`Behind`).
    fn place(&self, s: &State, len: usize) -> Result<(usize, u64), LogError> {
        self.refusal(s)?;
        let (file, offset) = s.tail;
        if offset + (HEADER + len) as u64 <= s.filled[file] {
            return Ok((file, offset));
        }
        let other = 1 - file;
        if s.released < s.last_in[other] {
            return Err(LogError::Behind);
        }
        Ok((other, 0))
    }

    fn refusal(&self, s: &State) -> Result<(), LogError> {
        if let Some(e) = &s.failed {
            return Err(e.clone());
        }
        if s.closed {
            return Err(LogError::Closed);
        }
        // (Memory is bounded by `place`: what waits for the writer fits in the two files.)
        Ok(())
    }

    /// Waits until record `seq` is durable.
    pub async fn wait(&self, seq: Seq) -> Result<(), LogError> {
        let mut rx = self.shared.durable.subscribe();
        let got = rx
            .wait_for(|d| d.upto >= seq || d.failed.is_some())
            .await
            .map_err(|_| LogError::Closed)?;
        match &got.failed {
            Some(e) if got.upto < seq => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Why nothing more is taken, once writing failed.
    pub fn failure(&self) -> Option<LogError> {
        self.shared.durable.borrow().failed.clone()
    }

    /// Every record up to `seq` is folded into the store: the space it takes may be reused.
    pub fn release(&self, seq: Seq) {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.released = s.released.max(seq);
        drop(s);
        self.shared.wake.notify_one();
    }

    /// Takes no more records; the writer writes (and flushes) what it has, then ends. The last
    /// fold must release what the writer waits for (a full ring), or those records are refused.
    pub fn close(&self, writer: Writer) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.shared.wake.notify_one();
        let _ = writer.0.join();
    }

    /// The writer: takes everything appended, writes each record where `place` put it (moving
    /// to the other file, once it is released, when the records do), flushes, publishes the
    /// last number written, and zero-fills more of the file the records go to when it nears its
    /// end while the other file still waits for a fold (`grow`).
    fn run(self, mut files: Vec<File>, flush: bool) {
        // Current file, where its next record goes, and the last number each file holds.
        let (mut cur, mut offset, mut last) = (0usize, 0u64, [0 as Seq; 2]);
        let mut quiet_until = std::time::Instant::now();
        loop {
            let (buf, ends, first) = {
                let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                while s.ends.is_empty() && !s.closed {
                    s.writer_waiting = true;
                    s = self.shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                s.writer_waiting = false;
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
            // Records that go to the same file are written with one call: from `run` (in `buf`)
            // at `run_at` (in the file).
            let (mut start, mut run, mut run_at) = (0usize, 0usize, offset);
            let mut written = Ok(());
            for (i, &(end, file)) in ends.iter().enumerate() {
                if file != cur {
                    // What this pass wrote so far is made durable (the fold may be waiting for
                    // it), then the other file is taken once all it holds is folded (`place`
                    // saw it so; waiting here only guards that).
                    // (Nothing of this pass went to that file when it is the first record.)
                    if run < start {
                        written = write_at(&mut files[cur], run_at, &buf[run..start])
                            .and_then(|()| self.settle(&files[cur], flush, first + i as Seq - 1));
                    }
                    if written.is_ok() && !self.wait_released(last[file]) {
                        written = Err(io::Error::other("closed while waiting for a fold"));
                    }
                    if written.is_err() {
                        break;
                    }
                    cur = file;
                    (offset, run, run_at) = (0, start, 0);
                }
                offset += (end - start) as u64;
                last[cur] = first + i as Seq;
                start = end;
            }
            let written = written
                .and_then(|()| write_at(&mut files[cur], run_at, &buf[run..start]))
                .and_then(|()| self.settle(&files[cur], flush, first + ends.len() as Seq - 1));
            if let Err(e) = written {
                let e = LogError::Failed(e.to_string());
                tracing::error!(error = %e, "writing the usage log failed");
                // Appends see it here too, and are refused from now on.
                self.shared
                    .durable
                    .send_modify(|d| d.failed = Some(e.clone()));
                let waiters = {
                    let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.failed = Some(e.clone());
                    std::mem::take(&mut s.waiters)
                };
                for (_, n) in waiters {
                    let _ = n.send(Err(e.clone()));
                }
                return;
            }
            if let Err(e) = self.grow(&mut files, flush) {
                // The file keeps its length; records wait for a fold meanwhile (`Behind`).
                if std::time::Instant::now() >= quiet_until {
                    tracing::warn!(error = %e, "cannot grow the usage log; calls wait for a fold");
                    quiet_until = std::time::Instant::now() + std::time::Duration::from_secs(60);
                }
            }
        }
    }

    /// Zero-fills one more chunk of the file the records go to when they come within a chunk of
    /// its filled end, it may still grow, and the other file holds records not yet folded (so
    /// they could not move there). The zeros are flushed before `place` may put records there.
    fn grow(&self, files: &mut [File], flush: bool) -> io::Result<()> {
        let (file, from) = {
            let s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let (file, offset) = s.tail;
            let filled = s.filled[file];
            // (`place` never puts the tail past `filled`.)
            if filled >= self.size
                || filled - offset >= self.chunk
                || s.released >= s.last_in[1 - file]
            {
                return Ok(());
            }
            (file, filled)
        };
        let to = (from + self.chunk).min(self.size);
        let zeroed = zero_fill(&mut files[file], from, to).and_then(|()| {
            if flush {
                files[file].sync_data()?;
            }
            Ok(())
        });
        if let Err(e) = zeroed {
            // Nothing was placed past `from`: cut what was written of the zeros.
            let _ = files[file].set_len(from);
            return Err(e);
        }
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.filled[file] = to;
        Ok(())
    }

    /// Flushes `file` (with `flush`) and publishes every record up to `seq` as durable.
    fn settle(&self, file: &File, flush: bool, seq: Seq) -> io::Result<()> {
        if flush {
            file.sync_data()?;
        }
        self.shared.durable.send_if_modified(|d| {
            let newer = d.upto < seq;
            d.upto = d.upto.max(seq);
            newer
        });
        let mut done = Vec::new();
        {
            let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while s.waiters.front().is_some_and(|(n, _)| *n <= seq) {
                done.extend(s.waiters.pop_front());
            }
        }
        // Woken outside the lock.
        for (_, n) in done {
            let _ = n.send(Ok(()));
        }
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

fn encode(buf: &mut Vec<u8>, epoch: u64, seq: Seq, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&epoch.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&buf[start..]);
    crc.update(payload);
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(payload);
}

fn write_at(f: &mut File, offset: u64, bytes: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)
}

/// Opens `path` and makes it `len` bytes long, zero-filled where it was not written before, and
/// flushed with its directory. What it held was folded before this start, so what lies beyond
/// `len` goes.
fn prepared(path: &Path, len: u64) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let had = f.metadata()?.len();
    if had != len {
        if had > len {
            f.set_len(len)?;
        } else {
            zero_fill(&mut f, had, len)?;
        }
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(f)
}

/// Writes zeros over `from..to` of `f`.
fn zero_fill(f: &mut File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
    f.seek(SeekFrom::Start(from))?;
    let mut left = to - from;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What a start must fold before serving: the records of `epoch` (the last run's) numbered
/// after `after`, in order, up to the first missing number; and how many records of that epoch
/// were found beyond such a gap (never acknowledged, so not counted; worth a warning).
pub fn replay(base: &Path, after: Seq, epoch: u64) -> io::Result<(Vec<Record>, usize)> {
    let mut found = Vec::new();
    for path in file_paths(base) {
        match File::open(&path) {
            Ok(f) => found.extend(scan(f, epoch)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    found.retain(|(seq, _)| *seq > after);
    found.sort_by_key(|(seq, _)| *seq);
    let run = found
        .iter()
        .zip(after + 1..)
        .take_while(|((seq, _), want)| seq == want)
        .count();
    let beyond = found.len() - run;
    found.truncate(run);
    Ok((found, beyond))
}

/// The first `N` bytes of `b` (which has at least that many).
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// The whole, consecutive records of `epoch` from the start of one file.
fn scan(mut f: File, epoch: u64) -> io::Result<Vec<Record>> {
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let h = &bytes[at..at + HEADER];
        let magic = u32::from_le_bytes(array(h));
        let their_epoch = u64::from_le_bytes(array(&h[4..]));
        let seq = Seq::from_le_bytes(array(&h[12..]));
        let len = u32::from_le_bytes(array(&h[20..])) as usize;
        let crc = u32::from_le_bytes(array(&h[24..]));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        let mut c = crc32fast::Hasher::new();
        c.update(&h[..24]);
        c.update(payload);
        let next_in_line = out.last().is_none_or(|(prev, _)| seq == prev + 1);
        if magic != MAGIC || c.finalize() != crc || their_epoch != epoch || !next_in_line {
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

    /// Records of one length, so an earlier round's records start exactly where a new round's
    /// end and only their numbers and epoch tell them apart.
    fn fixed(seq: Seq) -> Vec<u8> {
        format!("token-{seq:04}").into_bytes()
    }

    fn numbered(seqs: std::ops::RangeInclusive<Seq>, f: fn(Seq) -> Vec<u8>) -> Vec<Record> {
        seqs.map(|s| (s, f(s))).collect()
    }

    #[tokio::test]
    async fn records_come_back_in_order_across_both_files_and_rounds() {
        let dir = tempfile::tempdir().unwrap();
        // Small files: about two dozen records each, so the log goes round several times.
        let (log, writer) = UsageLog::open(&dir.path().join("db"), 1024, true, 1, 1).unwrap();
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
        assert_eq!(
            replay(&dir.path().join("db"), 190, 1).unwrap(),
            (numbered(191..=200, payload), 0)
        );
        // From further back than the files reach: nothing is made up (record 1 is gone).
        assert_eq!(replay(&dir.path().join("db"), 0, 1).unwrap().0, vec![]);
    }

    /// Each caller of `append_waiting` hears of its own record once it is durable; a record
    /// that would have to wait for a fold is refused at once instead, so no caller waits on the
    /// store, and it is taken as soon as the fold frees a file. Once closed, nothing is taken.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_record_that_would_wait_for_a_fold_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // Records of 64 bytes, four to a file.
        let payload = [7u8; 64 - HEADER];
        let (log, writer) = UsageLog::open(&dir.path().join("db"), 256, true, 1, 1).unwrap();
        for i in 1..=8 {
            assert_eq!(log.admits(payload.len()), Ok(()));
            let (seq, d) = log.append_waiting(&payload).unwrap();
            assert_eq!(seq, i);
            d.wait().await.unwrap();
        }
        // Both files are full and nothing is folded.
        assert_eq!(log.admits(payload.len()), Err(LogError::Behind));
        assert!(matches!(
            log.append_waiting(&payload),
            Err(LogError::Behind)
        ));
        assert_eq!(log.append(&payload), Err(LogError::Behind));
        // The first file's records are folded: four more fit, each durable at once.
        log.release(4);
        for i in 9..=12 {
            let (seq, d) = log.append_waiting(&payload).unwrap();
            assert_eq!(seq, i);
            tokio::time::timeout(Duration::from_secs(5), d.wait())
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(log.append(&payload), Err(LogError::Behind));
        let closing = log.clone();
        tokio::task::spawn_blocking(move || closing.close(writer))
            .await
            .unwrap();
        assert!(log.append_waiting(&payload).is_err());
        let (records, _) = replay(&dir.path().join("db"), 4, 1).unwrap();
        assert_eq!(records.len(), 8, "records 5 to 12");
    }

    #[tokio::test]
    async fn a_file_is_reused_only_once_its_records_are_folded() {
        let dir = tempfile::tempdir().unwrap();
        let rec = vec![b'x'; 100];
        // Room for 8 records per file.
        let size = 8 * (HEADER + 100) as u64;
        let (log, writer) = UsageLog::open(&dir.path().join("db"), size, true, 1, 1).unwrap();
        // Records 1–16 fill both files; 17 is refused until the first file's fold.
        for seq in 1..=16 {
            assert_eq!(log.append(&rec), Ok(seq));
        }
        tokio::time::timeout(Duration::from_secs(5), log.wait(16))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.append(&rec), Err(LogError::Behind));
        // Nothing unfolded was overwritten meanwhile.
        assert_eq!(replay(&dir.path().join("db"), 0, 1).unwrap().0.len(), 16);
        log.release(8);
        for seq in 17..=24 {
            assert_eq!(log.append(&rec), Ok(seq));
        }
        assert_eq!(log.append(&rec), Err(LogError::Behind));
        tokio::time::timeout(Duration::from_secs(5), log.wait(24))
            .await
            .unwrap()
            .unwrap();
        log.release(16);
        assert_eq!(log.append(&rec), Ok(25));
        log.close(writer);
        let (got, _) = replay(&dir.path().join("db"), 16, 1).unwrap();
        assert_eq!(got.first().map(|r| r.0), Some(17));
        assert_eq!(got.len(), 9);
    }

    #[test]
    fn a_torn_tail_ends_the_replay_at_the_last_whole_record_wherever_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (log, writer) = UsageLog::open(&dir.path().join("db"), 4096, false, 1, 1).unwrap();
        for s in 1..=5 {
            let seq = log.append(&payload(s)).unwrap();
            rt.block_on(log.wait(seq)).unwrap();
        }
        log.close(writer);
        let path = file_paths(&dir.path().join("db"))[0].clone();
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
            let n = replay(&dir.path().join("db"), 0, 1).unwrap().0.len();
            let want = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(n, want, "cut at byte {cut}");
            if cut < ends[4] {
                let mut flipped = whole.clone();
                flipped[cut] ^= 0x40;
                std::fs::write(&path, &flipped).unwrap();
                let (got, _) = replay(&dir.path().join("db"), 0, 1).unwrap();
                assert!(got.len() < 5, "a changed byte at {cut} went unnoticed");
                assert_eq!(got, numbered(1..=got.len() as u64, payload));
            }
        }
    }

    /// One run writing `fixed` records `seqs` (written, not flushed, unless `flush`) and closing.
    async fn run(dir: &Path, epoch: u64, seqs: std::ops::RangeInclusive<Seq>, flush: bool) {
        let (log, writer) = UsageLog::open(dir, 4096, flush, *seqs.start(), epoch).unwrap();
        for s in seqs.clone() {
            log.append(&fixed(s)).unwrap();
        }
        log.wait(*seqs.end()).await.unwrap();
        log.close(writer);
    }

    /// Replaces each byte in `at` of the first file by `f` of it.
    fn damage(dir: &Path, at: std::ops::Range<usize>, f: impl Fn(u8) -> u8) {
        let path = file_paths(dir)[0].clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at].iter_mut().for_each(|b| *b = f(*b));
        std::fs::write(&path, &bytes).unwrap();
    }

    #[tokio::test]
    async fn records_of_an_earlier_run_are_never_replayed_as_this_runs() {
        let dir = tempfile::tempdir().unwrap();
        // Run 1 writes 17–40; suppose the power failed before its flush and the block holding
        // 17 never reached the disk, while 25–40 did (blocks land out of order).
        run(&dir.path().join("db"), 1, 17..=40, false).await;
        damage(&dir.path().join("db"), 0..HEADER + fixed(17).len(), |_| 0);
        // Its start finds nothing to fold after 16 (25–40 were never acknowledged)...
        assert_eq!(replay(&dir.path().join("db"), 16, 1).unwrap(), (vec![], 0));
        // ...and run 2 numbers from 17 again, writing 17–24 over run 1's first records.
        run(&dir.path().join("db"), 2, 17..=24, true).await;
        // Run 1's 25–40 lie right after run 2's 24, whole and in line: they are not run 2's.
        assert_eq!(
            replay(&dir.path().join("db"), 16, 2).unwrap(),
            (numbered(17..=24, fixed), 0)
        );
        assert_eq!(replay(&dir.path().join("db"), 22, 2).unwrap().0.len(), 2);
    }

    #[tokio::test]
    async fn records_after_a_damaged_one_are_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        run(&dir.path().join("db"), 1, 1..=6, false).await;
        // Record 3's payload damaged: 4–6 can only have been written, never acknowledged.
        let third = 2 * (HEADER + fixed(1).len()) + HEADER;
        damage(&dir.path().join("db"), third..third + 1, |b| b ^ 1);
        assert_eq!(
            replay(&dir.path().join("db"), 0, 1).unwrap(),
            (numbered(1..=2, fixed), 0)
        );
    }

    fn lengths(base: &Path) -> [u64; 2] {
        file_paths(base).map(|p| std::fs::metadata(p).unwrap().len())
    }

    /// Appends `rec` until the log refuses it for a moment (the writer may be zero-filling
    /// meanwhile): how many it took.
    async fn fill(log: &UsageLog, rec: &[u8]) -> u64 {
        let mut taken = 0;
        'outer: loop {
            for _ in 0..200 {
                match log.append(rec) {
                    Ok(seq) => {
                        taken += 1;
                        log.wait(seq).await.unwrap();
                        continue 'outer;
                    }
                    Err(LogError::Behind) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            return taken;
        }
    }

    /// An idle store's log is two chunks; a file grows only while the other waits for a fold,
    /// never past the size set, and each start makes both one chunk again.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_files_grow_only_while_folds_fall_behind() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("db");
        let size = 1 << 20;
        let chunk = chunk_for(size);
        assert_eq!(chunk, 64 << 10);
        let rec = vec![b'r'; 1000 - HEADER];
        let (log, writer) = UsageLog::open(&base, size, true, 1, 1).unwrap();
        assert_eq!(lengths(&base), [chunk; 2]);
        // Every record folded before the next: the files take turns and keep their length,
        // though ten chunks' worth went through them.
        for _ in 0..10 * chunk / 1000 {
            let seq = log.append(&rec).unwrap();
            log.wait(seq).await.unwrap();
            log.release(seq);
        }
        assert_eq!(lengths(&base), [chunk; 2]);
        let folded = log.shared.state.lock().unwrap().next - 1;
        // Nothing folded: the file the records go to grows to the size set (the other still
        // waits for a fold), and only then is a record refused.
        let first = fill(&log, &rec).await;
        let grown = lengths(&base);
        assert!(grown.contains(&size) && grown.contains(&chunk), "{grown:?}");
        assert!(
            first >= (size - chunk) / 1000,
            "took {first} records of 1000 bytes"
        );
        assert_eq!(log.append(&rec), Err(LogError::Behind));
        // The small file's records folded (the grown one's, the last `size / 1000`, not yet):
        // the records move to the small file, which grows in turn, no further.
        log.release(folded + first - size / 1000);
        let second = fill(&log, &rec).await;
        assert_eq!(lengths(&base), [size; 2]);
        assert_eq!(log.shared.state.lock().unwrap().filled, [size; 2]);
        assert!(second >= (size - chunk) / 1000, "took {second}");
        // All of them come back.
        log.close(writer);
        let (records, beyond) = replay(&base, folded + first, 1).unwrap();
        assert_eq!((records.len() as u64, beyond), (second, 0));
        // The next start, with all of it folded, gives the space back.
        let next = folded + first + second + 1;
        let (log, writer) = UsageLog::open(&base, size, true, next, 2).unwrap();
        assert_eq!(lengths(&base), [chunk; 2]);
        log.close(writer);
    }

    /// A file that cannot grow (here past a file-size limit; a full disk alike) keeps its
    /// length: records wait for a fold instead of failing the log, and flow again after it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_file_that_cannot_grow_makes_records_wait_for_a_fold_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("db");
        let size = 1 << 20;
        let chunk = chunk_for(size);
        let rec = vec![b'r'; 1000 - HEADER];
        let (log, writer) = UsageLog::open(&base, size, true, 1, 1).unwrap();
        // SAFETY: nextest runs this test alone in its process; the signal is ignored so that a
        // write past the limit fails with EFBIG instead of ending the process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 2 * chunk,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
        // The first file fills, the records move to the second, which grows once, to the
        // limit, and no further; the first still waits for a fold.
        let per_chunk = chunk / 1000;
        let taken = fill(&log, &rec).await;
        assert_eq!(lengths(&base), [chunk, 2 * chunk]);
        assert_eq!(log.failure(), None);
        assert_eq!(taken, per_chunk + 2 * chunk / 1000);
        // A fold frees the first file: records are taken again, and it grows to the limit.
        log.release(per_chunk);
        let more = fill(&log, &rec).await;
        assert_eq!(more, 2 * chunk / 1000);
        assert_eq!(lengths(&base), [2 * chunk; 2]);
        assert_eq!(log.failure(), None);
        log.close(writer);
        assert_eq!(
            replay(&base, taken, 1).unwrap().0.len() as u64,
            more,
            "the records after the fold"
        );
    }

    #[test]
    fn bad_sizes_numbers_and_late_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            UsageLog::open(&dir.path().join("db"), 256, true, 0, 1).is_err(),
            "next = 0"
        );
        let (log, writer) = UsageLog::open(&dir.path().join("db"), 256, true, 1, 1).unwrap();
        assert_eq!(log.append(&[0u8; 300]), Err(LogError::TooLarge(300)));
        log.close(writer);
        assert_eq!(log.append(b"late"), Err(LogError::Closed));
    }
}
