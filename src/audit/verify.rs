//! Reading a stream back: the records of its files in order (`p11ha audit show`) and checking
//! them (`p11ha audit verify`): every MAC, a sequence without gaps across the files, the chain
//! across file boundaries, the headers, and what the stream says itself (records lost, files
//! removed by retention, a clear).

use super::chain;
use super::event::Op;
use super::record::{self, Record};
use super::stream::header_point;
use std::path::{Path, PathBuf};

/// A record with where it was read.
#[derive(Debug, Clone)]
pub struct Located {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    pub record: Record,
}

/// What `show` keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Microseconds since the epoch, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub cid: Option<u32>,
    pub member: Option<String>,
}

impl Filter {
    pub fn keeps(&self, r: &Record) -> bool {
        self.since.is_none_or(|t| r.micros >= t)
            && self.until.is_none_or(|t| r.micros <= t)
            && self.cid.is_none_or(|c| r.cid == c)
            && self
                .member
                .as_ref()
                .is_none_or(|m| r.members.iter().any(|x| x == &record::escaped(m)))
    }
}

/// Every record of `files`, in order; lines that are not records are skipped (`verify` reports
/// them).
pub fn records(files: &[PathBuf]) -> std::io::Result<Vec<Located>> {
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(f)?;
        for (i, l) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if let Ok(record) = record::parse(l) {
                out.push(Located {
                    file: f.clone(),
                    line: i + 1,
                    record,
                });
            }
        }
    }
    Ok(out)
}

/// One thing wrong, with the record it is about.
#[derive(Debug, Clone)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub what: String,
    /// The line as read (for the first bad record).
    pub text: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    /// Records whose own MAC was checked and matched.
    pub sealed: u64,
    pub problems: Vec<Problem>,
    /// Records at the end without a MAC after them: (first seq, last seq, count).
    pub unsealed_tail: Option<(u64, u64, u64)>,
    /// Things worth saying that are not problems (retention, a clear before these files).
    pub notes: Vec<String>,
}

impl Report {
    /// 0: everything verified; 1: a problem; 3: no problem, but records at the end are not
    /// sealed yet (not verified).
    pub fn exit_code(&self) -> u8 {
        if !self.problems.is_empty() {
            1
        } else if self.unsealed_tail.is_some() {
            3
        } else {
            0
        }
    }

    /// The report for people: the first bad record in full, then every problem (at most 50).
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} records in {} files, {} sealed records verified",
            self.records, self.files, self.sealed
        )];
        out.extend(self.notes.iter().map(|n| format!("note: {n}")));
        if let Some(first) = self.problems.first() {
            out.push(format!(
                "FIRST BAD RECORD: {}:{}: {}",
                first.file.display(),
                first.line,
                first.what
            ));
            out.push(format!("  {}", first.text));
        }
        for p in self.problems.iter().take(50) {
            out.push(format!(
                "problem: {}:{}: {}",
                p.file.display(),
                p.line,
                p.what
            ));
        }
        if self.problems.len() > 50 {
            out.push(format!("... {} more problems", self.problems.len() - 50));
        }
        if let Some((a, b, n)) = self.unsealed_tail {
            out.push(format!(
                "not yet sealed: the last {n} records (seq {a:#x}..{b:#x}) have no MAC after them, \
                 so they are not verified; the next record sealed (a login, a member's return) \
                 seals them"
            ));
        }
        out.push(
            match self.exit_code() {
                0 => "verified: every record is sealed and the chain is complete",
                1 => "NOT VERIFIED: see the problems above",
                _ => "no problem found in the sealed records; the records at the end are not sealed yet",
            }
            .to_string(),
        );
        out
    }
}

/// Computes `HMAC(audit key, h)`, or says why it cannot.
pub type MacFn<'m> = dyn FnMut(&[u8; 32]) -> Result<[u8; 32], String> + 'm;

