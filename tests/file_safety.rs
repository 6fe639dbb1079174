//! The files p11ha writes in directories other users can write to (issue 10, item 4): links and
//! files planted by another local user are never written through or reused, a lock file held by
//! another process delays C_Initialize and C_Finalize by a bounded time only, and the reasons a
//! directory cannot be used are the real ones.
//!
//! The tests with another user create one (`useradd --system`, removed at the end) and are
//! skipped with a message when not run as root. Children re-execute this test binary (env
//! `FILE_SAFETY_CHILD`): to hold a lock, and to run C_Initialize / C_Finalize or open the log
//! with stderr captured and a time bound.

mod support;

use p11ha::config::LogSettings;
use p11ha::ha::journal::{Journal, Ledger};
use p11ha::ha::sync::records::{Change, Record};
use p11ha::halog::writer::LogFile;
use p11ha::halog::HaLog;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{run_cmd, ClientRun, Cluster, ConfigOpts, MemberClient, GROUP_LABEL};

/// p11ha's bound on a lock wait (`safe_file::LOCK_WAIT`, 2 s) with room for a loaded machine:
/// C_Initialize and C_Finalize each wait at most one bound here. (Before the fix they blocked
/// for as long as the holder held the lock.)
const WITHIN: Duration = Duration::from_secs(10);

const JOURNAL: &str = "p11ha-G.journal";

fn settings(dir: &Path, max_len: u64) -> LogSettings {
    LogSettings {
        path: Some(dir.to_path_buf()),
        enabled: true,
        max_len,
        to_stdout: false,
        retain: 0,
        to_syslog: false,
        syslog_socket: p11ha::config::DEFAULT_SYSLOG_SOCKET.into(),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A world-writable sticky directory, as /tmp is.
fn shared_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    chmod(d.path(), 0o1777);
    d
}

// ---------------------------------------------------------------------------------------------
// Another local user.

/// useradd and userdel lock /etc/passwd: one at a time in this process (and retried, for other
/// processes).
static ACCOUNTS: Mutex<()> = Mutex::new(());

struct OtherUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl OtherUser {
    /// A new system user without home, or `None` (and a message) when not root.
    fn create(test: &str) -> Option<OtherUser> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("{test}: skipped: creating another user needs root");
            return None;
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "p11ha-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        accounts(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
            &name,
        ]);
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        assert_ne!(uid, 0);
        Some(OtherUser { name, uid, gid })
    }

    /// Runs `program args` as this user; panics unless it succeeds.
    fn run(&self, program: &str, args: &[&Path]) {
        let out = Command::new(program)
            .args(args)
            .uid(self.uid)
            .gid(self.gid)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} as {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn symlink(&self, target: &Path, link: &Path) {
        self.run("ln", &[Path::new("-s"), target, link]);
    }

    /// "uid N (name)", as p11ha names an owner.
    fn owner(&self) -> String {
        format!("uid {} ({})", self.uid, self.name)
    }
}

impl Drop for OtherUser {
    fn drop(&mut self) {
        accounts(&["userdel", &self.name]);
    }
}

fn accounts(cmd: &[&str]) {
    let _one = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0.. {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
        if out.status.success() {
            return;
        }
        // Exit 10 (useradd) / 10 (userdel): /etc/passwd locked by someone else for a moment.
        assert!(
            attempt < 20 && out.status.code() == Some(10),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Root's files that must stay as they are.

struct Victims {
    _dir: tempfile::TempDir,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Victims {
    fn new(names: &[&str]) -> Victims {
        let dir = tempfile::tempdir().unwrap();
        let files = names
            .iter()
            .map(|n| {
                let p = dir.path().join(n);
                let content = format!("root's {n}: must stay as it is\n").into_bytes();
                std::fs::write(&p, &content).unwrap();
                chmod(&p, 0o644);
                (p, content)
            })
            .collect();
        Victims { _dir: dir, files }
    }

    fn path(&self, i: usize) -> &Path {
        &self.files[i].0
    }

    fn assert_untouched(&self) {
        for (p, content) in &self.files {
            let meta = std::fs::symlink_metadata(p).unwrap();
            assert!(meta.is_file(), "{} replaced", p.display());
            assert_eq!(meta.nlink(), 1, "{} gained a link", p.display());
            assert_eq!(
                String::from_utf8_lossy(&std::fs::read(p).unwrap()),
                String::from_utf8_lossy(content),
                "{} was written",
                p.display()
            );
        }
    }
}

/// Every file p11ha left in `dir` besides the user's own `theirs` is a regular file of root's
/// with mode 0600 (so no rotated log is a link).
fn assert_only_roots_files(dir: &Path, theirs: &[&str]) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if theirs.contains(&name.as_str()) {
            continue;
        }
        let m = std::fs::symlink_metadata(entry.path()).unwrap();
        assert!(m.is_file(), "{name} is not a regular file");
        assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o600), "{name}");
    }
}

