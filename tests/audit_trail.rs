//! The audit trail (issue 15, docs/AUDIT.md) end to end: real SoftHSM members behind
//! `libp11ha.so`, the `p11ha audit` verbs run as a separate process, MACs computed by the members.
//!
//! - tampering (a byte flipped, a line deleted, two lines swapped, the last record cut short, a
//!   rotated file removed, a record forged without the key) is found by `verify`, naming the
//!   record;
//! - 4 processes x 4 threads through many rotations: one gap-free sequence, nothing lost, torn
//!   or doubled;
//! - `clear` starts the new stream with the record issue 15 asks for;
//! - `follow` shows a new record within 1 s, across a rotation;
//! - no PIN, key byte or attribute value in any file; every file 0600;
//! - records written before a login are sealed later, in order (no member could MAC them).

mod support;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use p11ha::audit::record::{self, Record};
use p11ha::audit::stream::stream_files;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::*;

const SERIAL: &str = "77015";
/// `haAuditLen` large enough that a test never rotates.
const NO_ROTATION: u64 = 1 << 40;
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// A wrong PIN the application tries: it must never reach a file.
const WRONG_PIN: &str = "wrong-PIN-9f3e7a";
/// The value of a data object and the bytes of an imported key: never in a file either.
const SECRET_VALUE: &[u8] = b"SECRET-VALUE-5b8c1d";
const KEY_BYTES: [u8; 32] = *b"KEYBYTES-0123456789abcdef-XYZ-01";

struct Trail {
    c: Cluster,
    conf: PathBuf,
    dir: PathBuf,
}

/// Two direct SoftHSM members, audit on with `audit_len`, the audit key created
/// through the group by `p11ha audit init-key`.
fn trail(audit_len: u64) -> Trail {
    trail_with(audit_len, false)
}

/// [`trail`]; with `served`, the members are behind `p11-kit server` processes (one process
/// owns each token, as on a host where several applications share the members).
fn trail_with(audit_len: u64, served: bool) -> Trail {
    trail_lines(audit_len, served, Vec::new())
}

/// [`trail_with`], with `extra` lines in HAConfiguration.
fn trail_lines(audit_len: u64, served: bool, extra: Vec<String>) -> Trail {
    trail_prepared(audit_len, served, extra, |_| {})
}

/// [`trail_lines`]; `prepare` gets the audit directory before anything is written there.
fn trail_prepared(
    audit_len: u64,
    served: bool,
    extra: Vec<String>,
    prepare: impl FnOnce(&Path),
) -> Trail {
    let c = if served {
        Cluster::started(2)
    } else {
        Cluster::new(2)
    };
    let dir = c.dir().join("audit");
    std::fs::create_dir(&dir).unwrap();
    prepare(&dir);
    let conf = c.write_config(&ConfigOpts {
        direct: !served,
        group_serial: Some(SERIAL.into()),
        extra_ha_lines: [
            "haAuditLog = enabled;".into(),
            format!("haAuditPath = {};", dir.display()),
            format!("haAuditLen = {audit_len};"),
        ]
        .into_iter()
        .chain(extra)
        .collect(),
        ..Default::default()
    });
    let t = Trail { c, conf, dir };
    let r = t.cli(&["audit", "init-key", "-group", GROUP_LABEL], true);
    r.assert_ok();
    assert!(r.stdout.contains("Audit key created"), "{}", r.describe());
    t
}

impl Trail {
    fn cli(&self, args: &[&str], pin: bool) -> ClientRun {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11ha"));
        cmd.args(args)
            .env("P11HA_CONF", &self.conf)
            .env_remove("ChrystokiConfigurationPath");
        if pin {
            cmd.env("P11HA_PIN", USER_PIN);
        } else {
            cmd.env_remove("P11HA_PIN");
        }
        run_cmd(cmd, CLI_TIMEOUT)
    }

    fn files(&self) -> Vec<PathBuf> {
        stream_files(&self.dir, SERIAL).unwrap()
    }

