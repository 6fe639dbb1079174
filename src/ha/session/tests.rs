//! Routing and failover policy against scripted fake members (`ha::fake_member`): which member
//! serves, which one is dropped and what the caller is told, without SoftHSM. The same cases
//! with real members and real faults are in tests/ha_failover.rs and tests/ha_recovery.rs.

use super::Session;
use crate::ha::fake_member::{group, group_with, Answer, FakeMember};
use crate::ha::group::Group;
use crate::mechanism::OwnedMechanism;
use crate::provider::instance::Calls;
use crate::provider::outcome::RV_TIMEOUT;
use crate::provider::{Input, OpKind};
use cryptoki_sys::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const TIMEOUT: Duration = Duration::from_millis(300);

fn session(group: &Arc<Group>) -> Session {
    Session::new(1, group.clone(), CKF_SERIAL_SESSION | CKF_RW_SESSION)
}

/// The tag of the member that served one C_GenerateRandom.
fn served_by(s: &Session) -> Result<u8, CK_RV> {
    s.generate_random(4, false).map(|v| v[0])
}

fn up(group: &Group, idx: usize) -> bool {
    group.member(idx).is_up()
}

#[test]
fn calls_spread_over_every_member_and_a_failed_member_is_dropped_and_never_asked_again() {
    let (g, fakes) = group(&[false, false, false], TIMEOUT);
    let s = session(&g);
    let mut served = [0; 3];
    // A session stays on a member for a run of calls (route.rs, STAY_CALLS), then moves on.
    for _ in 0..(3 * super::route::STAY_CALLS + 3) {
        served[served_by(&s).unwrap() as usize - 1] += 1;
    }
    assert!(
        served.iter().all(|&n| n > 0),
        "not every member served: {served:?}"
    );

    fakes[1].always("C_GenerateRandom", Answer::Rv(CKR_DEVICE_REMOVED));
    for _ in 0..30 {
        assert_ne!(served_by(&s), Ok(2));
    }
    assert!(
        !up(&g, 1),
        "the member that answered CKR_DEVICE_REMOVED is still up"
    );
    assert_eq!(g.member(1).health().last_error, CKR_DEVICE_REMOVED);
    assert_eq!(
        fakes[1].calls("C_GenerateRandom"),
        served[1] + 1,
        "a dropped member was asked again"
    );
    assert!(up(&g, 0) && up(&g, 2));
}

#[test]
fn a_hung_member_costs_the_caller_one_timeout_and_the_call_is_served_elsewhere() {
    let (g, fakes) = group(&[false, false], TIMEOUT);
    let s = session(&g);
    // Both members have a member session now, so the hang hits the call itself; and the
    // session's run of calls has just moved to member 0, so it gets the next one.
    while served_by(&s).unwrap() != 1 || fakes.iter().any(|f| f.calls("C_GenerateRandom") == 0) {}
    let before = fakes[0].calls("C_GenerateRandom");
    let hang = Duration::from_secs(5);
    fakes[0].always("C_GenerateRandom", Answer::Hang(hang));
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(served_by(&s), Ok(2));
    }
    // One timeout (300 ms) in all, not one per call, and never the member's 5 s.
    assert!(
        start.elapsed() < hang - Duration::from_secs(1),
        "the caller waited for the hung member: {:?}",
        start.elapsed()
    );
    assert!(!up(&g, 0));
    assert_eq!(g.member(0).health().last_error, RV_TIMEOUT);
    assert_eq!(
        fakes[0].calls("C_GenerateRandom"),
        before + 1,
        "asked again after its timeout"
    );
}

#[test]
fn device_error_from_a_member_that_still_answers_makes_it_suspect_until_another_serves() {
    let (g, fakes) = group(&[false, false], TIMEOUT);
    let s = session(&g);
    fakes[0].always("C_GenerateRandom", Answer::Rv(CKR_DEVICE_ERROR));
    // The balancer alternates, so within a few calls member 1 is asked first.
    for _ in 0..4 {
        assert_eq!(served_by(&s), Ok(2));
    }
    assert!(
        !up(&g, 0),
        "the member that alone answered CKR_DEVICE_ERROR is still up"
    );
    assert!(
        fakes[0].calls("C_GetSessionInfo") >= 1,
        "no probe before judging it"
    );
}

#[test]
fn device_error_from_every_member_was_the_input_and_drops_no_member() {
    let (g, fakes) = group(&[false, false, false], TIMEOUT);
    let s = session(&g);
    for f in &fakes {
        f.always("C_GenerateRandom", Answer::Rv(CKR_DEVICE_ERROR));
    }
    assert_eq!(served_by(&s), Err(CKR_DEVICE_ERROR));
    assert!(
        (0..3).all(|i| up(&g, i)),
        "a member was dropped for the caller's input"
    );
    assert!(fakes.iter().all(|f| f.calls("C_GenerateRandom") == 1));
}

