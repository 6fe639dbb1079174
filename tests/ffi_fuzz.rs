//! Hostile but legal calls through p11ha's C ABI, from a plain C application
//! (tests/c/ffi_fuzz.c, which says what is legal to pass and why): absurd lengths, and seeded
//! random calls with random handles, lengths and NULL or real pointers, on a 3-member group in
//! every set-up. Each must give a CK_RV: the application is not aborted, no panic message
//! reaches stderr, and no member is dropped for the caller's error (the HA log has no drop, and
//! `p11ha_group_status` in that process shows every member alive at the end).
//!
//! By hand: `P11HA_FUZZ_SEED` (default: from the clock, printed) and `P11HA_FUZZ_CALLS`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

in_every_setup!(
    absurd_lengths_give_a_ck_rv_and_what_softhsm_answers,
    absurd_mechanism_parameters_are_refused_unread,
    odd_answers_to_a_callers_call_take_no_member_down,
    random_calls_never_abort_panic_or_drop_a_member,
);

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The fuzzer against p11ha with the group's configuration.
fn through_p11ha(exe: &Path, g: &Group, args: &[&str]) -> ClientRun {
    let mut cmd = Command::new(exe);
    cmd.arg("-m")
        .arg(p11ha_lib())
        .args(["-t", GROUP_LABEL])
        .args(args)
        .env("P11HA_CONF", &g.conf);
    run_cmd(cmd, RUN_TIMEOUT)
}

/// The fuzzer against member 0's token with SoftHSM loaded directly.
fn through_softhsm(exe: &Path, g: &Group, args: &[&str]) -> ClientRun {
    let m = &g.members[0];
    let mut cmd = Command::new(exe);
    cmd.args(["-m", SOFTHSM_LIB, "-t", &m.label])
        .args(args)
        .env("SOFTHSM2_CONF", &m.conf);
    run_cmd(cmd, RUN_TIMEOUT)
}

fn fuzzer(g: &Group) -> PathBuf {
    build_c_program("ffi_fuzz", g.dir())
}

/// The last lines of a run's output (the call that aborted is the last one started).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The run ended by itself, printed no panic, and left every member of the group alive.
fn assert_group_whole(g: &Group, r: &ClientRun, what: &str) {
    let lines: Vec<&str> = r.stdout.lines().collect();
    let downs: Vec<String> = (1..lines.len())
        .filter(|&i| lines[i].contains("down after this call"))
        .map(|i| format!("{}\n{}", lines[i - 1], lines[i]))
        .collect();
    let context = || {
        format!(
            "{what}\nstatus {:?} (signal {:?}) after {:?}\n--- calls that took a member down ---\n{}\n--- last output ---\n{}\n--- stderr ---\n{}\n--- HA log ---\n{}",
            r.status,
            r.signal(),
            r.elapsed,
            downs.join("\n"),
            tail(&r.stdout, 15),
            tail(&r.stderr, 30),
            tail(&g.ha_log_lines().join("\n"), 30)
        )
    };
    assert!(
        r.success(),
        "the application did not survive: {}",
        context()
    );
    for needle in ["panicked at", "internal error"] {
        assert!(
            !r.stderr.contains(needle),
            "'{needle}' on stderr: {}",
            context()
        );
    }
    let log = g.ha_log_lines();
    for needle in ["has dropped member", "all members gone offline"] {
        assert!(
            !log.iter().any(|l| l.contains(needle)),
            "a caller's error took a member down ('{needle}'): {}",
            context()
        );
    }
    assert!(
        r.stdout
            .contains(&format!("status rv=0x0 members={}", g.len())),
        "no group status: {}",
        context()
    );
    for m in &g.members {
        assert!(
            r.stdout
                .contains(&format!("member {} alive=1 last_error=0x0", m.serial)),
            "member {} not alive at the end: {}",
            m.serial,
            context()
        );
    }
}