    /// `libp11ha.so` in this process; one test at a time (the module is loaded once per
    /// process: a second C_Initialize before the first client's C_Finalize would fail, or run
    /// on the other test's configuration).
    fn client(&self) -> InProcess {
        static IN_PROCESS: Mutex<()> = Mutex::new(());
        let one = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
        InProcess {
            client: self.c.ha_client(&self.conf, GROUP_LABEL).unwrap(),
            _one: one,
        }
    }
}

/// A client of `libp11ha.so` in this process and the lock that makes it the only one. Fields
/// drop in order: the client (C_Finalize) before the lock. (A `(client, guard)` tuple bound
/// with `let (ha, _one)` drops the guard first, so the next test's C_Initialize could run
/// while this one's C_Finalize still flushed the trail.)
struct InProcess {
    client: MemberClient,
    _one: MutexGuard<'static, ()>,
}

impl std::ops::Deref for InProcess {
    type Target = MemberClient;
    fn deref(&self) -> &MemberClient {
        &self.client
    }
}

/// Every line of `files` in order, parsed (a line that does not parse fails the test).
fn records(files: &[PathBuf]) -> Vec<(PathBuf, usize, Record)> {
    let mut out = Vec::new();
    for f in files {
        for (i, l) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            let r = record::parse(l).unwrap_or_else(|e| {
                panic!("{}:{}: torn or bad record {e:?}: {l}", f.display(), i + 1)
            });
            out.push((f.clone(), i + 1, r));
        }
    }
    out
}

fn field<'a>(r: &'a Record, key: &str) -> Option<&'a str> {
    r.fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Copies `files` into `to` (same names), for tampering without touching the live stream.
fn copy_all(files: &[PathBuf], to: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(to).unwrap();
    files
        .iter()
        .map(|f| {
            let d = to.join(f.file_name().unwrap());
            std::fs::copy(f, &d).unwrap();
            d
        })
        .collect()
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What an application does that is audited: a refused login, a login, objects made, changed
/// and destroyed; with `logout`, a C_Logout (the records after it stay unsealed until the next
/// login); without, C_Finalize ends the login after sealing what is left.
fn application_run(t: &Trail, logout: bool) {
    let ha = t.client();
    let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
    let refused = s.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())));
    assert!(
        matches!(refused, Err(Error::Pkcs11(RvError::PinIncorrect, _))),
        "{refused:?}"
    );
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    let data = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(b"audited-data".to_vec()),
            Attribute::Value(SECRET_VALUE.to_vec()),
        ])
        .unwrap();
    let aes = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Id(vec![0x15, 0x01]),
            Attribute::Label(b"imported-aes".to_vec()),
            Attribute::Value(KEY_BYTES.to_vec()),
            Attribute::Encrypt(true),
        ])
        .unwrap();
    s.update_attributes(aes, &[Attribute::Label(b"renamed-aes".to_vec())])
        .unwrap();
    let gen = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::ValueLen(32.into()),
                Attribute::Token(false),
                Attribute::Label(b"generated-aes".to_vec()),
            ],
        )
        .unwrap();
    for h in [data, aes, gen] {
        s.destroy_object(h).unwrap();
    }
    if logout {
        s.logout().unwrap();
    }
    drop(s);
    // C_Finalize (the drop) waits for the records to be written.
}