#[test]
fn an_error_of_the_caller_is_answered_by_one_member_and_moves_nothing() {
    let (g, fakes) = group(&[false, false], TIMEOUT);
    let s = session(&g);
    for f in &fakes {
        f.next("C_GenerateRandom", Answer::Rv(CKR_ARGUMENTS_BAD));
    }
    assert_eq!(served_by(&s), Err(CKR_ARGUMENTS_BAD));
    let asked: usize = fakes.iter().map(|f| f.calls("C_GenerateRandom")).sum();
    assert_eq!(asked, 1, "the caller's error was retried on another member");
    assert!(up(&g, 0) && up(&g, 1));
}

#[test]
fn standby_members_serve_only_while_no_active_member_is_up() {
    let (g, fakes) = group(&[false, true], TIMEOUT);
    let s = session(&g);
    for _ in 0..10 {
        assert_eq!(served_by(&s), Ok(1));
    }
    assert_eq!(fakes[1].calls("C_GenerateRandom"), 0);
    fakes[0].always("C_GenerateRandom", Answer::Rv(CKR_TOKEN_NOT_PRESENT));
    for _ in 0..3 {
        assert_eq!(served_by(&s), Ok(2));
    }
    assert!(!up(&g, 0));
}

#[test]
fn with_failover_on_deactivation_off_the_deactivation_is_the_callers_answer() {
    for (failover, want) in [(true, Ok(2)), (false, Err(CKR_TOKEN_NOT_PRESENT))] {
        let (g, fakes) = group_with(&[false, false], TIMEOUT, |g| {
            g.failover_on_deactivation = failover
        });
        let s = session(&g);
        fakes[0].always("C_GenerateRandom", Answer::Rv(CKR_TOKEN_NOT_PRESENT));
        // The first call goes to member 0 (the balancer starts there).
        assert_eq!(served_by(&s), want, "failover_on_deactivation = {failover}");
        assert!(!up(&g, 0), "a deactivated member stays up");
        assert!(g.member(0).health().deactivated);
    }
}

#[test]
fn an_operation_whose_member_dies_before_its_single_part_call_is_redone_elsewhere() {
    let (g, fakes) = group(&[false, false, false], TIMEOUT);
    let s = session(&g);
    s.op_init_unaudited(OpKind::Digest, Some(OwnedMechanism::new(CKM_SHA256)), 0)
        .unwrap();
    let holder = fakes
        .iter()
        .position(|f| f.calls("C_DigestInit") == 1)
        .expect("no member got the C_DigestInit");
    fakes[holder].always("C_Digest", Answer::Rv(CKR_DEVICE_REMOVED));
    let out = s
        .op_single(OpKind::Digest, Input::new(b"abc".to_vec()), Some(64))
        .unwrap();
    let tag = out.data.expect("digest bytes")[0];
    assert_ne!(
        tag as usize,
        holder + 1,
        "answered by the member that failed"
    );
    assert_eq!(
        fakes[tag as usize - 1].calls("C_DigestInit"),
        1,
        "the new member got no C_DigestInit before C_Digest"
    );
    assert!(!up(&g, holder));
    // The operation has ended: a second C_Digest is not initialized.
    assert_eq!(
        s.op_single(OpKind::Digest, Input::new(b"abc".to_vec()), Some(64)),
        Err(CKR_OPERATION_NOT_INITIALIZED)
    );
}

fn pin() -> Option<crate::ha::group::Pin> {
    Some(Arc::new(Zeroizing::new(b"1234".to_vec())))
}

#[test]
fn the_first_member_judges_the_pin_and_a_later_member_that_refuses_it_is_dropped() {
    // The balancer's first order is member 0, 1, 2.
    let (g, fakes) = group(&[false, false, false], TIMEOUT);
    fakes[2].always("C_Login", Answer::Rv(CKR_PIN_INCORRECT));
    session(&g).login_unaudited(CKU_USER, pin()).unwrap();
    assert!(up(&g, 0) && up(&g, 1));
    assert!(
        !up(&g, 2),
        "the member with another PIN stayed in the group"
    );
    assert!(
        !g.member(2).health().auto_recovery,
        "a member that refused the group's PIN would be tried again (lock-out)"
    );

    let (g, fakes) = group(&[false, false, false], TIMEOUT);
    fakes[0].always("C_Login", Answer::Rv(CKR_PIN_INCORRECT));
    assert_eq!(
        session(&g).login_unaudited(CKU_USER, pin()),
        Err(CKR_PIN_INCORRECT)
    );
    assert!(g.login().is_none());
    assert_eq!(
        fakes[1].calls("C_Login") + fakes[2].calls("C_Login"),
        0,
        "a wrong PIN was tried on more members"
    );
    assert!(
        (0..3).all(|i| up(&g, i)),
        "a member was dropped for the caller's PIN"
    );
}

