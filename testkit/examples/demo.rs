//! p11ha demo: an application keeps signing while one HSM dies and comes back.
//!
//! Run with `scripts/demo.sh` (or `cargo build --release && cargo run --release -p p11ha-testkit
//! --example demo`).
//!
//! 1. Three SoftHSM tokens m0, m1, m2 in a temporary directory under /tmp, each with the same
//!    keys (the demo signs with the RSA-2048 one, CKA_ID 01), each served by its own `p11-kit
//!    server` process (in its own process group) on a Unix socket: three "network HSMs". The
//!    test kit (testkit/) sets them up exactly as it does for the integration tests.
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
use p11ha_testkit::{p11ha_lib, Cluster, ConfigOpts, Member, MemberState, StatusApi, USER_PIN};
use std::os::raw::c_ulong;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
    match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
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
    // Dropped on the way out (also on panic): kills every server by process group, then
    // removes the directory.
    let cluster = Cluster::new(MEMBERS);
    println!("== p11ha demo in {}", cluster.dir().display());
    let members = &cluster.members;
    for m in members {
        check_interrupted()?;
        cluster.start_server(m.index);
        println!(
            "   member {} serial {} served by p11-kit server on {}",
            m.label,
            m.serial,
            m.sock.display()
        );
    }
    check_interrupted()?;
    let conf = cluster.write_config(&ConfigOpts {
        label: GROUP.into(),
        ..Default::default()
    });
    let ha_log = cluster.ha_log_path();
    println!("   configuration {}", conf.display());
    let labels: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.serial.clone(), m.label.clone()))
        .collect();

    // The application: load libp11ha.so like any PKCS#11 module.
    let lib = p11ha_lib();
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
    let result = exercise(&pkcs11, &lib, &cluster, &labels, t_setup);
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
    cluster: &Cluster,
    labels: &[(String, String)],
    t_setup: Instant,
) -> Res<Outcome> {
    let members: &[Member] = &cluster.members;
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
                cluster.kill(VICTIM);
                killed_at = Some(t0.elapsed());
                println!(
                    "   t={:5.2}s  SIGKILL to {}'s p11-kit server (process group)",
                    t0.elapsed().as_secs_f64(),
                    victim.label
                );
                phase = Phase::Killed;
            }
            Phase::Killed if t >= BEFORE_KILL + DOWN_FOR => {
                cluster.start_server(VICTIM);
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