/// The HA log in `dir`: the rotated files (their names sort in time order), then the current.
fn log_text(dir: &Path) -> String {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("haErrorLog.") && name != "haErrorLog.txt"
        })
        .collect();
    rotated.sort();
    rotated.push(dir.join("haErrorLog.txt"));
    rotated
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Children.

/// Child side of the tests below (does nothing unless started by them).
#[test]
fn child() {
    let Ok(what) = std::env::var("FILE_SAFETY_CHILD") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("FILE_SAFETY_DIR").unwrap());
    match what.as_str() {
        // Holds an exclusive flock on the file until killed.
        "hold" => {
            let f = std::fs::File::open(&dir).unwrap();
            // SAFETY: flock on a descriptor we own.
            assert_eq!(
                unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) },
                0
            );
            println!("held");
            std::thread::sleep(Duration::from_secs(300));
        }
        // Opens the HA log and a journal there, as C_Initialize does, and writes.
        "open" => {
            let log = HaLog::open(&settings(&dir, 0));
            log.config_error("G", "a record");
            log.flush();
            match Journal::open(&dir, "G") {
                Ok(_) => eprintln!("journal opened"),
                Err(e) => eprintln!("journal refused: {e}"),
            }
        }
        // C_Initialize and C_Finalize through libp11ha.so with the config of P11HA_CONF.
        "init" => {
            let conf = std::env::var("P11HA_CONF").unwrap();
            let t = Instant::now();
            let client = MemberClient::open(
                &support::p11ha_lib(),
                GROUP_LABEL,
                &[("P11HA_CONF", Some(&conf))],
            )
            .unwrap();
            println!("initialized in {} ms", t.elapsed().as_millis());
            let t = Instant::now();
            drop(client); // C_Finalize
            println!("finalized in {} ms", t.elapsed().as_millis());
        }
        other => panic!("unknown child {other}"),
    }
}

fn child_cmd(what: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env("FILE_SAFETY_CHILD", what)
        .env("FILE_SAFETY_DIR", dir);
    cmd
}

/// A child process holding an exclusive flock on `file`; killed (by PID) on drop.
struct Holder(Child);

