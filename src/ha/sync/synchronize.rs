//! `p11ha synchronize`: every token object any up member has, on every up member, after what
//! members are owed is settled.

use super::catchup::{catch_up, claim_for_copy};
use super::copy::{copy_missing, Copied, End, Side};
use super::owed::Survey;
use crate::ha::group::Group;
use crate::provider::Fault;
use crate::rv::rv_name;

/// What `p11ha synchronize` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub copied: Copied,
    /// Members that were not synchronized, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// Everything is on every member.
    pub fn complete(&self) -> bool {
        self.copied.failed == 0 && self.skipped.is_empty()
    }
}

/// Settles what up members are owed, then copies every token object any up member has to every
/// up member that lacks it. A member owed a destroy or change that could not be applied is
/// neither a source nor a target; a member down, failing, or being caught up by another process
/// is skipped and reported.
pub fn synchronize(g: &Group) -> Report {
    let mut report = Report {
        copied: catch_up(g),
        ..Default::default()
    };
    let _one = g.sync.comparing.lock();
    let skip = |r: &mut Report, serial: &str, why: String| {
        if !r.skipped.iter().any(|(s, _)| s == serial) {
            r.skipped.push((serial.to_string(), why));
        }
    };
    for m in g.members().iter().filter(|m| !m.is_removed() && !m.is_up()) {
        skip(
            &mut report,
            &m.serial,
            format!("down ({})", rv_name(m.health().last_error)),
        );
    }
    let login = g.login();
    let survey = Survey::take(g, &login, None);
    let view = survey.view(g, &[]);
    if view.blind {
        for e in &survey.ends {
            skip(
                &mut report,
                &e.serial,
                "the records of what members are owed could not all be read".into(),
            );
        }
        return report;
    }
    let owing_changes = view.unsafe_sources().unwrap_or_default();
    let fail = |r: &mut Report, idx: usize, inst: u64, serial: &str, f: Fault| {
        if f.fails_member() {
            g.drop_member(idx, inst, f);
        }
        skip(r, serial, rv_name(f.rv()).to_string());
    };
    for z in &survey.ends {
        if owing_changes.contains(&z.serial) {
            skip(
                &mut report,
                &z.serial,
                "owed destroys or attribute changes that could not be applied yet".into(),
            );
            continue;
        }
        let claim = match claim_for_copy(&z.opened, &z.serial) {
            Ok(Some(c)) => c,
            Ok(None) => {
                skip(
                    &mut report,
                    &z.serial,
                    "being caught up by another process; run again".into(),
                );
                continue;
            }
            Err(f) => {
                fail(&mut report, z.idx, z.opened.inst.id, &z.serial, f);
                continue;
            }
        };
        for a in &survey.ends {
            if a.idx == z.idx || owing_changes.contains(&a.serial) || !g.member(a.idx).is_up() {
                continue;
            }
            let mut from = End::new(&a.opened.inst, a.opened.session, &a.serial);
            let mut to = End::new(&z.opened.inst, z.opened.session, &z.serial);
            let what = format!("synchronize {}", z.serial);
            match copy_missing(&mut from, &mut to, &what) {
                Ok(c) => report.copied.add(c),
                Err((Side::Source, f)) => fail(&mut report, a.idx, a.opened.inst.id, &a.serial, f),
                Err((Side::Target, f)) => {
                    fail(&mut report, z.idx, z.opened.inst.id, &z.serial, f);
                    break;
                }
            }
        }
        claim.release();
    }
    report
}
