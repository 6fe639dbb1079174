//! The differential tester (docs/CONFORMANCE.md, "Differential tester"): a seeded random
//! sequence of PKCS#11 calls is run on SoftHSM directly and through p11ha over SoftHSM
//! members, and every answer is compared (`testkit/src/diff/`). Differences by design are listed
//! in `tests/differential_allow.txt`; any other fails the test with the seed and the shortest
//! failing sequence found.
//!
//! One test per set-up; they share the process's one p11ha, so they run one at a time.
//! By hand: `P11HA_DIFF_SEED=<n|random> P11HA_DIFF_CALLS=<n>` (and the other `P11HA_DIFF_*`
//! variables of `diff::Options::from_env`), `-- --nocapture` to see the summary.

mod support;

use std::sync::{Mutex, MutexGuard};

use support::diff::rig::{Rig, Setup};
use support::diff::{check, compare::AllowList, Options, SELF_CHECK_ALLOW};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls per set-up in the normal test run.
const CALLS: usize = 1500;

fn run(setup: Setup, default_seed: u64) {
    let _g = serial();
    let opts = Options::from_env(default_seed, CALLS).unwrap_or_else(|e| panic!("{e}"));
    let allow = if setup == Setup::SelfCheck {
        AllowList::parse(SELF_CHECK_ALLOW)
    } else {
        AllowList::load(&support::repo_dir().join("tests/differential_allow.txt"))
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let mut rig = Rig::new(setup, std::path::Path::new(env!("CARGO_BIN_EXE_p11ha")))
        .unwrap_or_else(|e| panic!("set-up {}: {e}", setup.name()));
    match check(&mut rig, &allow, &opts) {
        Ok(summary) => print!("{summary}"),
        Err(report) => {
            let kept = if std::env::var_os("P11HA_DIFF_KEEP").is_some() {
                let dir = rig.keep_dir();
                format!("tokens, configuration and HA log kept in {}", dir.display())
            } else {
                "P11HA_DIFF_KEEP=1 keeps the tokens, configuration and HA log".to_string()
            };
            panic!("{report}\n({kept})");
        }
    }
}

#[test]
fn direct_members_sync_off() {
    run(Setup::Direct, 1);
}

#[test]
fn direct_members_sync_on() {
    run(Setup::Sync, 2);
}

#[test]
fn p11kit_members() {
    run(Setup::P11Kit, 3);
}

// `ProviderNNBoundedCalls = 0` (direct members only: the configuration refuses it for
// p11-kit-client): member calls run on the application's thread and an Init does not travel
// with the next call, so a member's error surfaces at another call than in the set-ups above.
// Same seeds and length as their bounded twins, so a difference only these find is the mode's;
// a sequence costs about half a second, the set-up (tokens, cloning keys) most of the rest
// (the whole file went from about 5 s to 9 s with these two).

#[test]
fn direct_members_unbounded_calls_sync_off() {
    run(Setup::DirectUnbounded, 1);
}

#[test]
fn direct_members_unbounded_calls_sync_on() {
    run(Setup::SyncUnbounded, 2);
}

/// The tester against itself: a second SoftHSM token where p11ha would be. Every call must
/// agree, so a difference here is the tester's mistake (nondeterminism it does not account
/// for), never p11ha's.
#[test]
fn softhsm_against_softhsm() {
    run(Setup::SelfCheck, 4);
}