#[test]
fn records_say_what_happened_and_nothing_secret() {
    let t = trail(NO_ROTATION);
    application_run(&t, true);
    let files = t.files();
    let all = records(&files);
    let ops: Vec<&str> = all.iter().map(|(_, _, r)| r.op.as_str()).collect();
    for want in [
        "C_Initialize",
        "C_OpenSession",
        "C_Login",
        "C_CreateObject",
        "C_SetAttributeValue",
        "C_GenerateKey",
        "C_DestroyObject",
        "C_Logout",
        "C_CloseSession",
        "C_Finalize",
    ] {
        assert!(ops.contains(&want), "no {want} record in {ops:?}");
    }
    // The refused login: the member answers the same directly.
    let direct = t.c.direct_client(0);
    let ds = direct.pkcs11.open_rw_session(direct.slot).unwrap();
    let d = ds.login(UserType::User, Some(&AuthPin::new(WRONG_PIN.into())));
    assert!(
        matches!(d, Err(Error::Pkcs11(RvError::PinIncorrect, _))),
        "{d:?}"
    );
    drop(ds);
    drop(direct);
    let logins: Vec<&Record> = all
        .iter()
        .map(|(_, _, r)| r)
        .filter(|r| r.op == "C_Login" && r.pid == std::process::id())
        .collect();
    assert_eq!(logins[0].rv_name, "CKR_PIN_INCORRECT", "{}", logins[0].body);
    assert_eq!(logins[1].rv_name, "CKR_OK");
    assert_eq!(field(logins[0], "user"), Some("CKU_USER"));
    // One correlation id from C_OpenSession to C_CloseSession, on every record between.
    let open = all
        .iter()
        .position(|(_, _, r)| r.op == "C_OpenSession" && r.pid == std::process::id())
        .unwrap();
    let close = all
        .iter()
        .position(|(_, _, r)| r.op == "C_CloseSession" && r.pid == std::process::id())
        .unwrap();
    let cid = all[open].2.cid;
    assert_ne!(cid, 0);
    // Printed whole when it fails: a record of another origin in the session's run (an HA
    // event under load?) would name the flake seen once under load, not reproduced since.
    let other: Vec<&str> = all[open..=close]
        .iter()
        .filter(|(_, _, r)| r.cid != cid)
        .map(|(_, _, r)| r.body.as_str())
        .collect();
    assert!(other.is_empty(), "not correlation id {cid:08x}: {other:#?}");
    // Attribute types, never values.
    let set = all
        .iter()
        .find(|(_, _, r)| r.op == "C_SetAttributeValue")
        .unwrap();
    assert!(set.2.body.contains("CKA_LABEL"), "{}", set.2.body);
    assert!(set.2.body.contains("renamed-aes") && set.2.body.contains("1501"));
    for f in std::fs::read_dir(&t.dir).unwrap() {
        let p = f.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        for secret in [
            WRONG_PIN.as_bytes().to_vec(),
            SECRET_VALUE.to_vec(),
            KEY_BYTES.to_vec(),
        ] {
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let plain = String::from_utf8_lossy(&secret).to_lowercase();
            assert!(!text.contains(&plain), "{} holds {plain}", p.display());
            assert!(!text.contains(&hex), "{} holds {plain} in hex", p.display());
        }
        assert!(!text.contains("pin="), "{}", p.display());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
    }
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());
}

