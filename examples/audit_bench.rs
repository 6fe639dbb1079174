//! Cost of the audit trail (issue 15): `cargo build --release && cargo run --release --example
//! audit_bench [seconds per run]` (default 2).
//!
//! Two SoftHSM members (direct) behind `libp11ha.so`, the application's calls timed on its own
//! thread, in three configurations run in alternation (three rounds, the median printed):
//!
//! - `off`: `haAuditLog = disabled`;
//! - `on`: management events audited (the default when enabled), audit key present, so every
//!   record is MACed by a member off the application's thread;
//! - `on+keyuse`: `haAuditKeyUse = enabled` too (one record per C_SignInit).
//!
//! Workloads: C_SignInit + C_Sign with HMAC-SHA256 (a 32-byte message; one record per call only
//! with key use audited) and C_CreateObject + C_DestroyObject of a session data object (two
//! records per pair). The last column is the direct member (its own SoftHSM copy, no p11ha).
//! "app-thread cost per record" = (time per create+destroy pair on - off) / 2: what a
//! record costs the caller, everything included.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::Session;
use p11ha_testkit::{Cluster, ConfigOpts, MemberClient, GROUP_LABEL, HMAC_ID, USER_PIN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Off,
    On,
    KeyUse,
}

const MODES: [Mode; 3] = [Mode::Off, Mode::On, Mode::KeyUse];

fn name(m: Mode) -> &'static str {
    match m {
        Mode::Off => "off",
        Mode::On => "on",
        Mode::KeyUse => "on+keyuse",
    }
}

fn config(c: &Cluster, audit_dir: &Path, m: Mode) -> PathBuf {
    let mut extra = vec![format!("haAuditPath = {};", audit_dir.display())];
    extra.push(format!(
        "haAuditLog = {};",
        if m == Mode::Off {
            "disabled"
        } else {
            "enabled"
        }
    ));
    if m == Mode::KeyUse {
        extra.push("haAuditKeyUse = enabled;".into());
    }
    c.write_config(&ConfigOpts {
        direct: true,
        group_serial: Some("77099".into()),
        extra_ha_lines: extra,
        file_name: format!("{}.conf", name(m)),
        ..Default::default()
    })
}

/// CPU time of the calling thread, in microseconds.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

/// Runs `op` for `secs`: calls per second (wall clock), and the application thread's own CPU
/// microseconds per call (what p11ha does on it; member calls run on p11ha's worker threads, the
/// audit writer on its own, so other processes' load hardly moves this number).
fn rate(secs: f64, mut op: impl FnMut()) -> (f64, f64) {
    let t = Instant::now();
    let cpu = thread_cpu_us();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        op();
        n += 1;
    }
    let cpu = (thread_cpu_us() - cpu) / n as f64;
    (n as f64 / t.elapsed().as_secs_f64(), cpu)
}

fn sign_rate(s: &Session, secs: f64) -> (f64, f64) {
    let key = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(vec![HMAC_ID]),
        ])
        .unwrap()[0];
    let msg = [7u8; 32];
    rate(secs, || {
        s.sign(&Mechanism::Sha256Hmac, key, &msg).unwrap();
    })
}

