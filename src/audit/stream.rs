//! One group's audit stream on this host: its files, and appending to them from any number of
//! processes without a gap, a repeat or a torn record.
//!
//! Files in the audit directory, all created mode 0600 through [`safe_file`] (no link followed,
//! no other user's file written):
//!
//! - `haAudit.<serial>.txt`: the file being written (`<serial>` is the group serial with every
//!   character other than `A-Z a-z 0-9 _ -` written `_`);
//! - `haAudit.<serial>.<UTC yyyymmddTHHMMSS>.<ns>Z.txt`: rotated files; names sort in time order
//!   (the stamp is `max(now, last + 1 ns)`, a name that exists gets `_001`, ...);
//! - `.haAudit.<serial>.state`: the lock (`flock`) every writer holds while it appends, and the
//!   stream's state under it: the next sequence number, the restart counter, the chain value and
//!   MAC field of the last record ([`super::chain`]), and which file, up to which size, that
//!   state describes;
//! - `haAudit.<serial>.<stamp>Z.archive/`: what `p11ha audit clear` moved away (never deleted).
//!
//! Under the lock a writer reads the state, takes what the files hold beyond it into account (a
//! writer that died between its `write` and its state update: its records are read back and
//! chained, never numbered again; a record cut short is ended with a newline, and `verify`
//! reports it), numbers its records, chains and seals them, writes them with one `write(2)` per
//! file, and stores the state. The first record of every file is a header (`AUDIT_STREAM_START`,
//! `AUDIT_FILE_START` after a rotation, `AUDIT_CLEARED` after a clear) that carries the chain
//! value before it, so a file can be verified without the files before it. A record that takes
//! the file to `max_len` bytes or more is its last; the file is then renamed, and when
//! `haLogRetain` is set the oldest rotated files beyond that count are deleted, each deletion
//! recorded (`AUDIT_FILE_REMOVED`, with the last sequence number it held) as the first records of
//! the next file. A lost state file is rebuilt from the newest file, so sequence numbers never
//! start over.
//!
//! Files: `names` the file names; `state` the state file; `recover` bringing the state up to
//! date with the files; `rotate` rotation and retention; this file the appending and clearing.

mod names;
mod recover;
mod rotate;
mod state;

pub use names::{base_name, current_name, is_rotated, stream_files};

use super::chain::{self, GENESIS};
use super::event::{hex32, parse_hex32, unescape, ChainPoint, Event, Op};
use super::record::{self, Raw, UNSEALED};
use crate::halog::writer::rename_noreplace;
use crate::safe_file::{self, Access, LockKind, Locker};
use cryptoki_sys::CKR_OK;
use names::{now_ns, stamp_text, state_name};
use state::State;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Produces the MAC of a chain value, or `None` (the record is written unsealed).
pub type Seal<'a> = &'a mut dyn FnMut(&[u8; 32]) -> Option<[u8; 32]>;

/// Why [`Stream::append`] stopped, and what it had not written yet.
#[derive(Debug)]
pub struct AppendError {
    pub error: io::Error,
    /// The lines written before the error.
    pub written: Vec<String>,
    /// The records not written, in order, to be handed to `append` again (file headers are
    /// left out: `append` writes them again where due).
    pub unwritten: Vec<Raw>,
}

impl AppendError {
    fn nothing_written(error: io::Error, raws: &[Raw]) -> AppendError {
        AppendError {
            error,
            written: Vec::new(),
            unwritten: raws.to_vec(),
        }
    }
}

/// What `clear` did.
#[derive(Debug, Clone)]
pub struct ClearReport {
    pub archive: PathBuf,
    pub files: usize,
    pub last_seq: Option<u64>,
    pub last_mac: String,
}

/// A group's audit stream, as one process writes it.
pub struct Stream {
    dir: PathBuf,
    serial: String,
    base: String,
    current: PathBuf,
    max_len: u64,
    retain: u64,
    state_file: File,
    locker: Locker,
    /// The current file's descriptor and the (dev, ino) it refers to.
    file: Option<(File, (u64, u64))>,
    /// This writer's restart number, given at its first append.
    restart: Option<u32>,
    warning: Option<String>,
}

impl Stream {
    /// Checks the directory and opens (creating it) the state file; takes no lock, so it never
    /// waits. The error is a short reason for one stderr line.
    pub fn open(dir: &Path, serial: &str, max_len: u64, retain: u64) -> Result<Stream, String> {
        let warning = safe_file::check_dir(dir).map_err(|e| e.to_string())?;
        let state_file = safe_file::open(&dir.join(state_name(serial)), Access::ReadWrite)
            .map_err(|e| e.to_string())?;
        Ok(Stream {
            dir: dir.to_path_buf(),
            serial: serial.to_string(),
            base: base_name(serial),
            current: dir.join(current_name(serial)),
            max_len,
            retain,
            state_file,
            locker: Locker::new(state_name(serial)),
            file: None,
            restart: None,
            warning,
        })
    }

    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file being written.
    pub fn current_path(&self) -> &Path {
        &self.current
    }