#[test]
fn verify_names_every_kind_of_tampering() {
    let t = trail(2500);
    application_run(&t, true);
    application_run(&t, false);
    let live = t.files();
    assert!(live.len() >= 3, "want rotated files: {live:?}");
    let work = t.c.dir().join("tamper");
    let files = copy_all(&live, &work);
    // The copy ends at its last sealed record (what comes after waits for the next login).
    let last = files.last().unwrap();
    let l = lines_of(last);
    let keep = l
        .iter()
        .rposition(|x| !x.trim_end().ends_with("|mac=-"))
        .unwrap();
    std::fs::write(last, l[..=keep].concat()).unwrap();
    let arg = |fs: &[PathBuf]| -> Vec<String> {
        let mut v = vec!["audit".to_string(), "verify".to_string()];
        v.extend(fs.iter().map(|f| f.display().to_string()));
        v
    };
    let verify = |fs: &[PathBuf]| -> ClientRun {
        let a = arg(fs);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        t.cli(&a, true)
    };
    let ok = verify(&files);
    assert!(ok.success(), "untouched copy: {}", ok.describe());
    // `verify` names the first bad record as `FIRST BAD RECORD: <file>:<line>: ...`.
    let expect = |r: &ClientRun, file: &Path, line: usize, what: &str| {
        assert!(
            !r.success(),
            "tampering not found ({what}): {}",
            r.describe()
        );
        let needle = format!("FIRST BAD RECORD: {}:{line}:", file.display());
        assert!(
            r.stdout.contains(&needle),
            "{what}: want {needle}\n{}",
            r.describe()
        );
    };
    let mid = files[1].clone();
    let orig = lines_of(&mid);
    assert!(orig.len() >= 4, "{orig:?}");

    // One byte flipped in a sealed record past the header (in its result's hex digits).
    let k = (2..orig.len() - 1)
        .find(|&k| !orig[k].trim_end().ends_with("|mac=-"))
        .expect("a sealed record in the middle file");
    let mut l = orig.clone();
    let i = l[k].find('|').unwrap() - 3;
    let mut b = l[k].clone().into_bytes();
    b[i] ^= 0x01;
    l[k] = String::from_utf8(b).unwrap();
    std::fs::write(&mid, l.concat()).unwrap();
    expect(&verify(&files), &mid, k + 1, "a byte flipped");

    // Line 3 deleted: the record after it is where the sequence breaks.
    let mut l = orig.clone();
    l.remove(2);
    std::fs::write(&mid, l.concat()).unwrap();
    expect(&verify(&files), &mid, 3, "a line deleted");

    // Lines 3 and 4 swapped.
    let mut l = orig.clone();
    l.swap(2, 3);
    std::fs::write(&mid, l.concat()).unwrap();
    expect(&verify(&files), &mid, 3, "two lines swapped");
    std::fs::write(&mid, orig.concat()).unwrap();

    // A rotated file removed: the first record of the next file names the gap.
    let without: Vec<PathBuf> = files.iter().filter(|f| **f != mid).cloned().collect();
    let r = verify(&without);
    expect(&r, &files[2], 1, "a rotated file removed");

    // The last record cut short.
    let last = files.last().unwrap().clone();
    let full = std::fs::read(&last).unwrap();
    let n = lines_of(&last).len();
    std::fs::write(&last, &full[..full.len() - 20]).unwrap();
    expect(&verify(&files), &last, n, "the last record cut short");

    // A record forged without the key: a copy of the last one, next sequence number, a MAC
    // made up.
    std::fs::write(&last, &full).unwrap();
    let lines = lines_of(&last);
    let prev = record::parse(lines[n - 1].trim_end()).unwrap();
    let forged = lines[n - 1]
        .replacen(
            &format!(" {:016x} ", prev.seq),
            &format!(" {:016x} ", prev.seq + 1),
            1,
        )
        .replacen(&prev.mac_text, &"5a".repeat(32), 1);
    let mut f = full.clone();
    f.extend_from_slice(forged.as_bytes());
    std::fs::write(&last, &f).unwrap();
    expect(&verify(&files), &last, n + 1, "a forged record");
    // ... or without a MAC: not verified, and said so (non-zero exit).
    let unsealed = forged.replacen(&"5a".repeat(32), "-", 1);
    let mut f = full.clone();
    f.extend_from_slice(unsealed.as_bytes());
    std::fs::write(&last, &f).unwrap();
    let r = verify(&files);
    assert!(!r.success(), "{}", r.describe());
    assert!(
        r.stderr.contains("not sealed") || r.stdout.contains("not sealed"),
        "{}",
        r.describe()
    );
    std::fs::write(&last, &full).unwrap();
    assert!(verify(&files).success());
}

/// A child process of [`four_processes_four_threads_one_sequence`]; does nothing when run on
/// its own.
#[test]
#[ignore]
fn audit_child() {
    let (Ok(conf), Ok(me)) = (
        std::env::var("AUDIT_CHILD_CONF"),
        std::env::var("AUDIT_CHILD_ID"),
    ) else {
        return;
    };
    let ha = MemberClient::open(&p11ha_lib(), GROUP_LABEL, &[("P11HA_CONF", Some(&conf))]).unwrap();
    let ha = &ha;
    let me = &me;
    // One login for the process, before the threads' sessions.
    let _first = ha.session().unwrap();
    std::thread::scope(|sc| {
        for th in 0..THREADS {
            sc.spawn(move || {
                let s = ha.session().unwrap();
                for i in 0..PER_THREAD {
                    let h = s
                        .create_object(&[
                            Attribute::Class(ObjectClass::DATA),
                            Attribute::Token(false),
                            Attribute::Label(format!("p{me}t{th}i{i}x").into_bytes()),
                            Attribute::Value(SECRET_VALUE.to_vec()),
                        ])
                        .unwrap();
                    s.destroy_object(h).unwrap();
                }
            });
        }
    });
}

const PROCESSES: usize = 4;
const THREADS: usize = 4;
const PER_THREAD: usize = 30;