fn manage_rate(s: &Session, secs: f64) -> (f64, f64) {
    rate(secs, || {
        let h = s
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Label(b"bench".to_vec()),
                Attribute::Value(vec![1, 2, 3]),
            ])
            .unwrap();
        s.destroy_object(h).unwrap();
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let exe_dir = std::env::current_exe().unwrap();
    let release = exe_dir.parent().unwrap().parent().unwrap();
    let p11ha_bin = release.join("p11ha");
    let lib = release.join("libp11ha.so");
    assert!(
        p11ha_bin.exists() && lib.exists(),
        "build first: cargo build --release"
    );
    let c = Cluster::new(2);
    let audit_dir = c.dir().join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    let confs: Vec<PathBuf> = MODES.iter().map(|&m| config(&c, &audit_dir, m)).collect();
    let out = Command::new(&p11ha_bin)
        .args(["audit", "init-key", "-group", GROUP_LABEL])
        .env("P11HA_CONF", &confs[1])
        .env("P11HA_PIN", USER_PIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let mut sign = vec![Vec::new(); 3];
    let mut manage = vec![Vec::new(); 3];
    for _round in 0..3 {
        for (i, conf) in confs.iter().enumerate() {
            let ha = MemberClient::open(
                &lib,
                GROUP_LABEL,
                &[("P11HA_CONF", Some(conf.to_str().unwrap()))],
            )
            .unwrap();
            let s = ha.session().unwrap();
            sign[i].push(sign_rate(&s, secs));
            manage[i].push(manage_rate(&s, secs));
            drop(s);
            // C_Finalize: waits for the writer, outside the timed part.
            drop(ha);
        }
    }
    let direct = c.direct_client(0);
    let ds = direct.session().unwrap();
    let d_sign = sign_rate(&ds, secs);
    let d_manage = manage_rate(&ds, secs);
    drop(ds);
    drop(direct);

    let split = |v: Vec<Vec<(f64, f64)>>| -> (Vec<f64>, Vec<f64>) {
        v.into_iter()
            .map(|r| {
                (
                    median(r.iter().map(|x| x.0).collect()),
                    median(r.iter().map(|x| x.1).collect()),
                )
            })
            .unzip()
    };
    let (sign, sign_cpu) = split(sign);
    let (manage, manage_cpu) = split(manage);
    let (d_sign, d_sign_cpu) = d_sign;
    let (d_manage, d_manage_cpu) = d_manage;
    println!("audit_bench: 2 direct SoftHSM members, {secs} s per run, median of 3 rounds\n");
    println!("| workload | audit off | audit on | on vs off | on+keyuse | keyuse vs off | direct member |");
    println!("|---|---|---|---|---|---|---|");
    let pct = |a: f64, b: f64| (a / b - 1.0) * 100.0;
    println!(
        "| HMAC sign (C_SignInit+C_Sign) ops/s | {:.0} | {:.0} | {:+.1} % | {:.0} | {:+.1} % | {:.0} |",
        sign[0],
        sign[1],
        pct(sign[1], sign[0]),
        sign[2],
        pct(sign[2], sign[0]),
        d_sign
    );
    println!(
        "| create+destroy pairs/s | {:.0} | {:.0} | {:+.1} % | {:.0} | {:+.1} % | {:.0} |",
        manage[0],
        manage[1],
        pct(manage[1], manage[0]),
        manage[2],
        pct(manage[2], manage[0]),
        d_manage
    );
    println!(
        "| app-thread CPU us per sign | {:.2} | {:.2} | | {:.2} | | {:.2} |",
        sign_cpu[0], sign_cpu[1], sign_cpu[2], d_sign_cpu
    );
    println!(
        "| app-thread CPU us per pair | {:.2} | {:.2} | | {:.2} | | {:.2} |",
        manage_cpu[0], manage_cpu[1], manage_cpu[2], d_manage_cpu
    );
    let per_record_us = (manage_cpu[1] - manage_cpu[0]) / 2.0;
    let key_use_us = sign_cpu[2] - sign_cpu[0];
    let wall_us = (1.0 / manage[1] - 1.0 / manage[0]) / 2.0 * 1e6;
    println!(
        "\naudit record cost on the application's thread (CPU): {per_record_us:.2} us per \
         management record, {key_use_us:.2} us per key-use record; wall clock per management \
         record (writer and MACs competing for the cores): {wall_us:.1} us"
    );
    // The record alone, on the caller's thread: what a hook does (time, thread id, the event's
    // fields, the hand-over to the writer), N in a row, the writer draining meanwhile.
    let cfg = p11ha::config::load(&confs[1]).unwrap();
    let audit = p11ha::audit::Audit::open(&cfg, "77099", &p11ha::halog::HaLog::disabled());
    let object = p11ha::audit::ObjectId {
        class: Some(0),
        key_type: None,
        id: Some(vec![1, 2]),
        label: Some(b"bench".to_vec()),
    };
    let mut per = Vec::new();
    for _ in 0..5 {
        let n = 5_000;
        let t = Instant::now();
        for _ in 0..n {
            audit.record_event(
                p11ha::audit::Op::CreateObject,
                0,
                0x1234_5678,
                p11ha::audit::Event::Object {
                    objects: vec![("object", object.clone())],
                    attributes: vec![0, 3, 0x11],
                    mechanism: None,
                    key: None,
                },
            );
        }
        per.push(t.elapsed().as_secs_f64() * 1e6 / n as f64);
        audit.flush();
    }
    println!(
        "one management record handed over on the caller's thread: {:.2} us (median of 5 x 5000; \
         {} lost at a full queue)",
        median(per),
        audit.dropped_pending()
    );
    drop(audit);
    let files = std::fs::read_dir(&audit_dir).unwrap().count();
    println!("({files} files in the audit directory)");
}
