//! Member calls on several members at the same time: a scoped thread per member (their calls are
//! bounded, so a thread never outlives its calls' deadlines by much). Each call is a round trip
//! and, on SoftHSM, often a file written or removed: one member after the other made the
//! application wait for each in turn.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// `f` for every item at once; in the items' order, `None` where `f` panicked. On the caller's
/// thread for a single item, when the application forbids threads, or when one cannot start.
pub(super) fn at_once<I: Sync, R: Send>(items: &[I], f: impl Fn(&I) -> R + Sync) -> Vec<Option<R>> {
    if items.len() < 2 {
        return items.iter().map(|i| guarded(&f, i)).collect();
    }
    beside(items, f, || ()).1
}

/// `here` on the caller's thread while `f` runs for every item on threads of its own; then
/// both results (items in their order, `None` where `f` panicked). Items whose thread could not
/// start, and every item when the application forbids threads, run after `here`.
pub(super) fn beside<I: Sync, R: Send, M>(
    items: &[I],
    f: impl Fn(&I) -> R + Sync,
    here: impl FnOnce() -> M,
) -> (M, Vec<Option<R>>) {
    if crate::bounded::is_inline() {
        let m = here();
        return (m, items.iter().map(|i| guarded(&f, i)).collect());
    }
    std::thread::scope(|s| {
        let f = &f;
        let running: Vec<_> = items
            .iter()
            .map(|item| {
                std::thread::Builder::new()
                    .name("p11ha-members".into())
                    .spawn_scoped(s, move || {
                        crate::bounded::mark_own_thread();
                        f(item)
                    })
                    .map_err(|_| item)
            })
            .collect();
        let m = here();
        let results = running
            .into_iter()
            .map(|r| match r {
                Ok(t) => t.join().ok(),
                Err(item) => guarded(f, item),
            })
            .collect();
        (m, results)
    })
}

fn guarded<I, R>(f: &impl Fn(&I) -> R, item: &I) -> Option<R> {
    catch_unwind(AssertUnwindSafe(|| f(item))).ok()
}