#[test]
fn four_processes_four_threads_one_sequence() {
    // Served members: four processes each loading SoftHSM on the same token files directly
    // sometimes got CKR_GENERAL_ERROR from C_Login (cause not investigated).
    let t = trail_with(20_000, true);
    let exe = std::env::current_exe().unwrap();
    let runs: Vec<_> = (0..PROCESSES)
        .map(|p| {
            let mut cmd = Command::new(&exe);
            cmd.args(["audit_child", "--exact", "--ignored", "--nocapture"])
                .env("AUDIT_CHILD_CONF", &t.conf)
                .env("AUDIT_CHILD_ID", p.to_string());
            run_cmd_bg(cmd, Duration::from_secs(120))
        })
        .collect();
    for r in runs {
        r.join().unwrap().assert_ok();
    }
    let files = t.files();
    assert!(
        files.len() >= 5,
        "want several rotations: {} files",
        files.len()
    );
    let all = records(&files);
    for (i, (f, l, r)) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "{}:{l}: sequence broken", f.display());
    }
    let mut cids = std::collections::HashSet::new();
    for p in 0..PROCESSES {
        for th in 0..THREADS {
            let mut cid = None;
            for i in 0..PER_THREAD {
                let label = format!(",p{p}t{th}i{i}x");
                let made: Vec<&Record> = all
                    .iter()
                    .map(|(_, _, r)| r)
                    .filter(|r| r.op == "C_CreateObject" && r.body.contains(&label))
                    .collect();
                assert_eq!(made.len(), 1, "{label}: {} records", made.len());
                assert_eq!(*cid.get_or_insert(made[0].cid), made[0].cid, "{label}");
            }
            assert!(
                cids.insert(cid.unwrap()),
                "two sessions share a correlation id"
            );
        }
    }
    let destroys = all
        .iter()
        .filter(|(_, _, r)| r.op == "C_DestroyObject")
        .count();
    assert_eq!(destroys, PROCESSES * THREADS * PER_THREAD);
    assert!(!all.iter().any(|(_, _, r)| r.op == "AUDIT_RECORDS_LOST"));
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());
}

#[test]
fn clear_archives_and_starts_with_the_clear() {
    let t = trail(NO_ROTATION);
    application_run(&t, true);
    let before = records(&t.files());
    let (_, _, last) = before.last().unwrap().clone();
    let r = t.cli(&["audit", "clear", "-group", GROUP_LABEL], false);
    r.assert_ok();
    let archives: Vec<PathBuf> = std::fs::read_dir(&t.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let archived = records(&stream_files(&archives[0], SERIAL).unwrap());
    assert_eq!(
        archived.len(),
        before.len(),
        "the archive holds the whole stream"
    );
    let now = records(&t.files());
    let first = &now[0].2;
    assert_eq!(first.op, "AUDIT_CLEARED");
    assert_eq!(first.seq, last.seq + 1, "numbering goes on");
    assert_eq!(
        field(first, "prev_seq"),
        Some(format!("{:016x}", last.seq).as_str())
    );
    assert_eq!(field(first, "prev_mac"), Some(last.mac_text.as_str()));
    let me = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    assert!(
        field(first, "by").unwrap().contains(me.trim()),
        "{}",
        first.body
    );
    assert_eq!(
        field(first, "archive"),
        Some(archives[0].file_name().unwrap().to_str().unwrap())
    );
    // Written without a PIN: the next sealed record seals it.
    assert_eq!(first.mac, None);
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());
}

#[test]
fn records_before_a_login_are_sealed_when_one_happens() {
    let t = trail(NO_ROTATION);
    {
        let ha = t.client();
        let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
        drop(s);
    }
    let unsealed = records(&t.files());
    let tail: Vec<&str> = unsealed
        .iter()
        .rev()
        .take_while(|(_, _, r)| r.mac.is_none())
        .map(|(_, _, r)| r.op.as_str())
        .collect();
    assert!(
        tail.contains(&"C_OpenSession") && tail.contains(&"C_Finalize"),
        "the records of a process that never logged in are written unsealed: {tail:?}"
    );
    // A login (here: verify's own) seals them through the chain.
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());
    let after = records(&t.files());
    let last_sealed = after.iter().rposition(|(_, _, r)| r.mac.is_some()).unwrap();
    assert!(
        last_sealed > unsealed.len() - 1,
        "nothing after the tail was sealed"
    );
}

