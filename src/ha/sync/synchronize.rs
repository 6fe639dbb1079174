//! `p11ha synchronize`: every token object any up member has, on every up member.

use super::catchup::catch_up;
use super::copy::{copy_missing, End, Side};
use super::opened::Opened;
use crate::ha::group::Group;
use crate::provider::MemberResult;

/// `p11ha synchronize`: copies every token object any up member has to every up member that
/// lacks it. Returns the number of objects copied.
pub fn synchronize(g: &Group) -> MemberResult<u64> {
    let login = g.login();
    let mut copied = catch_up(g);
    let _one = g.sync.comparing.lock();
    // A member still owed changes would hand back what was destroyed: it is only a target.
    let owing = g.sync.owing();
    let bound: Vec<_> = (0..g.members().len())
        .filter_map(|i| g.member(i).binding().map(|b| (i, b)))
        .collect();
    let mut opened = Vec::new();
    for (i, b) in &bound {
        match Opened::open(&b.instance, b.slot, &login, Some(b.open_sessions.clone())) {
            Ok(o) => opened.push((*i, b, o)),
            Err(f) if f.fails_member() => g.drop_member(*i, b.instance.id, f),
            Err(f) => return Err(f),
        }
    }
    for a in 0..opened.len() {
        if owing.contains(&g.member(opened[a].0).serial) {
            continue;
        }
        for z in 0..opened.len() {
            if a == z {
                continue;
            }
            let (ia, ba, oa) = &opened[a];
            let (iz, bz, oz) = &opened[z];
            let mut from = End::new(&ba.instance, oa.session, &g.member(*ia).serial);
            let mut to = End::new(&bz.instance, oz.session, &g.member(*iz).serial);
            let what = format!("synchronize {}", g.member(opened[z].0).serial);
            match copy_missing(&mut from, &mut to, &what) {
                Ok(n) => copied += n,
                Err((side, f)) => {
                    let (i, b, _) = &opened[if side == Side::Source { a } else { z }];
                    if f.fails_member() {
                        g.drop_member(*i, b.instance.id, f);
                    }
                    return Err(f);
                }
            }
        }
    }
    Ok(copied)
}