    /// Numbers, chains, seals and appends `raws`, rotating as needed (see the module docs).
    /// Returns the lines written. Waits for the lock at most [`safe_file::lock::LOCK_WAIT`] (an error
    /// of kind `TimedOut`). A record is either written whole or not at all: on an error the
    /// records not written come back, to be handed over again.
    pub fn append(&mut self, raws: &[Raw], seal: Seal) -> Result<Vec<String>, AppendError> {
        let failed = |e| AppendError::nothing_written(e, raws);
        let lock = self.state_file.try_clone().map_err(failed)?;
        let _held = self
            .locker
            .lock(&lock, LockKind::Exclusive)
            .map_err(failed)?;
        let mut st = self.load_state().map_err(failed)?;
        let restart = self.restart_number(&mut st);
        let mut queue: VecDeque<Raw> = raws.iter().cloned().collect();
        if st.lost > 0 {
            // Said by a writer whose process ended before it could write them.
            let why = std::mem::take(&mut st.lost_why);
            queue.push_front(own(
                Op::RecordsLost,
                Event::RecordsLost {
                    count: std::mem::take(&mut st.lost),
                    why,
                },
            ));
        }
        let mut written = Vec::new();
        let unwritten = |e, segment: Vec<Raw>, queue: VecDeque<Raw>, written| AppendError {
            error: e,
            written,
            unwritten: segment
                .into_iter()
                .chain(queue)
                .filter(|r| !matches!(r.op, Op::StreamStart | Op::FileStart))
                .collect(),
        };
        while !queue.is_empty() {
            if st.size == 0 {
                let header = if st.last_seq.is_none() {
                    Event::StreamStart
                } else {
                    Event::FileStart {
                        prev: st.point(),
                        prev_file: st.prev_file.clone(),
                    }
                };
                let op = if st.last_seq.is_none() {
                    Op::StreamStart
                } else {
                    Op::FileStart
                };
                queue.push_front(own(op, header));
            }
            let mut segment = Vec::new();
            let mut projected = st.size;
            // The stream's own records (header, removals) never end a file: each rotation
            // needs a caller's record, so a tiny haAuditLen cannot rotate for ever.
            let mut callers = false;
            while let Some(r) = queue.pop_front() {
                projected += 200;
                callers |= !is_own(r.op);
                segment.push(r);
                if callers && self.max_len > 0 && projected >= self.max_len {
                    break;
                }
            }
            match self.write_segment(&mut st, restart, &segment, seal) {
                Ok(lines) => written.extend(lines),
                Err(e) => return Err(unwritten(e, segment, queue, written)),
            }
            if callers && self.max_len > 0 && st.size >= self.max_len {
                let removed = match self.rotate(&mut st) {
                    Ok(r) => r,
                    Err(e) => return Err(unwritten(e, Vec::new(), queue, written)),
                };
                for (file, through_seq) in removed.into_iter().rev() {
                    queue.push_front(own(
                        Op::FileRemoved,
                        Event::FileRemoved { file, through_seq },
                    ));
                }
            }
        }
        Ok(written)
    }

    /// Moves every file of the stream into a new archive directory and starts the stream again
    /// with an `AUDIT_CLEARED` record naming who cleared it and where the chain stood.
    pub fn clear(&mut self, by: &str, uid: u32, pid: u32, seal: Seal) -> io::Result<ClearReport> {
        let lock = self.state_file.try_clone()?;
        let _held = self.locker.lock(&lock, LockKind::Exclusive)?;
        let mut st = self.load_state()?;
        let restart = self.restart_number(&mut st);
        let stamp = now_ns().max(st.stamp + 1);
        let archive_name = format!("{}.{}.archive", self.base, stamp_text(stamp));
        let archive = self.dir.join(&archive_name);
        std::fs::DirBuilder::new().mode(0o700).create(&archive)?;
        let files = stream_files(&self.dir, &self.serial)?;
        for f in &files {
            let name = f.file_name().unwrap_or_default();
            rename_noreplace(f, &archive.join(name))?;
        }
        self.file = None;
        st.file = None;
        st.size = 0;
        st.prev_file = String::new();
        st.stamp = stamp;
        let report = ClearReport {
            archive,
            files: files.len(),
            last_seq: st.last_seq,
            last_mac: st.mac.clone(),
        };
        let cleared = Event::Cleared {
            by: by.to_string(),
            uid,
            pid,
            archive: archive_name,
            prev: st.point(),
        };
        self.write_segment(&mut st, restart, &[own(Op::Cleared, cleared)], seal)?;
        Ok(report)
    }

