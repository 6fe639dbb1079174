//! p11ha demo: an application keeps signing while one HSM dies and comes back.
//!
//! Run with `scripts/demo.sh` (or `cargo build --release && cargo run --release --example demo`).
//!
//! 1. Three SoftHSM tokens m0, m1, m2 in a temporary directory under /tmp, each with the same
//!    RSA-2048 key (CKA_ID 01), each served by its own `p11-kit server` process (in its own
//!    process group) on a Unix socket: three "network HSMs".
//! 2. A Chrystoki.conf grouping them into one HA group, members reached through p11-kit-client.
//! 3. `target/release/libp11ha.so` loaded through the cryptoki crate, like any application would.
//!    Two threads sign with CKM_SHA256_RSA_PKCS as fast as they can.
//! 4. The demo SIGKILLs m1's server, restarts it a few seconds later, and watches p11ha drop and
//!    recover the member (`p11ha_group_status`, the status API of include/p11ha.h), printing a
//!    status line per second, then the HA log and a summary.
//!
//! Exit status 0 only if every signature succeeded and the member was dropped and recovered
//! within 10 s of its restart. Every process started here is killed by process group on the
//! way out (also on panic) and the temporary directory is removed.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use p11ha::ffi::ca::P11haGroupStatus;
use std::ffi::CStr;
use std::fmt::Write as _;
use std::os::raw::c_ulong;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
const P11KIT_CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
const PIN: &str = "1234";
const SO_PIN: &str = "12345678";
const GROUP: &str = "demo";
const MEMBERS: usize = 3;
const VICTIM: usize = 1;
const THREADS: usize = 2;
/// Signing before the kill, while the member is down, and after it is back.
const BEFORE_KILL: Duration = Duration::from_secs(3);
const DOWN_FOR: Duration = Duration::from_secs(3);
const AFTER_RECOVERY: Duration = Duration::from_secs(3);
/// The member must be back this long after its server restarted.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

/// Set by SIGINT/SIGTERM: the demo stops and cleans up instead of dying with servers left over
/// (they run in their own process groups, so a Ctrl-C does not reach them).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Res<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn main() -> ExitCode {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    // Everything that needs cleaning up lives inside run(): its destructors run on return and
    // on panic, before the process exits.
    match std::panic::catch_unwind(run) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::FAILURE,
        Ok(Err(e)) => {
            eprintln!("demo: error: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo: panicked (processes and temporary files were cleaned up)");
            ExitCode::FAILURE
        }
    }
}

// ---- processes ------------------------------------------------------------------------------

/// Every `p11-kit server` the demo started, each the leader of its own process group. Dropping
/// it SIGKILLs each group (the server and its per-connection `p11-kit-remote` children).
#[derive(Default)]
struct Servers(Mutex<Vec<Option<Child>>>);