impl Holder {
    fn start(file: &Path) -> Holder {
        let mut child = child_cmd("hold", file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let holder = Holder(child);
        let mut line = String::new();
        // The harness prints its own text first ("test child ... held").
        while out.read_line(&mut line).unwrap() > 0 && !line.trim_end().ends_with("held") {
            line.clear();
        }
        assert!(
            line.trim_end().ends_with("held"),
            "the holder did not get the lock"
        );
        holder
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn p11ha_lines(run: &ClientRun) -> Vec<String> {
    run.stderr
        .lines()
        .filter(|l| l.starts_with("p11ha:") || l.starts_with("journal "))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Links and files planted by another user.

#[test]
fn links_another_user_planted_are_never_followed() {
    let Some(user) = OtherUser::create("links_another_user_planted_are_never_followed") else {
        return;
    };
    let victims = Victims::new(&["log", "lock", "journal"]);
    let dir = shared_dir();
    let d = dir.path();
    user.symlink(victims.path(0), &d.join("haErrorLog.txt"));
    user.symlink(victims.path(1), &d.join(".haErrorLog.lock"));
    user.symlink(victims.path(2), &d.join(JOURNAL));

    // As C_Initialize opens them: refused, and said so on stderr.
    let run = run_cmd(child_cmd("open", d), WITHIN);
    run.assert_ok();
    victims.assert_untouched();
    let lines = p11ha_lines(&run);
    let shown = d.display();
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "p11ha: HA log disabled: {shown}: .haErrorLog.lock is a symbolic link (owned by {}): \
             refused, p11ha never writes through a link; remove it",
            user.owner()
        ))),
        "{}",
        run.describe()
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "journal refused: {JOURNAL} is a symbolic link (owned by {})",
            user.owner()
        ))),
        "{}",
        run.describe()
    );
    victims.assert_untouched();

    // In this process too, file by file: with the lock link gone, the log link is refused.
    user.run("rm", &[&d.join(".haErrorLog.lock")]);
    let err = LogFile::open(d, 100).err().expect("log link refused");
    assert!(
        err.starts_with("haErrorLog.txt is a symbolic link"),
        "{err}"
    );
    let err = Journal::open(d, "G").err().expect("journal link refused");
    assert!(err.to_string().starts_with(JOURNAL), "{err}");

    // A link planted where another process's rotation just freed the name, while this process
    // writes and rotates: records are dropped and counted, never written through it.
    user.run("rm", &[&d.join("haErrorLog.txt")]);
    let log = HaLog::open_sync(&settings(d, 300));
    assert!(log.is_enabled());
    for i in 0..20 {
        log.config_error("G", &format!("before {i:02}"));
    }
    std::fs::remove_file(d.join("haErrorLog.txt")).unwrap();
    user.symlink(victims.path(0), &d.join("haErrorLog.txt"));
    for i in 0..5 {
        log.config_error("G", &format!("while linked {i}"));
    }
    victims.assert_untouched();
    user.run("rm", &[&d.join("haErrorLog.txt")]);
    log.config_error("G", "after");
    log.flush();
    let text = log_text(d);
    assert!(
        text.contains(&format!(
            "HA log: 5 records dropped (haErrorLog.txt is a symbolic link (owned by {})",
            user.owner()
        )),
        "{text}"
    );
    assert!(text.ends_with("configuration error: after\n"), "{text}");
    assert!(!text.contains("while linked"), "{text}");

    victims.assert_untouched();
    assert_only_roots_files(d, &[JOURNAL]);
}

#[test]
fn files_another_user_created_are_not_reused() {
    let Some(user) = OtherUser::create("files_another_user_created_are_not_reused") else {
        return;
    };
    let dir = shared_dir();
    let d = dir.path();
    let theirs = ["haErrorLog.txt", ".haErrorLog.lock", JOURNAL];
    for name in theirs {
        let p = d.join(name);
        user.run(
            "sh",
            &[
                Path::new("-c"),
                Path::new(&format!("umask 0; echo mine > '{}'", p.display())),
            ],
        );
    }
    let before: Vec<String> = theirs
        .iter()
        .map(|n| std::fs::read_to_string(d.join(n)).unwrap())
        .collect();

    let run = run_cmd(child_cmd("open", d), WITHIN);
    run.assert_ok();
    let now: Vec<String> = theirs
        .iter()
        .map(|n| std::fs::read_to_string(d.join(n)).unwrap())
        .collect();
    assert_eq!(now, before, "their files were written or truncated");
    let lines = p11ha_lines(&run);
    let not_ours = |name: &str| {
        format!(
            "{name} is owned by {}, not by this process's user uid 0 (root): refused",
            user.owner()
        )
    };
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "p11ha: HA log disabled: {}: {}",
            d.display(),
            not_ours(".haErrorLog.lock")
        ))),
        "{}",
        run.describe()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("journal refused: {}", not_ours(JOURNAL)))),
        "{}",
        run.describe()
    );
    user.run("rm", &[&d.join(".haErrorLog.lock")]);
    let err = LogFile::open(d, 100).err().expect("their log refused");
    assert!(err.starts_with(&not_ours("haErrorLog.txt")), "{err}");

    let after: Vec<String> = theirs
        .iter()
        .map(|n| std::fs::read_to_string(d.join(n)).unwrap_or_default())
        .collect();
    assert_eq!(after[0], before[0], "their log was written");
    assert_eq!(after[2], before[2], "their journal was written");
    assert_only_roots_files(d, &theirs);
}

