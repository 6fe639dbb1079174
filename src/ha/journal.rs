//! Records of what members are owed that no member could take yet: the fallback of
//! `ha::sync::records`, which keeps records on the members themselves.
//!
//! A record is written on every live member before the change returns to the application; when
//! none takes it (every live member failed right then, or refused), it waits here and is placed
//! on the members at the next survey (management round, login, reintroduction). In this
//! process's memory by default; with `haJournalPath` set, in a file shared by every process on
//! the host, so that such a record also survives the process.
//!
//! File format: one line per record, appended under `flock`, each batch written with one
//! `write`:
//!
//! ```text
//! + <p|u> <record>      a record (private or public), as `records::Record::encode` writes it
//! - <id>                placed on the members (or settled)
//! ```
//!
//! When every record is placed the file is truncated. The file holds what the members would
//! hold: identities (class, key type, CKA_ID, label, public fingerprints), never an attribute
//! value an application set and never key material.
//!
//! The file is opened (for every operation) and locked through [`crate::safe_file`]: never
//! through a link, never another user's file, a lock waited for at most
//! [`crate::safe_file::lock::LOCK_WAIT`]. A record the file does not take is kept in memory; a file
//! that cannot be read makes [`Ledger::all`] fail, which the caller must take as "any member may
//! be owed anything".

use crate::diag::diag;
use crate::ha::sync::records::Record;
use crate::safe_file::{self, Access, LockKind, Locker};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Where records wait for a member to take them.
pub struct Ledger {
    file: Option<Journal>,
    /// Records of this process only: all of them without a journal, and those the journal
    /// could not take (a full disk must not lose a destroy).
    memory: Mutex<Vec<Record>>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::in_memory()
    }
}

impl Ledger {
    pub fn in_memory() -> Self {
        Ledger {
            file: None,
            memory: Mutex::new(Vec::new()),
        }
    }

    pub fn with_journal(journal: Journal) -> Self {
        Ledger {
            file: Some(journal),
            memory: Mutex::new(Vec::new()),
        }
    }

    pub fn journal_path(&self) -> Option<&Path> {
        self.file.as_ref().map(|j| j.path.as_path())
    }

    /// Keeps records until they are placed.
    pub fn keep(&self, recs: Vec<Record>) {
        if recs.is_empty() {
            return;
        }
        if let Some(j) = &self.file {
            match j.append(&recs) {
                Ok(()) => return,
                Err(e) => diag!(
                    Warn,
                    "journal {}: {e}; records of changes owed to down members are kept in \
                     this process only",
                    j.path.display()
                ),
            }
        }
        self.memory.lock().extend(recs);
    }

    /// Every record waiting, oldest first. An error means the file could not be read: any
    /// member may be owed anything then.
    pub fn all(&self) -> Result<Vec<Record>, String> {
        let mut out = match &self.file {
            Some(j) => j
                .live()
                .map_err(|e| format!("journal {}: {e}", j.path.display()))?,
            None => Vec::new(),
        };
        out.extend(self.memory.lock().iter().cloned());
        Ok(out)
    }

    /// Forgets records (placed on members, or settled).
    pub fn settle(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let gone: HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.memory.lock().retain(|r| !gone.contains(r.id.as_str()));
        if let Some(j) = &self.file {
            if let Err(e) = j.settle(ids) {
                diag!(Warn, "journal {}: {e}", j.path.display());
            }
        }
    }
}

/// The journal file of one group.
pub struct Journal {
    path: PathBuf,
    locker: Locker,
    /// What is risky about the directory, to be said once (see [`safe_file::check_dir`]).
    warning: Option<String>,
}

impl Journal {
    /// Opens (creating it with mode 0600) the journal of the group with serial `group` in `dir`.
    /// Refused, with the reason, for a directory or a file [`safe_file`] refuses; takes no lock,
    /// so it never waits. A warning about the directory is printed on stderr, once per process
    /// (not at all when the HA log in the same directory gave it).
    pub fn open(dir: &Path, group: &str) -> io::Result<Journal> {
        let warning = safe_file::check_dir(dir)?;
        let name: String = group
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let file_name = format!("p11ha-{name}.journal");
        let j = Journal {
            path: dir.join(&file_name),
            locker: Locker::new(file_name),
            warning,
        };
        safe_file::open(&j.path, Access::ReadAppend)?;
        if let Some(w) = j.warning.as_deref().filter(|w| safe_file::is_new(w)) {
            diag!(Warn, "journal directory {w}");
        }
        Ok(j)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is risky about the directory, if anything (see [`safe_file::check_dir`]); printed on
    /// stderr by [`Journal::open`] unless already given.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    fn locked<T>(&self, how: LockKind, f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        // Opened again each time, so the name is checked again (someone may have removed the
        // file, and a name we did not create is refused).
        let file = safe_file::open(&self.path, Access::ReadAppend)?;
        let _held = self.locker.lock(&file, how)?;
        f(&file)
    }