impl Servers {
    fn start(&self, m: &Member) -> Res<()> {
        let _ = std::fs::remove_file(&m.sock);
        let log = std::fs::File::create(m.dir.join("server.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new("p11-kit")
            .args(["server", "-f", "--provider", SOFTHSM, "-n"])
            .arg(&m.sock)
            .arg(format!("pkcs11:token={}", m.label))
            .env("SOFTHSM2_CONF", &m.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start p11-kit server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if UnixStream::connect(&m.sock).is_ok() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(m.dir.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "p11-kit server for {} exited ({st}): {log}",
                    m.label
                ));
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                return Err(format!("p11-kit server for {} not ready in 10 s", m.label));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() <= m.index {
            all.resize_with(m.index + 1, || None);
        }
        all[m.index] = Some(child);
        Ok(())
    }

    fn kill(&self, index: usize) {
        let child = self.0.lock().unwrap_or_else(|p| p.into_inner())[index].take();
        if let Some(mut c) = child {
            kill_group(&mut c);
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let all = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for mut c in all.into_iter().flatten() {
            kill_group(&mut c);
        }
    }
}

/// SIGKILL a child's process group (its PID is the PGID) and wait, bounded, until it is empty.
fn kill_group(child: &mut Child) {
    let pgid = child.id() as i32;
    if pgid <= 1 {
        return;
    }
    // SAFETY: plain syscall; the negative PID names the process group we created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any live (non-zombie) process is in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Some(stat) = e
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        else {
            return false;
        };
        // pid (comm) state ppid pgrp ...; comm may contain spaces.
        let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X"
    })
}

fn run_cmd(what: &str, cmd: &mut Command) -> Res<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- tokens and configuration ---------------------------------------------------------------

struct Member {
    index: usize,
    label: String,
    serial: String,
    dir: PathBuf,
    conf: PathBuf,
    sock: PathBuf,
}

/// Creates token m<i> with its own SOFTHSM2_CONF and imports the shared RSA key pair.
fn provision(root: &Path, i: usize, key_der: &Path, pub_der: &Path) -> Res<Member> {
    let label = format!("m{i}");
    let dir = root.join(&label);
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let util = |args: &[&str]| {
        run_cmd(
            "softhsm2-util",
            Command::new("softhsm2-util")
                .args(args)
                .env("SOFTHSM2_CONF", &conf),
        )
    };
    util(&[
        "--init-token",
        "--free",
        "--label",
        &label,
        "--so-pin",
        SO_PIN,
        "--pin",
        PIN,
    ])?;
    let serial = serial_of(&util(&["--show-slots"])?, &label)
        .ok_or_else(|| format!("no serial for token {label}"))?;
    for (file, ty, usage) in [
        (
            key_der,
            "privkey",
            &["--usage-sign", "--private", "--sensitive"][..],
        ),
        (pub_der, "pubkey", &[][..]),
    ] {
        run_cmd(
            "pkcs11-tool --write-object",
            Command::new("pkcs11-tool")
                .args(["--module", SOFTHSM, "--token-label", &label])
                .args(["--login", "--pin", PIN, "--write-object"])
                .arg(file)
                .args(["--type", ty, "--id", "01", "--label", "rsa"])
                .args(usage)
                .env("SOFTHSM2_CONF", &conf),
        )?;
    }
    Ok(Member {
        index: i,
        sock: dir.join(format!("{label}.sock")),
        label,
        serial,
        dir,
        conf,
    })
}

/// Serial of the token labelled `label` in `softhsm2-util --show-slots` output.
fn serial_of(out: &str, label: &str) -> Option<String> {
    let mut serial = None;
    for l in out.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Serial number:") {
            serial = Some(v.trim().to_string());
        } else if l.strip_prefix("Label:").map(str::trim) == Some(label) {
            return serial.filter(|s| !s.is_empty());
        }
    }
    None
}

/// The Chrystoki.conf of the demo group (same layout as config/Chrystoki.conf).
fn write_config(root: &Path, members: &[Member]) -> Res<(PathBuf, PathBuf)> {
    let log_dir = root.join("log");
    std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
    let serials: Vec<&str> = members.iter().map(|m| m.serial.as_str()).collect();
    let mut s = String::new();
    let _ = writeln!(s, "VirtualToken = {{");
    let _ = writeln!(s, "   VirtualToken00Label = {GROUP};");
    let _ = writeln!(s, "   VirtualToken00Members = {};", serials.join(", "));
    let _ = writeln!(s, "   VirtualTokenActiveRecovery = activeEnhanced;");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "HAConfiguration = {{");
    let _ = writeln!(s, "   HAOnly = 1;");
    let _ = writeln!(s, "   haLogPath = {};", log_dir.display());
    let _ = writeln!(s, "   haLogStatus = enabled;");
    let _ = writeln!(s, "   reconnAtt = -1;");
    let _ = writeln!(s, "   AutoReconnectInterval = 1;");
    let _ = writeln!(s, "   ReceiveTimeout = 2000;");
    let _ = writeln!(s, "   ConnectTimeout = 2000;");
    let _ = writeln!(s, "}}");
    let _ = writeln!(s, "HAProviders = {{");
    for (n, m) in members.iter().enumerate() {
        let _ = writeln!(s, "   Provider{n:02}Library = {P11KIT_CLIENT};");
        let _ = writeln!(
            s,
            "   Provider{n:02}Env = P11_KIT_SERVER_ADDRESS=unix:path={};",
            m.sock.display()
        );
    }
    let _ = writeln!(s, "}}");
    let path = root.join("Chrystoki.conf");
    std::fs::write(&path, s).map_err(|e| e.to_string())?;
    Ok((path, log_dir.join("haErrorLog.txt")))
}

// ---- the status API -------------------------------------------------------------------------

