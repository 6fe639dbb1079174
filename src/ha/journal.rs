//! What a synchronized group owes its members that were down: destroys, attribute changes and
//! missed creations, kept until each member has caught up.
//!
//! With `haJournalPath` (default: the `haLogPath` directory) the list lives in a file shared by
//! every process using the group, so a change made by one application reaches a member that
//! another application (or the next run) sees return. Without a usable directory it lives in
//! this process only.
//!
//! The file holds identities only (class, key type, CKA_ID, label, public values; see
//! [`Identity`]), never attribute values an application set and never key material: an
//! attribute change owed to a member is replayed by reading the current values from a twin on a
//! member that has them.
//!
//! File format: one record per line, appended under `flock`, each line written with one
//! `write`; fields are separated by one space and carry no spaces themselves:
//!
//! ```text
//! + <id> <member serial, hex> D <identity>                     destroy
//! + <id> <member serial, hex> S <before> <after> <types>       attribute change
//! + <id> <member serial, hex> C                                objects created while down
//! - <id> <member serial, hex>                                  settled
//! ```
//!
//! `<identity>` is `type=value,...` in hex (`-` when empty), `<types>` is `type,...` in hex.
//! When every record is settled the file is truncated.
//!
//! The file is opened (for every operation) and locked through [`crate::safe_file`]: never
//! through a link, never another user's file, a lock waited for at most
//! [`crate::safe_file::LOCK_WAIT`]. An operation that fails is an error to [`Ledger`], which keeps
//! new records in this process's memory then.

use super::objects::Identity;
use crate::diag::diag;
use crate::mechanism::Attr;
use crate::safe_file::{self, Access, LockKind, Locker};
use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// What a member missed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The object was destroyed.
    Destroy(Identity),
    /// Attributes of these types changed; `after` finds the changed object on a member that has
    /// the change, `before` its twin on the member that missed it.
    Set {
        before: Identity,
        after: Identity,
        kinds: Vec<CK_ATTRIBUTE_TYPE>,
    },
    /// Token objects were created: the member needs the full comparison with an up member.
    Created,
}

/// One change owed to one member.
#[derive(Debug, Clone, PartialEq)]
pub struct Owed {
    pub id: String,
    pub serial: String,
    pub change: Change,
}

/// Where owed changes are kept.
pub struct Ledger {
    file: Option<Journal>,
    /// Records of this process only: all of them without a journal, and those the journal
    /// could not take (a full disk must not lose a destroy).
    memory: Mutex<Vec<Owed>>,
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

    /// Records `change` as owed to each of `serials`.
    pub fn record(&self, change: Change, serials: &[String]) {
        let owed: Vec<Owed> = serials
            .iter()
            .map(|s| Owed {
                id: new_id(),
                serial: s.clone(),
                change: change.clone(),
            })
            .collect();
        if owed.is_empty() {
            return;
        }
        if let Some(j) = &self.file {
            match j.append(&owed) {
                Ok(()) => return,
                Err(e) => diag!(
                    Warn,
                    "journal {}: {e}; changes owed to down members are kept in this \
                     process only",
                    j.path.display()
                ),
            }
        }
        self.memory.lock().extend(owed);
    }

    /// Changes owed to `serial`, oldest first.
    pub fn owed(&self, serial: &str) -> Vec<Owed> {
        let mut out = self.read_all();
        out.retain(|o| o.serial == serial);
        out
    }

    /// Serials that are owed anything.
    pub fn owing(&self) -> HashSet<String> {
        self.read_all().into_iter().map(|o| o.serial).collect()
    }

    /// Number of changes still owed (tests and diagnostics).
    pub fn pending(&self) -> usize {
        self.read_all().len()
    }

    /// Marks changes as done for their member.
    pub fn settle(&self, done: &[Owed]) {
        if done.is_empty() {
            return;
        }
        let keys: HashSet<(&str, &str)> = done
            .iter()
            .map(|o| (o.id.as_str(), o.serial.as_str()))
            .collect();
        self.memory
            .lock()
            .retain(|o| !keys.contains(&(o.id.as_str(), o.serial.as_str())));
        if let Some(j) = &self.file {
            if let Err(e) = j.settle(done) {
                diag!(Warn, "journal {}: {e}", j.path.display());
            }
        }
    }

    fn read_all(&self) -> Vec<Owed> {
        let mut out = match &self.file {
            Some(j) => j.live().unwrap_or_else(|e| {
                diag!(Warn, "journal {}: {e}", j.path.display());
                Vec::new()
            }),
            None => Vec::new(),
        };
        out.extend(self.memory.lock().iter().cloned());
        out
    }
}