/// One "case" line of the fuzzer: (name, class, expected rv, rv, output length, checksum).
fn cases(stdout: &str) -> Vec<(String, String, u64, u64, u64, u64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("case ")?.split_whitespace();
            let name = it.next()?.to_string();
            let mut field = |key: &str| it.next()?.strip_prefix(key).map(str::to_string);
            let class = field("class=")?;
            let hex = |v: String| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
            let expect = hex(field("expect=")?)?;
            let rv = hex(field("rv=")?)?;
            let len = field("len=")?.parse().ok()?;
            let sum = field("sum=")?.parse().ok()?;
            Some((name, class, expect, rv, len, sum))
        })
        .collect()
}

/// Every absurd-length case of the fuzzer, all in one p11ha process; each one again against
/// member 0's token with SoftHSM loaded directly, in a process of its own (SoftHSM may not
/// survive the ones only p11ha promises to refuse). Legal cases must give SoftHSM's answer, byte
/// for byte where there is output; the others p11ha's documented CK_RV. (SoftHSM, not
/// p11-kit-client: p11-kit 0.24's client alone answers these capacities wrongly, e.g.
/// *pulSignatureLen = 2^40 gives CKR_BUFFER_TOO_SMALL and ULONG_MAX CKR_DEVICE_MEMORY.)
fn absurd_lengths_give_a_ck_rv_and_what_softhsm_answers(setup: Setup) {
    let g = Group::new(setup, 3, ConfigOpts::default());
    let exe = fuzzer(&g);
    let r = through_p11ha(&exe, &g, &["-P", "-H", "-a", "all"]);
    assert_group_whole(&g, &r, "absurd lengths through p11ha");
    let got = cases(&r.stdout);
    let listed = run_cmd(
        {
            let mut c = Command::new(&exe);
            c.arg("-L");
            c
        },
        RUN_TIMEOUT,
    );
    let all = listed
        .stdout
        .lines()
        .filter(|l| l.ends_with(" same") || l.ends_with(" p11ha"))
        .count();
    assert_eq!(got.len(), all, "a case gave no answer:\n{}", r.stdout);
    let mut wrong = Vec::new();
    for (name, class, expect, rv, len, sum) in &got {
        let direct = through_softhsm(&exe, &g, &["-P", "-a", name]);
        let softhsm = if direct.success() {
            cases(&direct.stdout).into_iter().next()
        } else {
            None
        };
        let said = match &softhsm {
            Some((_, _, _, rv, len, sum)) => format!("rv {rv:#x} len {len} sum {sum}"),
            None => format!("did not survive ({:?})", direct.status),
        };
        eprintln!("{name} ({class}): p11ha rv {rv:#x} len {len} sum {sum}; SoftHSM {said}");
        match (class.as_str(), &softhsm) {
            ("same", Some((_, _, _, srv, slen, ssum))) if (srv, slen, ssum) != (rv, len, sum) => {
                wrong.push(format!(
                    "{name}: p11ha rv {rv:#x} len {len} sum {sum}, SoftHSM {said}"
                ))
            }
            ("same", None) => wrong.push(format!(
                "{name} is a legal call, yet SoftHSM did not survive it:\n{}",
                direct.describe()
            )),
            ("p11ha", _) if rv != expect => {
                wrong.push(format!("{name}: p11ha rv {rv:#x}, documented {expect:#x}"))
            }
            _ => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Runs each fuzzer case of `class` in a p11ha process of its own (so that an abort in one hides
/// no other) and checks the group is whole after it; `check` judges the case's line.
fn each_case_alone(setup: Setup, class: &str, check: impl Fn(&str, u64, u64)) {
    let g = Group::new(setup, 3, ConfigOpts::default());
    let exe = fuzzer(&g);
    let listed = run_cmd(
        {
            let mut c = Command::new(&exe);
            c.arg("-L");
            c
        },
        RUN_TIMEOUT,
    );
    let suffix = format!(" {class}");
    let names: Vec<&str> = listed
        .stdout
        .lines()
        .filter_map(|l| l.strip_suffix(suffix.as_str()))
        .collect();
    assert!(!names.is_empty(), "no case of class {class}");
    let mut wrong = Vec::new();
    for name in names {
        let r = through_p11ha(&exe, &g, &["-P", "-H", "-a", name]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_group_whole(&g, &r, name);
            let got = cases(&r.stdout);
            let (_, _, expect, rv, _, _) = got.first().expect("a case line");
            check(name, *expect, *rv);
        }));
        if let Err(p) = result {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "(no message)".into());
            wrong.push(msg);
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

/// p11ha's length and NULL promises for mechanism parameters and the buffers they point to
/// (the fuzzer's class "mech"): a length no buffer can have must be CKR_ARGUMENTS_BAD, not a
/// panic; a NULL buffer with a length must not reach the member (SoftHSM reads it: the direct
/// application crashes, a p11-kit member's server child dies and the call fails over to the
/// next member, which dies the same way).
fn absurd_mechanism_parameters_are_refused_unread(setup: Setup) {
    each_case_alone(setup, "mech", |name, expect, rv| {
        assert_eq!(
            rv, expect,
            "{name}: p11ha rv {rv:#x}, documented {expect:#x}"
        );
    });
}

/// Legal calls that some member module answers oddly (the fuzzer's class "odd": p11-kit 0.24's
/// client aborts on an empty C_GetAttributeValue template and answers CKR_DEVICE_ERROR for a
/// CK_ULONG attribute one byte long; SoftHSM answers CKR_GENERAL_ERROR when a secret key signs
/// with CKM_RSA_PKCS): whatever the CK_RV, the application lives and every member stays.
fn odd_answers_to_a_callers_call_take_no_member_down(setup: Setup) {
    each_case_alone(setup, "odd", |_, _, _| {});
}

fn seed_and_calls() -> (u64, u64) {
    let seed = std::env::var("P11HA_FUZZ_SEED")
        .ok()
        .map(|v| v.parse().expect("P11HA_FUZZ_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    let calls = std::env::var("P11HA_FUZZ_CALLS")
        .ok()
        .map(|v| v.parse().expect("P11HA_FUZZ_CALLS: a number"))
        .unwrap_or(1500);
    (seed, calls)
}

/// Seeded random calls, p11ha's promises included (-P), on a 3-member group.
fn random_calls_never_abort_panic_or_drop_a_member(setup: Setup) {
    let (seed, calls) = seed_and_calls();
    eprintln!("fuzz: seed {seed}, {calls} calls (P11HA_FUZZ_SEED, P11HA_FUZZ_CALLS)");
    let g = Group::new(setup, 3, ConfigOpts::default());
    let exe = fuzzer(&g);
    let (seed, calls) = (seed.to_string(), calls.to_string());
    let r = through_p11ha(&exe, &g, &["-P", "-H", "-r", &seed, "-c", &calls]);
    assert_group_whole(
        &g,
        &r,
        &format!(
            "random calls, seed {seed} (rerun: P11HA_FUZZ_SEED={seed} P11HA_FUZZ_CALLS={calls})"
        ),
    );
    assert!(
        r.stdout.contains(&format!("done calls={calls}")),
        "{}",
        tail(&r.stdout, 5)
    );
}

/// The fuzzer's own check: without -P it makes only calls any conforming module survives, so
/// SoftHSM loaded directly must survive the same random sequence. (If it does not, the fuzzer
/// makes an illegal call, or SoftHSM has a bug: either way the p11ha runs prove less.)
#[test]
fn softhsm_survives_the_legal_random_calls() {
    let (seed, calls) = seed_and_calls();
    eprintln!("fuzz: seed {seed}, {calls} calls (P11HA_FUZZ_SEED, P11HA_FUZZ_CALLS)");
    let g = Group::new(Setup::DIRECT_HA_ONLY_1, 1, ConfigOpts::default());
    let exe = fuzzer(&g);
    let (seed, calls) = (seed.to_string(), calls.to_string());
    let r = through_softhsm(&exe, &g, &["-r", &seed, "-c", &calls]);
    assert!(
        r.success() && r.stdout.contains(&format!("done calls={calls}")),
        "SoftHSM did not survive the legal calls of seed {seed}: status {:?}\n{}\n{}",
        r.status,
        tail(&r.stdout, 10),
        tail(&r.stderr, 10)
    );
}