#[test]
fn follow_shows_new_records_across_a_rotation() {
    let t = trail(3000);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11ha"));
    cmd.args(["audit", "follow", "-group", GROUP_LABEL])
        .env("P11HA_CONF", &t.conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let pgid = child.id() as i32;
    t.c.track_group(pgid);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut seen_rotation = false;
    for round in 0..6 {
        let before = t.files().len();
        {
            let ha = t.client();
            drop(ha.session().unwrap());
        }
        // The record is on disk now (C_Finalize waited for it): follow has 1 s to show it.
        let last = records(&t.files()).last().unwrap().2.seq;
        let t0 = Instant::now();
        let mut shown = false;
        while let Ok(l) = rx.recv_timeout(Duration::from_secs(1).saturating_sub(t0.elapsed())) {
            let r = record::parse(&l).unwrap_or_else(|e| panic!("follow printed {l:?}: {e:?}"));
            seen_rotation |= r.op == "AUDIT_FILE_START";
            if r.seq == last {
                shown = true;
                break;
            }
        }
        assert!(shown, "round {round}: record {last:x} not shown within 1 s");
        if t.files().len() > before && round >= 2 {
            break;
        }
    }
    assert!(
        seen_rotation,
        "no rotation during the test: {:?}",
        t.files()
    );
    // SAFETY: kill of a process group this test started.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

/// Polls `done` every 20 ms for at most 10 s; fails naming `what`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The secrets [`application_run`] hands over, as they could appear in text: plain and in hex.
fn secret_texts() -> Vec<String> {
    let mut out = Vec::new();
    for secret in [WRONG_PIN.as_bytes(), SECRET_VALUE, &KEY_BYTES[..]] {
        out.push(String::from_utf8_lossy(secret).to_lowercase());
        out.push(secret.iter().map(|b| format!("{b:02x}")).collect());
    }
    out
}

/// What one syslog datagram says: `<PRI>Mmm dd hh:mm:ss IDENT[PID]: TEXT`.
fn syslog_parts(d: &str) -> (u32, &str, &str) {
    let (pri, rest) = d[1..].split_once('>').unwrap();
    // The timestamp is 15 characters ("Dec  2 03:01:41") and a space.
    let (ident, text) = rest[16..].split_once(": ").unwrap();
    let ident = &ident[..ident.find('[').unwrap()];
    (pri.parse().unwrap(), ident, text)
}

#[test]
fn syslog_gets_every_record_of_both_logs_and_nothing_secret() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("log.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Drained while the records come (a local datagram socket holds only a few).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(String::from_utf8(buf[..n].to_vec()).unwrap()),
                Err(_) if stop2.load(std::sync::atomic::Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        got
    });
    let t = trail_lines(
        NO_ROTATION,
        false,
        vec![
            "haLogToSyslog = enabled;".into(),
            format!("haSyslogSocket = {};", sock.display()),
        ],
    );
    application_run(&t, true);
    // What the files hold now is what was sent (the init-key run and the application's, one
    // after the other); wait for the last datagram, then stop the reader.
    let audit_lines: Vec<String> = t
        .files()
        .iter()
        .flat_map(|f| lines_of(f))
        .map(|l| l.trim_end().to_string())
        .collect();
    let ha_lines: Vec<String> = t.c.ha_log_lines();
    assert!(
        ha_lines.iter().any(|l| l.contains(SERIAL)),
        "the HA log has records of the group: {ha_lines:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = reader.join().unwrap();
    let mut audit_sent = Vec::new();
    let mut ha_sent = Vec::new();
    for d in &got {
        let (pri, ident, text) = syslog_parts(d);
        match ident {
            // LOG_AUTHPRIV | LOG_INFO
            "p11ha-audit" => {
                assert_eq!(pri, (10 << 3) | 6, "{d}");
                audit_sent.push(text.to_string());
            }
            // LOG_USER | LOG_NOTICE
            "p11ha-halog" => {
                assert_eq!(pri, (1 << 3) | 5, "{d}");
                ha_sent.push(text.to_string());
            }
            _ => panic!("datagram from {ident}: {d}"),
        }
    }
    assert_eq!(audit_sent, audit_lines, "every audit record, in order");
    let ha_trimmed: Vec<String> = ha_lines.iter().map(|l| l.trim_end().to_string()).collect();
    assert_eq!(ha_sent, ha_trimmed, "every HA log record, in order");
    for d in &got {
        let text = d.to_lowercase();
        for secret in secret_texts() {
            assert!(!text.contains(&secret), "syslog got {secret}: {d}");
        }
        assert!(!text.contains("pin="), "{d}");
    }
}

/// The data object `label` made, read back and destroyed: the application's calls answer
/// whatever happens to the audit file.
fn object_round_trip(s: &cryptoki::session::Session, label: &str) {
    let h = s
        .create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Value(SECRET_VALUE.to_vec()),
        ])
        .unwrap();
    let back = s
        .get_attributes(h, &[cryptoki::object::AttributeType::Label])
        .unwrap();
    assert!(
        matches!(&back[..], [Attribute::Label(l)] if l == label.as_bytes()),
        "{back:?}"
    );
    s.destroy_object(h).unwrap();
}