/// Unique across processes and time: pid, clock and a counter.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}.{:x}.{:x}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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

    fn append(&self, owed: &[Owed]) -> io::Result<()> {
        let text: String = owed.iter().map(|o| format!("{}\n", encode(o))).collect();
        self.locked(LockKind::Exclusive, |mut f| f.write_all(text.as_bytes()))
    }

    fn settle(&self, done: &[Owed]) -> io::Result<()> {
        let text: String = done
            .iter()
            .map(|o| format!("- {} {}\n", o.id, hex(o.serial.as_bytes())))
            .collect();
        self.locked(LockKind::Exclusive, |mut f| {
            f.write_all(text.as_bytes())?;
            if live_records(&read_text(f)?).is_empty() {
                f.set_len(0)?;
            }
            Ok(())
        })
    }

    fn live(&self) -> io::Result<Vec<Owed>> {
        self.locked(LockKind::Shared, |f| Ok(live_records(&read_text(f)?)))
    }
}

fn read_text(mut f: &File) -> io::Result<String> {
    let mut text = String::new();
    f.seek(SeekFrom::Start(0))?;
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// Records added and not settled, in order. A line that does not parse (a torn write after a
/// crash) is skipped.
fn live_records(text: &str) -> Vec<Owed> {
    let mut added: Vec<Owed> = Vec::new();
    let mut settled: HashSet<(String, String)> = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            let mut f = rest.split(' ');
            if let (Some(id), Some(serial)) = (f.next(), f.next().and_then(unhex_str)) {
                settled.insert((id.to_string(), serial));
            }
        } else if let Some(o) = decode(line) {
            added.push(o);
        }
    }
    added.retain(|o| !settled.contains(&(o.id.clone(), o.serial.clone())));
    added
}