#[test]
fn a_fifo_another_user_planted_does_not_hang_the_open() {
    let Some(user) = OtherUser::create("a_fifo_another_user_planted_does_not_hang_the_open") else {
        return;
    };
    let dir = shared_dir();
    let d = dir.path();
    user.run(
        "mkfifo",
        &[
            Path::new("-m"),
            Path::new("0666"),
            &d.join("haErrorLog.txt"),
        ],
    );
    user.run(
        "mkfifo",
        &[Path::new("-m"), Path::new("0666"), &d.join(JOURNAL)],
    );
    // Without a reader, opening a FIFO for writing waits for one for ever.
    let run = run_cmd(child_cmd("open", d), WITHIN);
    assert!(run.success(), "{}", run.describe());
    let lines = p11ha_lines(&run);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "p11ha: HA log disabled: {}: haErrorLog.txt is a FIFO, not a regular file (owned by {})",
            d.display(),
            user.owner()
        ))),
        "{}",
        run.describe()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("journal refused: {JOURNAL} is a FIFO"))),
        "{}",
        run.describe()
    );
}

// ---------------------------------------------------------------------------------------------
// Directories.

#[test]
fn a_directory_anyone_may_rename_in_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    chmod(d, 0o777);
    let log = HaLog::open(&settings(d, 0));
    assert!(!log.is_enabled(), "HA log opened in a mode 0777 directory");
    let err = LogFile::open(d, 0).err().unwrap();
    assert!(
        err.starts_with(
            "the directory is writable by every user (mode 0777) and has no sticky bit: any user \
             could rename, remove or replace p11ha's files there: refused"
        ),
        "{err}"
    );
    let err = Journal::open(d, "G").err().expect("journal refused");
    assert!(err.to_string().contains("has no sticky bit"), "{err}");
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "files created");
}

#[test]
fn a_shared_sticky_directory_is_warned_about_once_in_the_log_and_on_stderr() {
    let dir = shared_dir();
    let d = dir.path();
    let run = run_cmd(child_cmd("open", d), WITHIN);
    run.assert_ok();
    let warning = format!(
        "warning: HA log directory {}: it is writable by every user (mode 1777; sticky bit set, so \
         they cannot rename or remove p11ha's files, but they can create the names p11ha uses \
         before it does, which stops the log or journal); give it a directory owned by uid 0 \
         (root) with mode 0700 or 0750",
        d.display()
    );
    let lines = p11ha_lines(&run);
    assert_eq!(
        lines,
        vec![format!("p11ha: {warning}"), "journal opened".to_string()],
        "{}",
        run.describe()
    );
    let text = log_text(d);
    let records: Vec<&str> = text.lines().collect();
    assert_eq!(records.len(), 2, "{text}");
    assert!(records[0].ends_with(&format!("] HA {warning}")), "{text}");
    assert!(
        records[1].ends_with("configuration error: a record"),
        "{text}"
    );
}

#[test]
fn proc_is_not_a_directory_that_does_not_exist() {
    let err = LogFile::open(Path::new("/proc"), 0).err().unwrap();
    assert_eq!(
        err,
        "cannot open or create .haErrorLog.lock: /proc is on a proc file system, where files \
         cannot be created (ENOENT)"
    );
    let err = Journal::open(Path::new("/proc"), "G").err().unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open or create {JOURNAL}: /proc is on a proc file system, where files cannot \
             be created (ENOENT)"
        )
    );
    // sysfs refuses even root, with EACCES.
    let err = LogFile::open(Path::new("/sys"), 0).err().unwrap();
    assert!(
        err.starts_with(
            "cannot open or create .haErrorLog.lock: permission denied: /sys is owned by uid 0"
        ),
        "{err}"
    );
    assert!(err.ends_with("(a sysfs file system)"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Locks held by another process.

#[test]
fn a_held_log_lock_drops_and_counts_records_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let lock = d.join(".haErrorLog.lock");
    std::fs::write(&lock, "").unwrap();
    chmod(&lock, 0o600);
    let holder = Holder::start(&lock);

    // On a thread, so that a wait without a bound fails this test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let s = settings(&d, 0);
    std::thread::spawn(move || {
        let t = Instant::now();
        let log = HaLog::open(&s);
        for i in 0..3 {
            log.config_error("G", &format!("while held {i}"));
        }
        log.flush();
        let _ = tx.send((log, t.elapsed()));
    });
    let (log, took) = rx
        .recv_timeout(WITHIN)
        .unwrap_or_else(|_| panic!("open + 3 records + flush still waiting after {WITHIN:?}"));
    assert!(log.is_enabled());
    eprintln!("open + 3 records + flush with the lock held: {took:?}");
    assert!(!log_text(&d).contains("while held"));

    drop(holder);
    log.config_error("G", "after");
    log.flush();
    let text = log_text(&d);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with(
            "HA log: 3 records dropped (the lock on .haErrorLog.lock was held by another process \
             for longer than 2 s)"
        ),
        "{text}"
    );
    assert!(lines[1].ends_with("configuration error: after"), "{text}");
}

