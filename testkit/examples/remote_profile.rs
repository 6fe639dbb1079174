//! Where the time of one remote signature goes (issue 17): one member behind `p11-kit server`,
//! one application thread signing ECDSA P-256, through p11ha and through p11-kit-client alone,
//! each in its own process, so that `perf` can record each separately.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/remote_profile 5                  # both, 5 s each: ops/s, CPU per op
//! P11HA_PROFILE_PERF=record target/release/examples/remote_profile 5
//!                                                            # the same under `perf record -g`,
//!                                                            # reports in the printed directory
//!                                                            # (P11HA_PROFILE_CALLGRAPH=dwarf:
//!                                                            # call graphs through libc)
//! P11HA_PROFILE_PERF=stat target/release/examples/remote_profile 5
//!                                                            # under `perf stat`: context switches
//! P11HA_PROFILE_INPROCESS=1 P11HA_PROFILE_OP=random target/release/examples/remote_profile 5
//!                                                            # the member loaded in-process (a
//!                                                            # SoftHSM copy), C_GenerateRandom(32)
//!                                                            # (P11HA_PROFILE_UNBOUNDED=1: with
//!                                                            # ProviderNNBoundedCalls = 0)
//! ```

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use p11ha_testkit::{
    p11ha_lib, Cluster, ConfigOpts, MemberClient, AES_ID, EC_ID, GROUP_LABEL, HMAC_ID,
};
use std::process::Command;
use std::time::Instant;

fn cpu_s() -> f64 {
    // SAFETY: getrusage fills one struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF covers every thread of the process.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// In the child: sign (or, with `P11HA_PROFILE_OP=random`, draw 32 random bytes; `hmac`:
/// HMAC-SHA256 over 32 bytes; `digest`: SHA-256 of them; `gcm`: AES-256-GCM of 1 KiB) for `secs`
/// through `client`, print ops/s and CPU µs per op.
fn sign_for(client: MemberClient, secs: f64) {
    let s = client.session().expect("session");
    let key = client
        .find(&s, ObjectClass::PRIVATE_KEY, EC_ID)
        .expect("EC key");
    let op = std::env::var("P11HA_PROFILE_OP").unwrap_or_default();
    let hmac = client
        .find(&s, ObjectClass::SECRET_KEY, HMAC_ID)
        .expect("HMAC key");
    let aes = client
        .find(&s, ObjectClass::SECRET_KEY, AES_ID)
        .expect("AES key");
    let data = [7u8; 32];
    let plain = [7u8; 1024];
    let mut iv = [7u8; 12];
    let mut buf = [0u8; 32];
    let (t, c0) = (Instant::now(), cpu_s());
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        if op == "random" {
            s.generate_random_slice(&mut buf).expect("random");
        } else if op == "digest" {
            s.digest(&Mechanism::Sha256, &data).expect("digest");
        } else if op == "gcm" {
            let gcm = GcmParams::new(&mut iv, &[], 128.into()).expect("GCM parameters");
            s.encrypt(&Mechanism::AesGcm(gcm), aes, &plain)
                .expect("AES-GCM");
        } else if op == "hmac" {
            s.sign(&Mechanism::Sha256Hmac, hmac, &data).expect("HMAC");
        } else {
            s.sign(&Mechanism::Ecdsa, key, &data).expect("sign");
        }
        n += 1;
    }
    let wall = t.elapsed().as_secs_f64();
    println!(
        "{:.0} ops/s, CPU {:.1} µs per op",
        n as f64 / wall,
        (cpu_s() - c0) * 1e6 / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5.0);
    match args.get(2).map(String::as_str) {
        Some("direct") => {
            let c = MemberClient::via_p11kit(&args[3], &args[4]).expect("p11-kit-client");
            return sign_for(c, secs);
        }
        Some("softhsm") => {
            let c = MemberClient::via_softhsm(args[3].as_ref(), args[4].as_ref(), &args[5])
                .expect("SoftHSM");
            return sign_for(c, secs);
        }
        Some("p11ha") => {
            let env = [("P11HA_CONF", Some(args[3].as_str()))];
            let c = MemberClient::open(&p11ha_lib(), GROUP_LABEL, &env).expect("p11ha");
            return sign_for(c, secs);
        }
        _ => {}
    }
    let inprocess = std::env::var_os("P11HA_PROFILE_INPROCESS").is_some();
    let w = Cluster::new(1);
    if !inprocess {
        w.start_server(0);
    }
    let conf = w.write_config(&ConfigOpts {
        members: Some(vec![0]),
        direct: inprocess,
        unbounded_calls: std::env::var_os("P11HA_PROFILE_UNBOUNDED").is_some(),
        ..Default::default()
    });
    let perf = std::env::var("P11HA_PROFILE_PERF").ok();
    if perf.as_deref() == Some("record") {
        w.keep_dir();
    }
    let me = std::env::current_exe().expect("own path");
    let m = &w.members[0];
    let direct = if inprocess {
        vec![
            "softhsm".to_string(),
            w.softhsm_copy(0).display().to_string(),
            m.conf.display().to_string(),
            m.label.clone(),
        ]
    } else {
        vec!["direct".to_string(), m.address(), m.label.clone()]
    };
    let runs = [
        ("direct", direct),
        (
            "p11ha",
            vec!["p11ha".to_string(), conf.display().to_string()],
        ),
    ];
    for (name, child) in runs {
        let mut cmd = match perf.as_deref() {
            Some("record") => {
                let mut c = Command::new("perf");
                let out = w.dir().join(format!("perf-{name}.data"));
                // P11HA_PROFILE_CALLGRAPH=dwarf: call graphs through libc and the modules,
                // which have no frame pointers (malloc's callers).
                let graph = std::env::var("P11HA_PROFILE_CALLGRAPH").unwrap_or("fp".into());
                c.args(["record", "-q", "--call-graph", &graph, "-o"])
                    .arg(out)
                    .arg(&me);
                c
            }
            Some("stat") => {
                let mut c = Command::new("perf");
                c.args(["stat", "-e", "task-clock,context-switches,cpu-migrations"])
                    .arg(&me);
                c
            }
            _ => Command::new(&me),
        };
        let out = cmd
            .arg(secs.to_string())
            .args(&child)
            .output()
            .expect("child");
        print!("{name}: {}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    if perf.as_deref() == Some("record") {
        println!(
            "perf data: {}/perf-{{direct,p11ha}}.data",
            w.dir().display()
        );
    }
}