fn encode(o: &Owed) -> String {
    let head = format!("+ {} {}", o.id, hex(o.serial.as_bytes()));
    match &o.change {
        Change::Destroy(i) => format!("{head} D {}", identity_text(i)),
        Change::Set {
            before,
            after,
            kinds,
        } => format!(
            "{head} S {} {} {}",
            identity_text(before),
            identity_text(after),
            kinds
                .iter()
                .map(|k| format!("{k:x}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Change::Created => format!("{head} C"),
    }
}

fn decode(line: &str) -> Option<Owed> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() < 4 || f[0] != "+" {
        return None;
    }
    let change = match (f[3], f.len()) {
        ("D", 5) => Change::Destroy(parse_identity(f[4])?),
        ("S", 7) => Change::Set {
            before: parse_identity(f[4])?,
            after: parse_identity(f[5])?,
            kinds: f[6]
                .split(',')
                .map(|k| CK_ATTRIBUTE_TYPE::from_str_radix(k, 16).ok())
                .collect::<Option<Vec<_>>>()?,
        },
        ("C", 4) => Change::Created,
        _ => return None,
    };
    Some(Owed {
        id: f[1].to_string(),
        serial: unhex_str(f[2])?,
        change,
    })
}

fn identity_text(i: &Identity) -> String {
    if i.attrs().is_empty() {
        return "-".into();
    }
    i.attrs()
        .iter()
        .map(|a| format!("{:x}={}", a.kind, hex(&a.value)))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_identity(s: &str) -> Option<Identity> {
    if s == "-" {
        return Some(Identity::from_attrs(Vec::new()));
    }
    s.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some(Attr::new(
                CK_ATTRIBUTE_TYPE::from_str_radix(k, 16).ok()?,
                unhex(v)?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .map(Identity::from_attrs)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unhex_str(s: &str) -> Option<String> {
    String::from_utf8(unhex(s)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::*;
    use std::fs::OpenOptions;

    fn key(label: &str) -> Identity {
        Identity::from_attrs(vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::new(CKA_LABEL, label.as_bytes().to_vec()),
            Attr::new(CKA_ID, Vec::new()),
        ])
    }

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn every_kind_of_record_survives_the_file() {
        let d = dir();
        let j = Journal::open(d.path(), "1 group/x").unwrap();
        assert!(j.path().ends_with("p11ha-1_group_x.journal"));
        let ledger = Ledger::with_journal(j);
        let set = Change::Set {
            before: key("old"),
            after: key("new"),
            kinds: vec![CKA_LABEL],
        };
        ledger.record(Change::Destroy(key("gone")), &["m 1".into(), "m2".into()]);
        ledger.record(set.clone(), &["m2".into()]);
        ledger.record(Change::Created, &["m2".into()]);

        // A second ledger (another process) reads the same file.
        let other = Ledger::with_journal(Journal::open(d.path(), "1 group/x").unwrap());
        let m2: Vec<Change> = other.owed("m2").into_iter().map(|o| o.change).collect();
        assert_eq!(m2, vec![Change::Destroy(key("gone")), set, Change::Created]);
        assert_eq!(other.owed("m 1").len(), 1);
        assert_eq!(
            other.owing(),
            ["m 1".to_string(), "m2".to_string()].into_iter().collect()
        );
    }

    #[test]
    fn settled_records_are_gone_and_the_file_empties_when_all_are() {
        let d = dir();
        let ledger = Ledger::with_journal(Journal::open(d.path(), "g").unwrap());
        ledger.record(Change::Destroy(key("a")), &["m1".into(), "m2".into()]);
        let m1 = ledger.owed("m1");
        ledger.settle(&m1);
        assert!(ledger.owed("m1").is_empty());
        assert_eq!(ledger.owed("m2").len(), 1, "settling m1 leaves m2's copy");
        let path = ledger.journal_path().unwrap().to_path_buf();
        assert!(std::fs::metadata(&path).unwrap().len() > 0);
        ledger.settle(&ledger.owed("m2"));
        assert_eq!(ledger.pending(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn the_file_is_private_and_holds_no_attribute_values() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir();
        let ledger = Ledger::with_journal(Journal::open(d.path(), "g").unwrap());
        ledger.record(
            Change::Set {
                before: key("k"),
                after: key("k"),
                kinds: vec![CKA_VALUE],
            },
            &["m1".into()],
        );
        let path = ledger.journal_path().unwrap();
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with(&format!(" {CKA_VALUE:x}\n")), "{text}");
    }

    #[test]
    fn torn_and_foreign_lines_are_skipped() {
        let d = dir();
        let ledger = Ledger::with_journal(Journal::open(d.path(), "g").unwrap());
        ledger.record(Change::Created, &["m1".into()]);
        let path = ledger.journal_path().unwrap().to_path_buf();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"+ 1.2.3 6d31 D 0=00\n+ torn line wit")
            .unwrap();
        drop(f);
        assert_eq!(ledger.owed("m1").len(), 2);
        assert!(decode("+ 1 zz C").is_none());
        assert!(decode("+ 1 6d31 S - -").is_none());
    }

    #[test]
    fn without_a_journal_records_stay_in_the_process() {
        let ledger = Ledger::in_memory();
        ledger.record(Change::Created, &["m1".into()]);
        assert_eq!(ledger.pending(), 1);
        ledger.settle(&ledger.owed("m1"));
        assert_eq!(ledger.pending(), 0);
    }

    #[test]
    fn concurrent_writers_and_settlers_lose_nothing() {
        let d = dir();
        let path = d.path().to_path_buf();
        let label = |o: &Owed| match &o.change {
            Change::Destroy(i) => i.get(CKA_LABEL).map(|a| a.value.clone()),
            _ => None,
        };
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // One journal per thread: separate descriptors, as processes have.
                    let l = Ledger::with_journal(Journal::open(&path, "g").unwrap());
                    for i in 0..50 {
                        l.record(Change::Destroy(key(&format!("{t}-{i}"))), &["m".into()]);
                    }
                    // Each settles its own odd records while the others still write.
                    let odd: Vec<Owed> = l
                        .owed("m")
                        .into_iter()
                        .filter(|o| {
                            label(o).is_some_and(|v| {
                                let s = String::from_utf8(v).unwrap();
                                let (lt, li) = s.split_once('-').unwrap();
                                lt == t.to_string() && li.parse::<u32>().unwrap() % 2 == 1
                            })
                        })
                        .collect();
                    assert_eq!(odd.len(), 25);
                    l.settle(&odd);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let l = Ledger::with_journal(Journal::open(&path, "g").unwrap());
        let mut left: Vec<String> = l
            .owed("m")
            .iter()
            .map(|o| String::from_utf8(label(o).unwrap()).unwrap())
            .collect();
        left.sort();
        let mut want: Vec<String> = (0..8)
            .flat_map(|t| (0..50).step_by(2).map(move |i| format!("{t}-{i}")))
            .collect();
        want.sort();
        assert_eq!(left, want);
    }
}