type GroupStatusFn = unsafe extern "C" fn(c_ulong, *mut P11haGroupStatus) -> c_ulong;

/// `p11ha_group_status` from the same libp11ha.so the application loaded (dlopen of the same
/// path returns the same, already initialized, library).
struct StatusApi {
    f: GroupStatusFn,
    _lib: libloading::Library,
}

#[derive(Clone, Debug)]
struct MemberState {
    serial: String,
    alive: bool,
    last_error: c_ulong,
    in_flight: c_ulong,
}

impl StatusApi {
    fn load(path: &Path) -> Res<Self> {
        // SAFETY: the library is already loaded and initialized by cryptoki; this only adds a
        // reference and looks up a symbol whose signature include/p11ha.h declares.
        unsafe {
            let lib = libloading::Library::new(path).map_err(|e| e.to_string())?;
            let f = *lib
                .get::<GroupStatusFn>(b"p11ha_group_status\0")
                .map_err(|e| e.to_string())?;
            Ok(StatusApi { f, _lib: lib })
        }
    }

    fn members(&self, slot: c_ulong) -> Res<Vec<MemberState>> {
        // SAFETY: all-zero is a valid P11haGroupStatus (integers and byte arrays).
        let mut st: Box<P11haGroupStatus> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `st` is a writable P11haGroupStatus.
        let rv = unsafe { (self.f)(slot, &mut *st) };
        if rv != 0 {
            return Err(format!("p11ha_group_status returned 0x{rv:x}"));
        }
        let n = usize::try_from(st.member_count).unwrap_or(0);
        Ok(st.members[..n.min(st.members.len())]
            .iter()
            .map(|m| MemberState {
                // SAFETY: p11ha NUL-terminates the field (its last byte is always NUL).
                serial: unsafe { CStr::from_ptr(m.serial.as_ptr()) }
                    .to_string_lossy()
                    .into_owned(),
                alive: m.alive != 0,
                last_error: m.last_error,
                in_flight: m.in_flight,
            })
            .collect())
    }
}