#[test]
fn a_member_that_fails_at_login_is_dropped_and_the_next_one_judges_the_pin() {
    let (g, fakes) = group(&[false, false], TIMEOUT);
    fakes[0].always("C_Login", Answer::Rv(CKR_DEVICE_REMOVED));
    session(&g).login_unaudited(CKU_USER, pin()).unwrap();
    assert!(!up(&g, 0) && up(&g, 1));
    assert!(
        g.member(0).health().auto_recovery,
        "its own trouble is no verdict on the PIN"
    );
    assert_eq!(fakes[1].calls("C_Login"), 1);
}

fn digest_init(s: &Session) -> Result<(), CK_RV> {
    s.op_init_unaudited(OpKind::Digest, Some(OwnedMechanism::new(CKM_SHA256)), 0)
}

fn digest(s: &Session) -> Result<u8, CK_RV> {
    s.op_single(OpKind::Digest, Input::new(b"abc".to_vec()), Some(64))
        .map(|o| o.data.expect("digest bytes")[0])
}

/// A group of `n` fakes and a session on it in which one digest ran, so that its member
/// accepted the Init; and that member's index.
fn after_one_digest(n: usize) -> (Arc<Group>, Vec<Arc<FakeMember>>, Session, usize) {
    let (g, fakes) = group(&vec![false; n], TIMEOUT);
    let s = session(&g);
    digest_init(&s).unwrap();
    let holder = digest(&s).unwrap() as usize - 1;
    (g, fakes, s, holder)
}

#[test]
fn an_init_the_member_accepted_before_travels_with_the_first_data_call() {
    let (g, fakes) = group(&[false], TIMEOUT);
    let s = session(&g);
    digest_init(&s).unwrap();
    assert_eq!(
        fakes[0].calls("C_DigestInit"),
        1,
        "a first Init is made at once"
    );
    assert_eq!(digest(&s), Ok(1));
    digest_init(&s).unwrap();
    assert_eq!(
        fakes[0].calls("C_DigestInit"),
        1,
        "an Init accepted before was made on its own again"
    );
    assert_eq!(digest(&s), Ok(1));
    assert_eq!(fakes[0].calls("C_DigestInit"), 2, "no Init before C_Digest");
    assert_eq!(fakes[0].calls("C_Digest"), 2);
}

#[test]
fn an_init_travels_only_where_it_saves_a_thread_hand_off() {
    let inst = crate::ha::fake_member::instance_calling(TIMEOUT, Calls::OnCaller);
    let (g, fakes) = crate::ha::fake_member::group_calling(&[false], inst, |_| {});
    let s = session(&g);
    for n in 1..=3 {
        digest_init(&s).unwrap();
        assert_eq!(
            fakes[0].calls("C_DigestInit"),
            n,
            "an Init waited for the data call on a member called on the caller's thread"
        );
        assert_eq!(digest(&s), Ok(1));
    }
}