/// Moves the audit directory away and puts a file in its place (root is not stopped by file
/// modes); `restore` undoes it.
struct Outage {
    dir: PathBuf,
    away: PathBuf,
}

impl Outage {
    fn start(t: &Trail) -> Outage {
        let away = t.c.dir().join("audit.away");
        std::fs::rename(&t.dir, &away).unwrap();
        std::fs::write(&t.dir, b"not a directory\n").unwrap();
        Outage {
            dir: t.dir.clone(),
            away,
        }
    }

    fn restore(self) {
        std::fs::remove_file(&self.dir).unwrap();
        std::fs::rename(&self.away, &self.dir).unwrap();
    }
}

#[test]
fn an_unwritable_audit_directory_loses_nothing_and_the_ha_log_says_where() {
    let t = trail(NO_ROTATION);
    let current = t.dir.join(format!("haAudit.{SERIAL}.txt"));
    let in_file =
        |what: &str| std::fs::read_to_string(&current).is_ok_and(|text| text.contains(what));
    let ha_log_has = |what: &str| t.c.ha_log_lines().iter().any(|l| l.contains(what));
    let failed = format!("audit trail write failed: {}: ", current.display());
    let resumed = format!("audit trail written again: {}: ", current.display());
    {
        let ha = t.client();
        let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
        s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        object_round_trip(&s, "before-outage");
        wait_until("the first object's records on disk", || {
            in_file(",before-outage")
        });
        let outage = Outage::start(&t);
        object_round_trip(&s, "during-outage");
        wait_until("the HA log line about the failed write", || {
            ha_log_has(&failed)
        });
        let line =
            t.c.ha_log_lines()
                .into_iter()
                .find(|l| l.contains(&failed))
                .unwrap();
        assert!(line.contains("Not a directory"), "{line}");
        assert!(line.contains(&format!("HA group: {SERIAL}")), "{line}");
        outage.restore();
        // The held records are written by the writer's next try, without a new call.
        wait_until("the held records written", || in_file(",during-outage"));
        wait_until("the HA log line about the file written again", || {
            ha_log_has(&resumed)
        });
        object_round_trip(&s, "after-outage");
        s.logout().unwrap();
    }
    let all = records(&t.files());
    for (i, (f, l, r)) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "{}:{l}: sequence broken", f.display());
    }
    for label in ["before-outage", "during-outage", "after-outage"] {
        let made = all
            .iter()
            .filter(|(_, _, r)| r.op == "C_CreateObject" && r.body.contains(&format!(",{label}")))
            .count();
        assert_eq!(made, 1, "{label}");
    }
    assert!(!all.iter().any(|(_, _, r)| r.op == "AUDIT_RECORDS_LOST"));
    let resumed_line =
        t.c.ha_log_lines()
            .into_iter()
            .find(|l| l.contains(&resumed))
            .unwrap();
    assert!(resumed_line.contains(" 0 lost"), "{resumed_line}");
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());

    // A process that ends while the file cannot be written: its last records are lost, and
    // the next record written says how many; verify reports it.
    {
        let ha = t.client();
        let outage = Outage::start(&t);
        let s = ha.pkcs11.open_rw_session(ha.slot).unwrap();
        drop(s);
        drop(ha);
        outage.restore();
    }
    let lost_line =
        t.c.ha_log_lines()
            .into_iter()
            .find(|l| l.contains("records could not be written to"))
            .expect("the HA log says records were lost");
    assert!(
        lost_line.contains(&current.display().to_string()),
        "{lost_line}"
    );
    let r = t.cli(&["audit", "verify"], true);
    assert!(!r.success(), "{}", r.describe());
    let all = records(&t.files());
    for (i, (f, l, r)) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "{}:{l}: sequence broken", f.display());
    }
    let (f, l, lost) = all
        .iter()
        .find(|(_, _, r)| r.op == "AUDIT_RECORDS_LOST")
        .expect("an AUDIT_RECORDS_LOST record");
    // C_OpenSession, C_CloseSession, C_Finalize.
    let count: u64 = field(lost, "count").unwrap().parse().unwrap();
    assert!(count >= 3, "{}", lost.body);
    assert!(
        r.stdout
            .contains(&format!("FIRST BAD RECORD: {}:{l}:", f.display()))
            && r.stdout.contains("records were lost before this one"),
        "{}",
        r.describe()
    );
}