// ---- the application ------------------------------------------------------------------------

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// One signing thread: its own session, CKM_SHA256_RSA_PKCS with the group's key, until `stop`.
fn signer(
    pkcs11: Pkcs11,
    slot: cryptoki::slot::Slot,
    id: usize,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) -> Res<()> {
    let s = pkcs11.open_ro_session(slot).map_err(|e| e.to_string())?;
    match s.login(UserType::User, Some(&AuthPin::new(PIN.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(format!("login: {e}")),
    }
    let find = |class| {
        s.find_objects(&[Attribute::Class(class), Attribute::Id(vec![1])])
            .map_err(|e| e.to_string())?
            .first()
            .copied()
            .ok_or_else(|| "RSA key (id 01) not found".to_string())
    };
    let key = find(ObjectClass::PRIVATE_KEY)?;
    let public = find(ObjectClass::PUBLIC_KEY)?;
    let mut n = 0u64;
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let data = format!("thread {id} message {n}");
        match s.sign(&Mechanism::Sha256RsaPkcs, key, data.as_bytes()) {
            Ok(sig) => {
                c.ok.fetch_add(1, Ordering::Relaxed);
                last = Some((data, sig));
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = c.errors.lock().unwrap_or_else(|p| p.into_inner());
                if errs.len() < 20 {
                    errs.push(format!("thread {id}, signature {n}: {e}"));
                }
            }
        }
    }
    // The group's public key verifies what the group signed (whichever member signed it).
    if let Some((data, sig)) = last {
        s.verify(&Mechanism::Sha256RsaPkcs, public, data.as_bytes(), &sig)
            .map_err(|e| format!("verify of the last signature: {e}"))?;
    }
    Ok(())
}

fn states_line(states: &[MemberState], labels: &[(String, String)]) -> String {
    states
        .iter()
        .map(|m| {
            let name = labels
                .iter()
                .find(|(serial, _)| *serial == m.serial)
                .map_or(m.serial.as_str(), |(_, l)| l.as_str());
            if m.alive {
                format!("{name} up({} busy)", m.in_flight)
            } else {
                format!("{name} DOWN(0x{:x})", m.last_error)
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
}

fn run() -> Res<bool> {
    let t_setup = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("p11ha-demo-")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temporary directory: {e}"))?;
    // Declared after `tmp`, so dropped before it: servers die, then the directory goes.
    let servers = Servers::default();
    let root = tmp.path();
    println!("== p11ha demo in {}", root.display());

    // One RSA key, imported into every member.
    let key_pem = root.join("key.pem");
    let (key_der, pub_der) = (root.join("key.der"), root.join("pub.der"));
    run_cmd(
        "openssl genpkey",
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
            .args(["rsa_keygen_bits:2048", "-out"])
            .arg(&key_pem),
    )?;
    run_cmd(
        "openssl pkey",
        Command::new("openssl")
            .args(["pkey", "-outform", "DER", "-in"])
            .arg(&key_pem)
            .arg("-out")
            .arg(&key_der),
    )?;
    run_cmd(
        "openssl pkey -pubout",
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&key_pem)
            .arg("-out")
            .arg(&pub_der),
    )?;

    let members: Vec<Member> = thread::scope(|sc| {
        let hs: Vec<_> = (0..MEMBERS)
            .map(|i| {
                let (k, p) = (&key_der, &pub_der);
                sc.spawn(move || provision(root, i, k, p))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("provisioning panicked".into()))
            })
            .collect::<Res<Vec<_>>>()
    })?;
    for m in &members {
        check_interrupted()?;
        if m.sock.as_os_str().len() > 100 {
            return Err(format!("socket path too long: {}", m.sock.display()));
        }
        servers.start(m)?;
        println!(
            "   member {} serial {} served by p11-kit server on {}",
            m.label,
            m.serial,
            m.sock.display()
        );
    }
    check_interrupted()?;
    let (conf, ha_log) = write_config(root, &members)?;
    println!("   configuration {}", conf.display());
    let labels: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.serial.clone(), m.label.clone()))
        .collect();

    // The application: load libp11ha.so like any PKCS#11 module.
    let lib = std::env::var_os("P11HA_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/examples/demo -> target/<profile>/libp11ha.so
            let exe = std::env::current_exe().unwrap_or_default();
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("libp11ha.so"))
                .unwrap_or_default()
        });
    if !lib.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release` first",
            lib.display()
        ));
    }
    std::env::set_var("P11HA_CONF", &conf);
    let pkcs11 = Pkcs11::new(&lib).map_err(|e| format!("load {}: {e}", lib.display()))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {e}"))?;
    let result = exercise(&pkcs11, &lib, &servers, &members, &labels, t_setup);
    let _ = pkcs11.finalize(); // flushes the HA log
    let mut outcome = result?;

    println!("\n== HA log ({})", ha_log.display());
    let log = std::fs::read_to_string(&ha_log).unwrap_or_default();
    for l in log.lines() {
        println!("   {l}");
    }
    let victim = &members[VICTIM].serial;
    for (what, needle) in [
        ("drop", format!("has dropped member: {victim}")),
        ("recovery", format!("succeeded for member: {victim}")),
    ] {
        if !log.contains(&needle) {
            outcome.pass = false;
            outcome
                .errors
                .push(format!("no HA log line for the {what}: '{needle}'"));
        }
    }
    println!("\n== summary");
    println!("   {}", outcome.summary);
    for e in &outcome.errors {
        println!("   error: {e}");
    }
    println!(
        "   {}",
        if outcome.pass {
            "PASS: no signature failed and the member was recovered"
        } else {
            "FAIL"
        }
    );
    Ok(outcome.pass)
}

struct Outcome {
    pass: bool,
    summary: String,
    errors: Vec<String>,
}

fn exercise(
    pkcs11: &Pkcs11,
    lib: &Path,
    servers: &Servers,
    members: &[Member],
    labels: &[(String, String)],
    t_setup: Instant,
) -> Res<Outcome> {
    let slot = pkcs11
        .get_slots_with_token()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).is_ok_and(|t| t.label() == GROUP))
        .ok_or("the HA token is not listed")?;
    let info = pkcs11.get_token_info(slot).map_err(|e| e.to_string())?;
    let status = StatusApi::load(lib)?;
    let slot_id = c_ulong::try_from(slot.id()).map_err(|e| e.to_string())?;
    println!(
        "   HA token '{}' serial {} in slot {} ({} members; setup took {:.1}s)",
        info.label(),
        info.serial_number(),
        slot.id(),
        members.len(),
        t_setup.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    println!(
        "\n== {THREADS} threads sign continuously; {} will be killed after {}s and restarted {}s later",
        members[VICTIM].label,
        BEFORE_KILL.as_secs(),
        DOWN_FOR.as_secs()
    );
    let t0 = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (p, stop, c) = (pkcs11.clone(), stop.clone(), counters.clone());
            thread::spawn(move || signer(p, slot, id, stop, c))
        })
        .collect();

    #[derive(PartialEq)]
    enum Phase {
        Running,
        Killed,
        Restarted,
        Recovered,
    }
    let mut phase = Phase::Running;
    let victim = &members[VICTIM];
    let (mut killed_at, mut dropped_at, mut restarted_at, mut recovered_at) =
        (None, None, None, None);
    let mut next_line = Duration::from_secs(1);
    let mut last_ok = 0;
    let mut failure = None;
    loop {
        thread::sleep(Duration::from_millis(25));
        if INTERRUPTED.load(Ordering::SeqCst) {
            failure = Some("interrupted".to_string());
            break;
        }
        let t = t0.elapsed();
        let states = status.members(slot_id)?;
        let victim_up = states
            .iter()
            .find(|m| m.serial == victim.serial)
            .is_some_and(|m| m.alive);
        if t >= next_line {
            let ok = counters.ok.load(Ordering::Relaxed);
            println!(
                "   t={:5.2}s  signatures ok {:6} (+{:4}/s)  failed {}  |  {}",
                t.as_secs_f64(),
                ok,
                ok - last_ok,
                counters.failed.load(Ordering::Relaxed),
                states_line(&states, labels)
            );
            last_ok = ok;
            next_line += Duration::from_secs(1);
        }
        if !victim_up && dropped_at.is_none() && killed_at.is_some() {
            dropped_at = Some(t);
            println!(
                "   t={:5.2}s  p11ha dropped {} (status API)",
                t.as_secs_f64(),
                victim.label
            );
        }
        match phase {
            Phase::Running if t >= BEFORE_KILL => {
                servers.kill(VICTIM);
                killed_at = Some(t0.elapsed());
                println!(
                    "   t={:5.2}s  SIGKILL to {}'s p11-kit server (process group)",
                    t0.elapsed().as_secs_f64(),
                    victim.label
                );
                phase = Phase::Killed;
            }
            Phase::Killed if t >= BEFORE_KILL + DOWN_FOR => {
                servers.start(victim)?;
                restarted_at = Some(t0.elapsed());
                println!(
                    "   t={:5.2}s  {}'s p11-kit server restarted",
                    t0.elapsed().as_secs_f64(),
                    victim.label
                );
                phase = Phase::Restarted;
            }
            Phase::Restarted if victim_up && dropped_at.is_some() => {
                recovered_at = Some(t);
                println!(
                    "   t={:5.2}s  p11ha recovered {} (status API)",
                    t.as_secs_f64(),
                    victim.label
                );
                phase = Phase::Recovered;
            }
            Phase::Restarted if t >= restarted_at.unwrap_or(t) + RECOVERY_LIMIT => {
                failure = Some(format!(
                    "{} not recovered within {}s of its restart",
                    victim.label,
                    RECOVERY_LIMIT.as_secs()
                ));
                break;
            }
            Phase::Recovered if t >= recovered_at.unwrap_or(t) + AFTER_RECOVERY => break,
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a signing thread panicked".into()),
        }
    }
    errors.extend(
        counters
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned(),
    );
    errors.extend(failure);
    if dropped_at.is_none() {
        errors.push(format!("p11ha never dropped {}", victim.label));
    }
    let (ok, failed) = (
        counters.ok.load(Ordering::Relaxed),
        counters.failed.load(Ordering::Relaxed),
    );
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2}s", d.as_secs_f64()));
    let summary = format!(
        "{ok} signatures, {failed} failed, member {} killed at t={}, dropped at t={}, restarted at t={}, recovered at t={}",
        victim.label,
        secs(killed_at),
        secs(dropped_at),
        secs(restarted_at),
        secs(recovered_at),
    );
    let pass = errors.is_empty() && failed == 0 && recovered_at.is_some() && ok > 0;
    Ok(Outcome {
        pass,
        summary,
        errors,
    })
}
