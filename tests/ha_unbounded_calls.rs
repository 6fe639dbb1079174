//! `ProviderNNBoundedCalls = 0`: member calls run on the application's thread, with no
//! ReceiveTimeout bound. Only for members reached directly (the configuration refuses it for
//! p11-kit-client, whose calls block for ever when its server stops: src/config/providers.rs),
//! so the p11-kit set-ups do not apply; HAOnly = 1 and 0 both run. Members sit behind the
//! fault module (testkit's `setup`): a dead member fails every call, a hung one blocks them.

mod support;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::*;

macro_rules! in_direct_setups {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn direct_ha_only_1() {
                p11ha_testkit::setup::run_in(super::Setup::DIRECT_HA_ONLY_1, super::$scenario)
            }
            #[test]
            fn direct_ha_only_0() {
                p11ha_testkit::setup::run_in(super::Setup::DIRECT_HA_ONLY_0, super::$scenario)
            }
        }
    )+};
}

in_direct_setups!(
    a_dead_member_fails_over_without_a_failed_operation,
    a_hung_member_holds_only_the_threads_inside_it,
);

/// p11ha is one library per process: tests that load it in-process take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn unbounded(setup: Setup, members: usize) -> Group {
    Group::new(
        setup,
        members,
        ConfigOpts {
            unbounded_calls: true,
            receive_timeout_ms: 500,
            ..Default::default()
        },
    )
}

/// The group in `setup` through p11ha, with `threads` threads signing, 5 signatures made.
fn loaded(setup: Setup, threads: usize) -> (Group, Arc<MemberClient>, load::SigningLoad) {
    let group = unbounded(setup, 2);
    let ha = Arc::new(group.ha().unwrap());
    let load = load::SigningLoad::start(&ha, threads);
    assert!(wait_until(Duration::from_secs(30), || load.signed() >= 5));
    (group, ha, load)
}

fn a_dead_member_fails_over_without_a_failed_operation(setup: Setup) {
    let _g = serial();
    let (group, _ha, load) = loaded(setup, 3);
    group.die(0);
    let at_death = load.signed();
    let dropped = format!("has dropped member: {}", group.members[0].serial);
    let went_on = wait_until(Duration::from_secs(30), || {
        load.signed() > at_death + 20 && group.ha_log_lines().iter().any(|l| l.contains(&dropped))
    });
    let (signed, failed, _) = load.collect();
    assert!(
        went_on,
        "{signed} signatures; log: {:#?}",
        group.ha_log_lines()
    );
    assert!(failed.is_empty(), "failed operations: {failed:?}");
}

/// The price of unbounded calls, and its limit: a call inside a hung member waits until the
/// member lets it go (a bounded one would be back after ReceiveTimeout, see ha_failover.rs),
/// while everything else goes on with the other member: once nothing has left the hung
/// member for longer than ReceiveTimeout, the management round drops it (and a call that
/// finds it so does not enter). When it resumes, the held calls return, and it recovers.
fn a_hung_member_holds_only_the_threads_inside_it(setup: Setup) {
    let _g = serial();
    let (group, ha, load) = loaded(setup, 4);
    let s0 = group.members[0].serial.clone();
    group.hang(0);
    let dropped = format!("has dropped member: {s0}");
    assert!(
        group
            .wait_ha_log(&dropped, Duration::from_secs(30))
            .is_some(),
        "m0 never dropped; log: {:#?}",
        group.ha_log_lines()
    );
    // A new session goes to the member that answers, each signature without a wait.
    let s = ha.session().unwrap();
    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).unwrap();
    for i in 0..10u8 {
        let t0 = Instant::now();
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[i])
            .unwrap_or_else(|e| panic!("signature {i} while m0 hangs: {e}"));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
    load.stop();
    // Threads not inside m0 finish their signature and stop; those inside stay until the resume.
    wait_until(Duration::from_secs(3), || load.running() == 0);
    let inside = load.running();
    group.resume(0);
    let back = wait_until(Duration::from_secs(15), || load.running() == 0);
    assert!(
        inside > 0,
        "no call stayed inside the hung member: were calls bounded?"
    );
    assert!(back, "threads still inside m0 after the resume");
    let (_, failed, _) = load.collect();
    // Only a call that was inside m0 when it hung may fail (its member was dropped under it).
    assert!(failed.len() <= inside, "failed: {failed:?}");
    let recovered = format!("succeeded for member: {s0}");
    assert!(
        group
            .wait_ha_log(&recovered, Duration::from_secs(20))
            .is_some(),
        "m0 never recovered; log: {:#?}",
        group.ha_log_lines()
    );
    // Only the recovered member is left: it serves.
    group.die(1);
    for i in 0..5u8 {
        s.sign(&Mechanism::Sha256RsaPkcs, key, &[i])
            .unwrap_or_else(|e| panic!("signature {i} on the recovered m0: {e}"));
    }
    eprintln!("{inside} thread(s) held by the hung member");
}