/// Where the checked records stand.
struct Walk<'a> {
    report: Report,
    mac: &'a mut MacFn<'a>,
    /// MACs can be checked (none failed to be computed yet).
    can_mac: bool,
    h: [u8; 32],
    mac_prev: String,
    /// The next sequence number expected (None before the first header).
    next: Option<u64>,
    /// Unsealed records since the last MAC: (seq, file, line).
    pending: Vec<(u64, PathBuf, usize)>,
    /// (file, last seq it held) of files removed by retention, as the stream recorded them.
    removed: Vec<(String, u64)>,
    /// The first file's header started after `seq` without a reason known yet.
    unexplained_start: Option<(u64, PathBuf, String)>,
}

impl Walk<'_> {
    fn problem(&mut self, file: &Path, line: usize, text: &str, what: String) {
        self.report.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            what,
            text: text.to_string(),
        });
    }

    fn header(&mut self, file: &Path, line: usize, text: &str, r: &Record, first_file: bool) {
        let Some(p) = header_point(r) else {
            self.problem(
                file,
                line,
                text,
                "a header record with unreadable fields".into(),
            );
            return;
        };
        match (first_file, p.seq) {
            (true, None) => {}
            (true, Some(before)) if r.opcode() == Some(Op::Cleared) => {
                self.report.notes.push(format!(
                    "the stream starts with a clear by {} (archive {}); records up to seq \
                     {before:#x} are in the archive",
                    r.field("by").unwrap_or("?"),
                    r.field("archive").unwrap_or("?")
                ))
            }
            (true, Some(before)) => {
                self.unexplained_start = Some((before, file.to_path_buf(), text.to_string()));
            }
            (false, _) => {
                let last = self.next.and_then(|n| n.checked_sub(1));
                if p.seq != last {
                    let missing = match (last, p.seq) {
                        (Some(l), Some(s)) if s > l => format!("records {:#x}..{s:#x}", l + 1),
                        _ => format!("the records before seq {:#x}", r.seq),
                    };
                    let prev = r.field("prev_file").unwrap_or("-");
                    self.problem(
                        file,
                        line,
                        text,
                        format!(
                            "{missing} are missing: this file follows {prev}, which is not \
                             among the files verified (a rotated file was removed?)"
                        ),
                    );
                } else if p.h != self.h || p.mac != self.mac_prev {
                    self.problem(
                        file,
                        line,
                        text,
                        "the chain value this file starts from is not the one the records \
                         before it give: a record before it was changed, removed or added"
                            .into(),
                    );
                }
            }
        }
        // Go on from what the header says, so one break is one problem.
        self.h = p.h;
        self.mac_prev = p.mac;
        self.next = Some(p.seq.map_or(0, |s| s + 1));
    }

    fn record(&mut self, file: &Path, line: usize, text: &str, r: &Record) {
        self.report.records += 1;
        if let Some(next) = self.next {
            if r.seq > next {
                self.problem(
                    file,
                    line,
                    text,
                    format!(
                        "seq {:#x} follows {:#x}: records {next:#x}..{:#x} are missing",
                        r.seq,
                        next.wrapping_sub(1),
                        r.seq - 1
                    ),
                );
            } else if r.seq < next {
                self.problem(
                    file,
                    line,
                    text,
                    format!(
                        "seq {:#x} where {next:#x} was due: a record out of order or repeated",
                        r.seq
                    ),
                );
            }
        }
        self.next = Some(r.seq + 1);
        self.h = chain::next(&self.h, &self.mac_prev, &r.body);
        self.mac_prev = r.mac_text.clone();
        match r.opcode() {
            Some(Op::RecordsLost) => self.problem(
                file,
                line,
                text,
                format!(
                    "{} records were lost before this one ({})",
                    r.field("count").unwrap_or("?"),
                    String::from_utf8_lossy(&super::event::unescape(r.field("why").unwrap_or("?")))
                ),
            ),
            Some(Op::FileRemoved) => {
                if let Some(s) = r
                    .field("through_seq")
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    self.removed
                        .push((r.field("file").unwrap_or("?").to_string(), s));
                }
            }
            None => self.problem(
                file,
                line,
                text,
                format!("unknown opcode {}(0x{:04x})", r.op, r.op_code),
            ),
            _ => {}
        }
        let Some(mac) = r.mac else {
            self.pending.push((r.seq, file.to_path_buf(), line));
            return;
        };
        if !self.can_mac {
            return;
        }
        match (self.mac)(&self.h) {
            Ok(m) if m == mac => {
                self.report.sealed += 1;
                self.pending.clear();
            }
            Ok(_) => {
                let covered = match (self.pending.first(), self.pending.last()) {
                    (Some(a), Some(b)) => format!(
                        " (or one of the {} records before it written without a MAC, seq \
                         {:#x}..{:#x})",
                        self.pending.len(),
                        a.0,
                        b.0
                    ),
                    _ => String::new(),
                };
                self.problem(
                    file,
                    line,
                    text,
                    format!(
                        "seq {:#x}: the MAC does not match: this record{covered} was changed, or \
                         records before it were changed, removed or added",
                        r.seq
                    ),
                );
                self.pending.clear();
            }
            Err(why) => {
                self.can_mac = false;
                self.problem(
                    file,
                    line,
                    text,
                    format!("the MACs cannot be checked: {why}"),
                );
            }
        }
    }
}