    fn append(&self, recs: &[Record]) -> io::Result<()> {
        let text: String = recs
            .iter()
            .map(|r| format!("+ {} {}\n", if r.private { "p" } else { "u" }, r.encode()))
            .collect();
        self.locked(LockKind::Exclusive, |mut f| f.write_all(text.as_bytes()))
    }

    fn settle(&self, ids: &[String]) -> io::Result<()> {
        let text: String = ids.iter().map(|id| format!("- {id}\n")).collect();
        self.locked(LockKind::Exclusive, |mut f| {
            f.write_all(text.as_bytes())?;
            if live_records(&read_text(f)?).is_empty() {
                f.set_len(0)?;
            }
            Ok(())
        })
    }

    fn live(&self) -> io::Result<Vec<Record>> {
        self.locked(LockKind::Shared, |f| Ok(live_records(&read_text(f)?)))
    }
}

fn read_text(mut f: &File) -> io::Result<String> {
    let mut text = String::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// Records added and not placed, in order. A line that does not parse (a torn write after a
/// crash) is skipped.
fn live_records(text: &str) -> Vec<Record> {
    let mut added: Vec<Record> = Vec::new();
    let mut settled: HashSet<&str> = HashSet::new();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("- ") {
            settled.insert(id);
        } else if let Some(rest) = line.strip_prefix("+ ") {
            let private = match rest.get(..2) {
                Some("p ") => true,
                Some("u ") => false,
                _ => continue,
            };
            if let Some(r) = Record::decode(&rest[2..], private) {
                added.push(r);
            }
        }
    }
    added.retain(|r| !settled.contains(r.id.as_str()));
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::objects::Identity;
    use crate::ha::sync::records::Change;
    use crate::mechanism::Attr;
    use cryptoki_sys::*;
    use std::fs::OpenOptions;

    fn key(label: &str) -> Identity {
        Identity::from_attrs(vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::new(CKA_LABEL, label.as_bytes().to_vec()),
        ])
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn records_survive_the_file_and_are_shared_by_processes() {
        let d = dir();
        let j = Journal::open(d.path(), "1 group/x").unwrap();
        assert!(j.path().ends_with("p11ha-1_group_x.journal"));
        let ledger = Ledger::with_journal(j);
        let a = Record::new("m 1", Change::Destroy(key("gone")), true);
        let b = Record::new("m2", Change::Created { login: false }, false);
        ledger.keep(vec![a.clone(), b.clone()]);
        // A second ledger (another process) reads the same file.
        let other = Ledger::with_journal(Journal::open(d.path(), "1 group/x").unwrap());
        assert_eq!(other.all().unwrap(), vec![a.clone(), b.clone()]);
        other.settle(std::slice::from_ref(&a.id));
        assert_eq!(ledger.all().unwrap(), vec![b.clone()]);
        ledger.settle(std::slice::from_ref(&b.id));
        assert!(ledger.all().unwrap().is_empty());
        let path = ledger.journal_path().unwrap();
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0, "truncated");
    }

    #[test]
    fn the_file_is_private_and_torn_lines_are_skipped() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let ledger = Ledger::with_journal(Journal::open(d.path(), "g").unwrap());
        ledger.keep(vec![Record::new("m1", Change::Claim, false)]);
        let path = ledger.journal_path().unwrap().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"+ x p11ha-owed 1 ab 1 6d L\n+ u p11ha-owed 1 torn lin")
            .unwrap();
        drop(f);
        assert_eq!(ledger.all().unwrap().len(), 1);
    }

    #[test]
    fn an_unreadable_file_is_an_error_not_an_empty_list() {
        let d = dir();
        let ledger = Ledger::with_journal(Journal::open(d.path(), "g").unwrap());
        ledger.keep(vec![Record::new("m1", Change::Claim, false)]);
        let path = ledger.journal_path().unwrap().to_path_buf();
        // Replaced by a link: refused, so nothing can be known.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(ledger.all().is_err());
    }

    #[test]
    fn without_a_journal_records_stay_in_the_process() {
        let ledger = Ledger::in_memory();
        let r = Record::new("m1", Change::Claim, false);
        ledger.keep(vec![r.clone()]);
        assert_eq!(ledger.all().unwrap().len(), 1);
        ledger.settle(&[r.id]);
        assert!(ledger.all().unwrap().is_empty());
    }
}