    /// Stores in the stream's state that `count` records of this process could not be written
    /// (`why`), for the next writer (of any process) to say in an `AUDIT_RECORDS_LOST` record:
    /// for a process that ends while the file cannot be written. The state file is kept open
    /// and rewritten in place, so this works on a full file system and while the directory is
    /// moved away.
    pub fn note_lost(&mut self, count: u64, why: &str) -> io::Result<()> {
        let lock = self.state_file.try_clone()?;
        let _held = self.locker.lock(&lock, LockKind::Exclusive)?;
        let text = self.read_state_text().unwrap_or_default();
        let mut st = State::parse(&text).unwrap_or_else(State::genesis);
        st.lost += count;
        if !st.lost_why.is_empty() {
            st.lost_why.push_str("; ");
        }
        st.lost_why.push_str(why);
        self.store_state(&st)
    }

    fn restart_number(&mut self, st: &mut State) -> u32 {
        *self.restart.get_or_insert_with(|| {
            st.restart = st.restart.wrapping_add(1);
            st.restart
        })
    }

    /// Writes `raws` to the current file in one `write(2)` and stores the state. On an error
    /// nothing of `raws` is in the file: a write cut short (a full file system) is cut off
    /// again, so no torn record is left.
    fn write_segment(
        &mut self,
        st: &mut State,
        restart: u32,
        raws: &[Raw],
        seal: Seal,
    ) -> io::Result<Vec<String>> {
        let pid = std::process::id();
        let sealed = chain::sealed_positions(raws.len());
        let mut next = st.clone();
        let mut lines = Vec::with_capacity(raws.len());
        for (raw, want) in raws.iter().zip(sealed) {
            let body = record::body(raw, pid, next.next, restart, &self.serial);
            let h = chain::next(&next.h, &next.mac, &body);
            let mac = if want { seal(&h) } else { None };
            let mac = mac.map_or(UNSEALED.to_string(), |m| hex32(&m));
            lines.push(record::line(&body, &mac));
            next.h = h;
            next.mac = mac;
            next.last_seq = Some(next.next);
            next.next += 1;
        }
        let text = lines.concat();
        let (file, id) = self.current_file()?;
        let before = file.metadata()?.len();
        if let Err(e) = file.write_all(text.as_bytes()) {
            // Under the lock: no other writer appended meanwhile.
            let _ = file.set_len(before);
            return Err(e);
        }
        next.size = before + text.len() as u64;
        next.file = Some(id);
        *st = next;
        // The records are in the file: a state not stored is brought up to date from the file
        // by the next writer (`load_state`), so this is no reason to write them again.
        let _ = self.store_state(st);
        Ok(lines)
    }

    /// The current file as it is on disk (created when missing), with its (dev, ino).
    fn current_file(&mut self) -> io::Result<(&mut File, (u64, u64))> {
        let on_disk = safe_file::id_at(&self.current)?;
        let stale = match (&self.file, on_disk) {
            (Some((_, id)), Some(disk)) => *id != disk,
            _ => true,
        };
        if stale {
            self.file = None;
            let f = safe_file::open(&self.current, Access::Append)?;
            let id = safe_file::id_of(&f)?;
            self.file = Some((f, id));
        }
        let (f, id) = self.file.as_mut().expect("opened above");
        Ok((f, *id))
    }

    fn read_state_text(&mut self) -> io::Result<String> {
        let mut text = String::new();
        self.state_file.seek(SeekFrom::Start(0))?;
        (&self.state_file).take(4096).read_to_string(&mut text)?;
        Ok(text)
    }

    /// Rewrites the state in place, then cuts what is left of the old one: the state is about
    /// the same size each time, so this needs no new block on a full file system.
    fn store_state(&mut self, st: &State) -> io::Result<()> {
        let text = st.text();
        self.state_file.seek(SeekFrom::Start(0))?;
        self.state_file.write_all(text.as_bytes())?;
        self.state_file.set_len(text.len() as u64)
    }
}

/// Records the stream writes about itself (see `append`).
fn is_own(op: Op) -> bool {
    matches!(op, Op::StreamStart | Op::FileStart | Op::FileRemoved)
}

/// A record p11ha writes about the stream itself.
fn own(op: Op, event: Event) -> Raw {
    Raw::now(op, CKR_OK, 0, Vec::new(), event)
}