/// Verifies `files` (in stream order) with `mac` computing `HMAC(audit key, h)`.
pub fn verify(files: &[PathBuf], mac: &mut MacFn<'_>) -> Report {
    let mut w = Walk {
        report: Report {
            files: files.len(),
            ..Default::default()
        },
        mac,
        can_mac: true,
        h: chain::GENESIS,
        mac_prev: record::UNSEALED.into(),
        next: None,
        pending: Vec::new(),
        removed: Vec::new(),
        unexplained_start: None,
    };
    for (fi, file) in files.iter().enumerate() {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                w.problem(file, 0, "", format!("cannot be read: {e}"));
                continue;
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if text.is_empty() {
            w.problem(file, 0, "", "the file is empty".into());
            continue;
        }
        for (i, l) in text.lines().enumerate() {
            let line = i + 1;
            let cut = i + 1 == text.lines().count() && !text.ends_with('\n');
            let r = match record::parse(l) {
                Ok(r) if !cut => r,
                Ok(_) => {
                    w.problem(
                        file,
                        line,
                        l,
                        "the last record is cut short (no end of line)".into(),
                    );
                    continue;
                }
                Err(e) => {
                    let what = if cut {
                        format!("the last record is cut short: {e}")
                    } else {
                        format!("not a record: {e}")
                    };
                    w.problem(file, line, l, what);
                    continue;
                }
            };
            if i == 0 {
                if r.opcode().is_some_and(Op::is_header) {
                    w.header(file, line, l, &r, fi == 0);
                } else {
                    w.problem(
                        file,
                        line,
                        l,
                        "the file does not start with a header record (its first records were \
                         removed?)"
                            .into(),
                    );
                }
            }
            w.record(file, line, l, &r);
        }
    }
    if let Some((before, file, text)) = w.unexplained_start.take() {
        match w.removed.iter().find(|(_, s)| *s >= before) {
            Some((name, _)) => w.report.notes.push(format!(
                "records up to seq {before:#x} were removed by retention (haLogRetain; the last \
                 file removed: {name})"
            )),
            None => w.problem(
                &file,
                1,
                &text,
                format!(
                    "records 0x0..{before:#x} are not among the files verified, and the stream \
                     does not record their removal: the oldest file(s) are missing"
                ),
            ),
        }
    }
    if let (Some(a), Some(b)) = (w.pending.first(), w.pending.last()) {
        w.report.unsealed_tail = Some((a.0, b.0, w.pending.len() as u64));
    }
    w.report
}

#[cfg(test)]
mod tests {
    //! The verifier's logic with a stand-in MAC (SHA-256 of a secret and `h`); the real one, a
    //! member's HMAC, is covered by tests/audit_verify.rs.
    use super::*;
    use crate::audit::event::Event;
    use crate::audit::record::Raw;
    use crate::audit::stream::{stream_files, Stream};
    use cryptoki_sys::CKR_OK;
    use sha2::{Digest, Sha256};

    fn stand_in(h: &[u8; 32]) -> [u8; 32] {
        let mut d = Sha256::new();
        d.update(b"stand-in key");
        d.update(h);
        d.finalize().into()
    }