#[test]
fn a_held_journal_lock_keeps_records_in_memory_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let journal = Journal::open(&d, "G").unwrap();
    let holder = Holder::start(&d.join(JOURNAL));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ledger = Ledger::with_journal(journal);
        let t = Instant::now();
        ledger.keep(vec![Record::new(
            "m1",
            Change::Created { login: false },
            false,
        )]);
        let _ = tx.send((ledger, t.elapsed()));
    });
    let (ledger, took) = rx
        .recv_timeout(WITHIN)
        .unwrap_or_else(|_| panic!("a journal append still waiting after {WITHIN:?}"));
    eprintln!("journal append with the lock held: {took:?}");
    assert_eq!(std::fs::metadata(d.join(JOURNAL)).unwrap().len(), 0);
    drop(holder);
    // Kept in this process's memory: still waiting for a member.
    assert_eq!(ledger.all().unwrap().len(), 1);
}

#[test]
fn held_locks_delay_c_initialize_and_c_finalize_by_a_bound_only() {
    let cluster = Cluster::new(1);
    let log_dir = cluster.dir().join("log");
    std::fs::create_dir_all(&log_dir).unwrap();
    let serial = "1234567890123456";
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        group_serial: Some(serial.into()),
        ha_synchronize: Some(true),
        log_dir: Some(log_dir.clone()),
        extra_ha_lines: vec![format!("haJournalPath = {};", log_dir.display())],
        auto_reconnect_interval: 60,
        ..Default::default()
    });
    let lock = log_dir.join(".haErrorLog.lock");
    let journal = log_dir.join(format!("p11ha-{serial}.journal"));
    for f in [&lock, &journal] {
        std::fs::write(f, "").unwrap();
        chmod(f, 0o600);
    }
    let _log_holder = Holder::start(&lock);
    let _journal_holder = Holder::start(&journal);

    let mut cmd = child_cmd("init", &log_dir);
    cmd.env("P11HA_CONF", &conf);
    let run = run_cmd(cmd, Duration::from_secs(60));
    assert!(run.success(), "{}", run.describe());
    let ms = |what: &str| -> Duration {
        let line = run
            .stdout
            .lines()
            .find_map(|l| l.split_once(&format!("{what} in ")).map(|(_, t)| t))
            .unwrap_or_else(|| panic!("{}", run.describe()));
        Duration::from_millis(line.trim_end_matches(" ms").parse().unwrap())
    };
    let (init, fini) = (ms("initialized"), ms("finalized"));
    eprintln!("with both locks held: C_Initialize {init:?}, C_Finalize {fini:?}");
    assert!(init < WITHIN, "{}", run.describe());
    assert!(fini < WITHIN, "{}", run.describe());
    let said = |needle: &str| run.stderr.lines().any(|l| l.contains(needle));
    // The journal is only the fallback for records no member could take (docs/SYNC.md): when
    // its lock is held it is said or not depending on whether it was needed; the bound on both
    // calls above is what this test is about.
    assert!(
        said("the lock on .haErrorLog.lock was held by another process for longer than 2 s"),
        "{}",
        run.describe()
    );
}