#[test]
fn a_travelling_init_the_member_refuses_is_made_on_its_own_and_its_answer_reaches_the_caller() {
    let (g, fakes, s, _) = after_one_digest(1);

    // Refused once with the data call, accepted on its own: the caller sees nothing of it.
    digest_init(&s).unwrap();
    fakes[0].next("C_DigestInit", Answer::Rv(CKR_MECHANISM_INVALID));
    assert_eq!(digest(&s), Ok(1));
    assert_eq!(fakes[0].calls("C_DigestInit"), 3);

    // Refused both times: the member's answer, and the next Init is made at the Init again.
    digest_init(&s).unwrap();
    assert_eq!(
        fakes[0].calls("C_DigestInit"),
        3,
        "accepted on its own, so it travels"
    );
    fakes[0].next("C_DigestInit", Answer::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    fakes[0].next("C_DigestInit", Answer::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    assert_eq!(digest(&s), Err(CKR_KEY_FUNCTION_NOT_PERMITTED));
    assert_eq!(
        digest(&s),
        Err(CKR_OPERATION_NOT_INITIALIZED),
        "an operation that never started stayed"
    );
    fakes[0].next("C_DigestInit", Answer::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
    assert_eq!(
        digest_init(&s),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
        "a refused Init was still taken as accepted"
    );
    assert!(up(&g, 0), "a member was dropped for refusing an Init");
}

#[test]
fn a_second_init_meets_the_waiting_one_as_the_member_would_meet_it() {
    let (_g, fakes, s, _) = after_one_digest(1);
    digest_init(&s).unwrap();
    assert_eq!(
        digest_init(&s),
        Err(CKR_OPERATION_ACTIVE),
        "the member never saw the operation that is active"
    );
    assert_eq!(digest(&s), Ok(1), "the active operation was lost");
    assert_eq!(fakes[0].calls("C_Digest"), 2);
}

#[test]
fn a_member_that_fails_at_a_travelling_init_is_dropped_and_the_operation_runs_elsewhere() {
    let (g, fakes, s, holder) = after_one_digest(2);
    digest_init(&s).unwrap();
    fakes[holder].always("C_DigestInit", Answer::Rv(CKR_DEVICE_REMOVED));
    let tag = digest(&s).unwrap() as usize - 1;
    assert_ne!(tag, holder, "served by the member that failed");
    assert!(!up(&g, holder) && up(&g, tag));
    assert_eq!(
        fakes[holder].calls("C_Digest"),
        1,
        "data went to a dead member"
    );

    // The same with a length query first, which is answered by doing the operation.
    let (g, fakes, s, holder) = after_one_digest(2);
    digest_init(&s).unwrap();
    fakes[holder].always("C_DigestInit", Answer::Rv(CKR_DEVICE_REMOVED));
    let abc = || Input::new(b"abc".to_vec());
    let q = s.op_single(OpKind::Digest, abc(), None).unwrap();
    assert_eq!((q.rv, q.len), (CKR_OK, 4), "the query did not move");
    let out = s.op_single(OpKind::Digest, abc(), Some(64)).unwrap();
    assert_ne!(out.data.unwrap()[0] as usize - 1, holder);
    assert!(!up(&g, holder));
}

#[test]
fn a_length_query_is_answered_by_doing_the_operation_and_its_follow_up_asks_no_member() {
    let (g, fakes) = group(&[false], TIMEOUT);
    let s = session(&g);
    let abc = || Input::new(b"abc".to_vec());
    let calls = |f: &'static str| fakes[0].calls(f);
    digest_init(&s).unwrap();
    let q = s.op_single(OpKind::Digest, abc(), None).unwrap();
    assert_eq!((q.rv, q.len, q.data), (CKR_OK, 4, None));
    assert_eq!(calls("C_Digest"), 1);
    let small = s.op_single(OpKind::Digest, abc(), Some(2)).unwrap();
    assert_eq!((small.rv, small.len), (CKR_BUFFER_TOO_SMALL, 4));
    let out = s.op_single(OpKind::Digest, abc(), Some(64)).unwrap();
    assert_eq!((out.rv, out.data), (CKR_OK, Some(vec![1; 4].into())));
    assert_eq!(calls("C_Digest"), 1, "a follow-up asked the member");
    assert_eq!(
        digest(&s),
        Err(CKR_OPERATION_NOT_INITIALIZED),
        "the operation outlived its follow-up"
    );

    // Another input after the query: the member does that one, its operation made active again.
    digest_init(&s).unwrap();
    s.op_single(OpKind::Digest, abc(), None).unwrap();
    let (inits, digests) = (calls("C_DigestInit"), calls("C_Digest"));
    let other = s
        .op_single(OpKind::Digest, Input::new(b"abd".to_vec()), Some(64))
        .unwrap();
    assert_eq!(other.data, Some(vec![1; 4].into()));
    assert_eq!(
        (calls("C_DigestInit"), calls("C_Digest")),
        (inits + 1, digests + 1),
        "another input was answered from the kept result"
    );

    // A refusal of the data belongs to the follow-up call: the query is asked as it is.
    digest_init(&s).unwrap();
    fakes[0].next("C_Digest", Answer::Rv(CKR_DATA_LEN_RANGE));
    let q = s.op_single(OpKind::Digest, abc(), None).unwrap();
    assert_eq!((q.rv, q.len), (CKR_OK, 4));
    assert_eq!(
        s.op_single(OpKind::Digest, abc(), Some(64)).unwrap().data,
        Some(vec![1; 4].into())
    );
    assert!(up(&g, 0));
}

#[test]
fn a_lone_session_stays_on_a_member_for_a_run_of_calls_then_moves_on_or_leaves_a_busier_one() {
    let (g, _fakes) = group(&[false, false, false], TIMEOUT);
    let s = session(&g);
    let run = super::route::STAY_CALLS as usize;
    let by: Vec<u8> = (0..3 * run).map(|_| served_by(&s).unwrap()).collect();
    let runs: Vec<&[u8]> = by.chunks(run).collect();
    for r in &runs {
        assert!(r.iter().all(|&m| m == r[0]), "a run moved early: {by:?}");
    }
    assert!(
        runs.windows(2).all(|w| w[0][0] != w[1][0]),
        "a run did not move on: {by:?}"
    );
    // Mid-run, the member gets busier than the others (another session's operation): the
    // next call goes to one of those.
    let here = served_by(&s).unwrap();
    let _busy = g.member(here as usize - 1).busy();
    assert_ne!(served_by(&s).unwrap(), here);
}