    /// Three files or more of sealed records.
    fn stream(dir: &Path) -> Vec<PathBuf> {
        let mut s = Stream::open(dir, "g", 800, 0).unwrap();
        for i in 0..12 {
            let raw = Raw::now(
                Op::Login,
                CKR_OK,
                i,
                vec!["m1".into()],
                Event::Login { user: 1 },
            );
            s.append(&[raw], &mut |h| Some(stand_in(h))).unwrap();
        }
        let files = stream_files(dir, "g").unwrap();
        assert!(files.len() >= 3, "{files:?}");
        files
    }

    fn check(files: &[PathBuf]) -> Report {
        verify(files, &mut |h| Ok(stand_in(h)))
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn an_untouched_stream_verifies() {
        let d = tempfile::tempdir().unwrap();
        let r = check(&stream(d.path()));
        assert_eq!(r.exit_code(), 0, "{:?}", r.lines());
        assert_eq!(r.sealed, r.records);
    }

    #[test]
    fn each_change_is_found_and_named() {
        let d = tempfile::tempdir().unwrap();
        let files = stream(d.path());
        let mid = &files[1];
        let orig = lines(mid);
        let first_bad = |r: &Report| {
            let p = r.problems.first().expect("a problem");
            (p.file.clone(), p.line, p.what.clone())
        };

        // One byte flipped in record 2 of the middle file.
        let mut l = orig.clone();
        l[1] = l[1].replacen("C_Login", "C_LogiN", 1);
        std::fs::write(mid, l.concat()).unwrap();
        let (f, line, what) = first_bad(&check(&files));
        assert_eq!((f.as_path(), line), (mid.as_path(), 2), "{what}");

        // A line deleted.
        let mut l = orig.clone();
        l.remove(1);
        std::fs::write(mid, l.concat()).unwrap();
        let (_, line, what) = first_bad(&check(&files));
        assert_eq!(line, 2);
        assert!(what.contains("are missing"), "{what}");

        // Two lines swapped.
        let mut l = orig.clone();
        l.swap(1, 2);
        std::fs::write(mid, l.concat()).unwrap();
        let (_, line, what) = first_bad(&check(&files));
        assert_eq!(line, 2, "{what}");
        std::fs::write(mid, orig.concat()).unwrap();

        // A rotated file removed.
        let without: Vec<PathBuf> = files.iter().filter(|f| *f != mid).cloned().collect();
        let (f, line, what) = first_bad(&check(&without));
        assert_eq!((f.as_path(), line), (files[2].as_path(), 1));
        assert!(what.contains("is not among the files verified"), "{what}");

        // The last record cut short.
        let last = files.last().unwrap();
        let text = std::fs::read(last).unwrap();
        std::fs::write(last, &text[..text.len() - 10]).unwrap();
        let r = check(&files);
        let (_, line, what) = first_bad(&r);
        assert_eq!(line, lines(last).len());
        assert!(what.contains("cut short"), "{what}");

        // A record forged without the key: a MAC made up, or none.
        std::fs::write(last, &text).unwrap();
        let mut forged = text.clone();
        let l = lines(last);
        let fake = l.last().unwrap();
        let seq = parse(fake.trim_end()).seq;
        let fake = fake.replacen(&format!(" {seq:016x} "), &format!(" {:016x} ", seq + 1), 1);
        let made_up = format!(
            "{}|mac={}\n",
            &fake[..fake.rfind("|mac=").unwrap()],
            "ab".repeat(32)
        );
        forged.extend_from_slice(made_up.as_bytes());
        std::fs::write(last, &forged).unwrap();
        let (_, line, what) = first_bad(&check(&files));
        assert_eq!(line, l.len() + 1);
        assert!(what.contains("MAC does not match"), "{what}");
        let unsealed = format!("{}|mac=-\n", &fake[..fake.rfind("|mac=").unwrap()]);
        let mut forged = text.clone();
        forged.extend_from_slice(unsealed.as_bytes());
        std::fs::write(last, &forged).unwrap();
        let r = check(&files);
        assert_eq!(r.exit_code(), 3, "{:?}", r.lines());
        assert_eq!(r.unsealed_tail.map(|t| t.2), Some(1));
    }

    fn parse(l: &str) -> Record {
        record::parse(l).unwrap()
    }
}