/// The chain point a header record carries (`AUDIT_FILE_START`, `AUDIT_CLEARED`); genesis for
/// `AUDIT_STREAM_START`; `None` for any other record.
pub fn header_point(r: &record::Record) -> Option<ChainPoint> {
    match r.opcode()? {
        Op::StreamStart => Some(ChainPoint {
            seq: None,
            h: GENESIS,
            mac: UNSEALED.into(),
        }),
        Op::FileStart | Op::Cleared => {
            let seq = match r.field("prev_seq")? {
                "-" => None,
                s => Some(u64::from_str_radix(s, 16).ok()?),
            };
            let h = parse_hex32(r.field("prev_h")?)?;
            let mac = String::from_utf8(unescape(r.field("prev_mac")?)).ok()?;
            Some(ChainPoint { seq, h, mac })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::parse;

    fn login() -> Raw {
        Raw::now(
            Op::Login,
            CKR_OK,
            7,
            vec!["m1".into()],
            Event::Login { user: 1 },
        )
    }

    fn read(path: &Path) -> Vec<record::Record> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| parse(l).unwrap())
            .collect()
    }

    #[test]
    fn rotated_names_are_recognized_exactly() {
        let b = base_name("12.34");
        assert_eq!(b, "haAudit.12_34");
        assert!(is_rotated(
            &b,
            "haAudit.12_34.20260714T093105.000000001Z.txt"
        ));
        assert!(is_rotated(
            &b,
            "haAudit.12_34.20260714T093105.000000001Z_002.txt"
        ));
        assert!(!is_rotated(&b, "haAudit.12_34.txt"));
        assert!(!is_rotated(
            &b,
            "haAudit.12_345.20260714T093105.000000001Z.txt"
        ));
        assert!(!is_rotated(
            &b,
            "haAudit.12_34.20260714T093105.000000001Z.archive"
        ));
    }

    #[test]
    fn numbers_run_on_across_writers_rotations_and_a_lost_state() {
        let d = tempfile::tempdir().unwrap();
        let mut none = |_: &[u8; 32]| None;
        let mut a = Stream::open(d.path(), "g1", 600, 0).unwrap();
        a.append(&[login(), login()], &mut none).unwrap();
        let mut b = Stream::open(d.path(), "g1", 600, 0).unwrap();
        b.append(&vec![login(); 5], &mut none).unwrap();
        std::fs::remove_file(d.path().join(".haAudit.g1.state")).unwrap();
        let mut c = Stream::open(d.path(), "g1", 600, 0).unwrap();
        c.append(&[login()], &mut none).unwrap();
        let files = stream_files(d.path(), "g1").unwrap();
        assert!(files.len() >= 2, "{files:?}");
        let all: Vec<_> = files.iter().flat_map(|f| read(f)).collect();
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        // Every file starts with a header; the writers got restart numbers 1, 2, 3 (the last
        // after the state was rebuilt from the files).
        for f in &files {
            assert!(read(f)[0].opcode().unwrap().is_header(), "{f:?}");
        }
        let restarts: Vec<u32> = all
            .iter()
            .filter(|r| r.op == "C_Login")
            .map(|r| r.restart)
            .collect();
        assert_eq!(restarts, vec![1, 1, 2, 2, 2, 2, 2, 3]);
    }

    #[test]
    fn a_writer_that_died_before_its_state_update_is_chained_not_renumbered() {
        let d = tempfile::tempdir().unwrap();
        let mut none = |_: &[u8; 32]| None;
        let mut a = Stream::open(d.path(), "g", 0, 0).unwrap();
        a.append(&[login()], &mut none).unwrap();
        let state = std::fs::read(d.path().join(".haAudit.g.state")).unwrap();
        a.append(&[login()], &mut none).unwrap();
        // As if the second append never stored its state, and left half a record.
        std::fs::write(d.path().join(".haAudit.g.state"), state).unwrap();
        let cur = d.path().join("haAudit.g.txt");
        let mut f = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        f.write_all(b"2026-07-14T09:31:05.123456Z 1 0000").unwrap();
        let mut b = Stream::open(d.path(), "g", 0, 0).unwrap();
        b.append(&[login()], &mut none).unwrap();
        let text = std::fs::read_to_string(&cur).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(parse(lines[3]).is_err());
        assert_eq!(parse(lines[4]).unwrap().seq, 3);
    }

    #[test]
    fn retention_records_what_it_deletes() {
        let d = tempfile::tempdir().unwrap();
        let mut none = |_: &[u8; 32]| None;
        let mut a = Stream::open(d.path(), "g", 400, 1).unwrap();
        for _ in 0..6 {
            a.append(&[login()], &mut none).unwrap();
        }
        let files = stream_files(d.path(), "g").unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        let removed: Vec<_> = files
            .iter()
            .flat_map(|f| read(f))
            .filter(|r| r.op == "AUDIT_FILE_REMOVED")
            .collect();
        assert!(!removed.is_empty());
    }
}