/// A small tmpfs mounted on a directory for one test, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    /// `None` where this process may not mount (not root, or no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let opts = std::ffi::CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        (rc == 0).then(|| SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; MNT_DETACH also when a file there is still open.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_file_system_leaves_no_torn_record_and_loses_nothing() {
    let mut fs = None;
    let t = trail_prepared(NO_ROTATION, false, Vec::new(), |dir| {
        fs = SmallFs::mount(dir, "128k");
    });
    let Some(_fs) = fs else {
        eprintln!("not run: this process may not mount a tmpfs");
        return;
    };
    let current = t.dir.join(format!("haAudit.{SERIAL}.txt"));
    let failed = format!("audit trail write failed: {}: ", current.display());
    let resumed = format!("audit trail written again: {}: ", current.display());
    let ha_log_has = |what: &str| t.c.ha_log_lines().iter().any(|l| l.contains(what));
    let labels: Vec<String>;
    {
        let ha = t.client();
        let s = ha.session().unwrap();
        object_round_trip(&s, "before-full");
        // Fill the file system (root's reserve does not apply to tmpfs).
        let filler = t.dir.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![b'x'; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
        drop(f);
        // Records go on until one no longer fits in the file's last page: that write is cut
        // short by the file system.
        let mut made = Vec::new();
        for i in 0..400 {
            let label = format!("during-full-{i}");
            object_round_trip(&s, &label);
            made.push(label);
            if ha_log_has(&failed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        labels = made;
        let line =
            t.c.ha_log_lines()
                .into_iter()
                .find(|l| l.contains(&failed))
                .expect("the HA log says the write failed");
        assert!(line.contains("No space left on device"), "{line}");
        // Nothing torn is left in the file meanwhile.
        records(&t.files());
        std::fs::remove_file(&filler).unwrap();
        wait_until("the HA log line about the file written again", || {
            ha_log_has(&resumed)
        });
        object_round_trip(&s, "after-full");
    }
    let all = records(&t.files());
    for (i, (f, l, r)) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64, "{}:{l}: sequence broken", f.display());
    }
    for label in labels
        .iter()
        .map(String::as_str)
        .chain(["before-full", "after-full"])
    {
        let made = all
            .iter()
            .filter(|(_, _, r)| {
                r.op == "C_CreateObject"
                    && r.body.split(' ').any(|w| w.ends_with(&format!(",{label}")))
            })
            .count();
        assert_eq!(made, 1, "{label}");
    }
    assert!(!all.iter().any(|(_, _, r)| r.op == "AUDIT_RECORDS_LOST"));
    let r = t.cli(&["audit", "verify"], true);
    assert!(r.success(), "{}", r.describe());
}
