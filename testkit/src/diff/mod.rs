//! The differential tester: a random, seeded sequence of PKCS#11 calls is run once against
//! SoftHSM directly and once through p11ha over SoftHSM members, and every return value,
//! length and deterministic output of every call is compared. Outputs that are random by
//! nature (signatures, generated keys, random bytes) are compared by property: their length,
//! whether they verify or decrypt on the same side, whether the other side's verifies here.
//!
//! - [`gen`]: the sequences (a seed and a count give one sequence).
//! - [`side`]: one module driven through its raw function list; sessions and objects are
//!   named by the step that made them, never by raw handle values.
//! - [`compare`]: differences, and the allow-list of those that are by design.
//! - [`rig`]: both modules in one process, reset to identical tokens before every replay.
//!
//! A difference not on the allow-list fails the run; the tester then replays shorter
//! sequences (the failing prefix, then that prefix with calls left out) and prints the
//! shortest one it found with the command that replays it. See docs/CONFORMANCE.md.

pub mod call;
pub mod compare;
pub mod gen;
pub mod names;
pub mod obs;
pub mod rig;
pub mod rng;
pub mod side;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use call::{Call, Step};
use compare::{differences, AllowList, Diff};
use obs::Obs;
use rig::{Rig, Setup};

/// What one replay found.
pub struct Replay {
    /// Calls run (all, unless it stopped at a difference).
    pub run: usize,
    /// Differences the allow-list allows, by entry line.
    pub allowed: Vec<(usize, Diff)>,
    /// The first call (its position in the replayed list) with a difference not allowed.
    pub failure: Option<(usize, Vec<Diff>)>,
    /// With `keep_going`: every call with a difference not allowed.
    pub all_failures: Vec<(usize, Vec<Diff>)>,
    /// Both sides' observations of every call run (SoftHSM, p11ha), when asked for.
    pub trace: Vec<(Vec<Obs>, Vec<Obs>)>,
}

/// Runs `calls` (each with its step number in the original sequence) on fresh tokens.
pub fn replay(
    rig: &mut Rig,
    calls: &[(Step, Call)],
    allow: &AllowList,
    keep_going: bool,
    trace: bool,
) -> Result<Replay, String> {
    let (mut reference, mut ha) = rig.fresh()?;
    let setup = rig.setup.name();
    let mut out = Replay {
        run: 0,
        allowed: Vec::new(),
        failure: None,
        all_failures: Vec::new(),
        trace: Vec::new(),
    };
    for (i, (step, call)) in calls.iter().enumerate() {
        let a = reference.run(*step, call, ha.blobs());
        let b = ha.run(*step, call, reference.blobs());
        out.run = i + 1;
        let diffs = differences(call.function(), &a, &b);
        // When the return values differ in an allowed way, the rest of the call (lengths,
        // outputs) follows from them and is not compared.
        let rv_allowed = diffs
            .iter()
            .find(|d| d.field == "rv")
            .and_then(|d| allow.allows(d, setup))
            .map(|e| e.line);
        let mut bad = Vec::new();
        for d in diffs {
            match (allow.allows(&d, setup).map(|e| e.line), rv_allowed) {
                (Some(line), _) | (None, Some(line)) => out.allowed.push((line, d)),
                (None, None) => bad.push(d),
            }
        }
        if trace {
            out.trace.push((a, b));
        }
        if !bad.is_empty() {
            if out.failure.is_none() {
                out.failure = Some((i, bad.clone()));
            }
            out.all_failures.push((i, bad));
            if !keep_going {
                break;
            }
        }
    }
    reference.close_all();
    ha.close_all();
    Ok(out)
}

/// How a run is chosen and reported (from the environment, see [`Options::from_env`]).
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub calls: usize,
    pub skip: Vec<String>,
    /// Replay only these steps of the sequence (a minimal sequence printed earlier).
    pub steps: Option<Vec<Step>>,
    pub keep_going: bool,
    pub shrink_budget: Duration,
    /// Run this many seeds, `seed`, `seed + 1`, ...
    pub seeds: u64,
    /// Print every observation of every call (`P11HA_DIFF_TRACE=1`).
    pub trace: bool,
    /// More entries, for hunting past known bugs by hand (`P11HA_DIFF_IGNORE=<file>`, the
    /// allow-list's format); never part of the normal run.
    pub ignore: AllowList,
}

impl Options {
    /// `P11HA_DIFF_SEED` (a number, or `random`), `P11HA_DIFF_CALLS`, `P11HA_DIFF_SKIP`
    /// (episode families), `P11HA_DIFF_STEPS` (comma-separated), `P11HA_DIFF_KEEP_GOING=1`,
    /// `P11HA_DIFF_SHRINK_SECS`, `P11HA_DIFF_SEEDS`; `seed` and `calls` otherwise.
    pub fn from_env(seed: u64, calls: usize) -> Result<Options, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let num = |k: &str, v: String| -> Result<u64, String> {
            let v = v.trim();
            let r = match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => v.parse(),
            };
            r.map_err(|_| format!("{k}={v}: not a number"))
        };
        let seed = match var("P11HA_DIFF_SEED") {
            Some(v) if v == "random" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
                .unwrap_or(1),
            Some(v) => num("P11HA_DIFF_SEED", v)?,
            None => seed,
        };
        let calls = match var("P11HA_DIFF_CALLS") {
            Some(v) => num("P11HA_DIFF_CALLS", v)? as usize,
            None => calls,
        };
        let skip: Vec<String> = var("P11HA_DIFF_SKIP")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
        if let Some(bad) = skip.iter().find(|s| !gen::FAMILIES.contains(&s.as_str())) {
            return Err(format!(
                "P11HA_DIFF_SKIP: no family {bad:?} (families: {})",
                gen::FAMILIES.join(", ")
            ));
        }
        let steps = match var("P11HA_DIFF_STEPS") {
            Some(v) => Some(
                v.split(',')
                    .map(|s| num("P11HA_DIFF_STEPS", s.to_string()).map(|n| n as Step))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let shrink = match var("P11HA_DIFF_SHRINK_SECS") {
            Some(v) => num("P11HA_DIFF_SHRINK_SECS", v)?,
            None => 30,
        };
        let seeds = match var("P11HA_DIFF_SEEDS") {
            Some(v) => num("P11HA_DIFF_SEEDS", v)?.max(1),
            None => 1,
        };
        let ignore = match var("P11HA_DIFF_IGNORE") {
            Some(path) => AllowList::load(std::path::Path::new(&path))?,
            None => AllowList::default(),
        };
        Ok(Options {
            trace: var("P11HA_DIFF_TRACE").is_some_and(|v| v != "0"),
            ignore,
            seed,
            calls,
            skip,
            steps,
            keep_going: var("P11HA_DIFF_KEEP_GOING").is_some_and(|v| v != "0"),
            shrink_budget: Duration::from_secs(shrink),
            seeds,
        })
    }
}

/// Runs the differential test in `rig` as `opts` say: Ok with a summary, or Err with the
/// report of the first difference not allowed (seed, shortest failing sequence, how to rerun).
pub fn check(rig: &mut Rig, allow: &AllowList, opts: &Options) -> Result<String, String> {
    let mut merged = allow.clone();
    for mut e in opts.ignore.entries.iter().cloned() {
        // Told apart from the allow-list's in the summary by their line numbers.
        e.line += IGNORED_LINE;
        merged.entries.push(e);
    }
    let allow = &merged;
    let mut summary = String::new();
    let mut failures = String::new();
    for seed in opts.seed..opts.seed + opts.seeds {
        let started = Instant::now();
        let calls = gen::generate(seed, opts.calls, &opts.skip);
        let numbered: Vec<(Step, Call)> = match &opts.steps {
            Some(steps) => steps
                .iter()
                .filter(|&&s| s < calls.len())
                .map(|&s| (s, calls[s].clone()))
                .collect(),
            None => calls.into_iter().enumerate().collect(),
        };
        let r = replay(rig, &numbered, allow, opts.keep_going, opts.trace)?;
        if opts.trace {
            for ((step, call), (a, b)) in numbered.iter().zip(&r.trace) {
                let _ = writeln!(summary, "#{step} {call}");
                for o in a {
                    let other = b.iter().find(|x| x.field == o.field);
                    let same = other.is_some_and(|x| x.val == o.val);
                    let theirs = other.map_or("(absent)".to_string(), |x| x.val.to_string());
                    let _ = if same {
                        writeln!(summary, "    {} = {}", o.field, o.val)
                    } else {
                        writeln!(
                            summary,
                            "    {} = SoftHSM {} / p11ha {theirs}",
                            o.field, o.val
                        )
                    };
                }
            }
        }
        let _ = writeln!(
            summary,
            "set-up {}, seed {seed}: {} calls in {:.1} s, {} allowed differences{}",
            rig.setup.name(),
            r.run,
            started.elapsed().as_secs_f64(),
            r.allowed.len(),
            allowed_lines(&r.allowed),
        );
        if opts.keep_going && !r.all_failures.is_empty() {
            let _ = writeln!(
                failures,
                "{}",
                every_failure(rig.setup, seed, &numbered, &r)
            );
            continue;
        }
        let Some((at, diffs)) = r.failure else {
            continue;
        };
        let report = shrink(rig, allow, opts, seed, &numbered[..=at], &diffs)?;
        failures.push_str(&report);
    }
    if failures.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n{failures}"))
    }
}

/// Added to the line numbers of `P11HA_DIFF_IGNORE` entries.
const IGNORED_LINE: usize = 1_000_000;

fn allowed_lines(allowed: &[(usize, Diff)]) -> String {
    let mut lines: Vec<usize> = allowed.iter().map(|(l, _)| *l).collect();
    lines.sort();
    lines.dedup();
    let (ignored, listed): (Vec<usize>, Vec<usize>) =
        lines.into_iter().partition(|l| *l >= IGNORED_LINE);
    let mut s = String::new();
    if !listed.is_empty() {
        let l: Vec<String> = listed.iter().map(|l| l.to_string()).collect();
        s += &format!(" (allow-list lines {})", l.join(", "));
    }
    if !ignored.is_empty() {
        let l: Vec<String> = ignored
            .iter()
            .map(|l| (l - IGNORED_LINE).to_string())
            .collect();
        s += &format!(" (P11HA_DIFF_IGNORE lines {})", l.join(", "));
    }
    s
}

fn every_failure(setup: Setup, seed: u64, calls: &[(Step, Call)], r: &Replay) -> String {
    let mut s = format!(
        "set-up {}, seed {seed}: {} calls differ (P11HA_DIFF_KEEP_GOING: later ones may follow from earlier ones)\n",
        setup.name(),
        r.all_failures.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for (i, diffs) in &r.all_failures {
        for d in diffs {
            let key = (
                d.function,
                d.field.clone(),
                d.reference.clone(),
                d.p11ha.clone(),
            );
            if seen.insert(key) {
                let _ = writeln!(s, "  first at #{} {}: {d}", calls[*i].0, calls[*i].1);
            }
        }
    }
    s
}

/// Whether `calls` still fails at its last call the same way (every return value difference
/// in `want`, and a difference in each of its other fields: random outputs differ anew in each
/// replay), and nowhere before it.
fn still_fails(
    rig: &mut Rig,
    allow: &AllowList,
    calls: &[(Step, Call)],
    want: &[Diff],
) -> Result<bool, String> {
    let r = replay(rig, calls, allow, false, false)?;
    Ok(match r.failure {
        Some((at, diffs)) => {
            at + 1 == calls.len()
                && want.iter().all(|w| {
                    diffs.iter().any(|d| {
                        d.function == w.function
                            && d.field == w.field
                            && (d.field != "rv" || d == w)
                    })
                })
        }
        None => false,
    })
}

/// Shrinks a failing sequence (its last call differs): first confirms the prefix fails again,
/// then leaves out chunks of calls, halving the chunk size, while it still fails the same way
/// and the time budget lasts. Returns the report.
fn shrink(
    rig: &mut Rig,
    allow: &AllowList,
    opts: &Options,
    seed: u64,
    prefix: &[(Step, Call)],
    diffs: &[Diff],
) -> Result<String, String> {
    let started = Instant::now();
    let last = prefix.last().expect("a failing prefix has a call").clone();
    let mut report = format!(
        "DIFFERENCE: set-up {}, seed {seed}, {} calls: p11ha differs from SoftHSM at call #{}\n  #{} {}\n",
        rig.setup.name(),
        opts.calls,
        last.0,
        last.0,
        last.1
    );
    for d in diffs {
        let _ = writeln!(
            report,
            "    {}: SoftHSM {}, p11ha {}",
            d.field, d.reference, d.p11ha
        );
    }
    let reproduced = still_fails(rig, allow, prefix, diffs)?;
    let _ = writeln!(
        report,
        "shortest failing prefix: calls #0..=#{} ({})",
        last.0,
        if reproduced {
            "fails again when replayed alone"
        } else {
            "did NOT fail again when replayed alone: the difference depends on timing or on the values of random outputs"
        }
    );
    let mut cur: Vec<(Step, Call)> = prefix.to_vec();
    if reproduced {
        let mut chunk = (cur.len() / 2).max(1);
        let mut replays = 0;
        'outer: while started.elapsed() < opts.shrink_budget {
            let mut i = 0;
            let mut removed_any = false;
            while i + 1 < cur.len() {
                if started.elapsed() >= opts.shrink_budget {
                    break 'outer;
                }
                let end = (i + chunk).min(cur.len() - 1);
                let mut candidate = cur[..i].to_vec();
                candidate.extend_from_slice(&cur[end..]);
                replays += 1;
                if still_fails(rig, allow, &candidate, diffs)? {
                    cur = candidate;
                    removed_any = true;
                } else {
                    i = end;
                }
            }
            if chunk == 1 && !removed_any {
                break;
            }
            chunk = (chunk / 2).max(1);
        }
        let done = if chunk == 1 {
            ""
        } else {
            " (time budget reached: not minimal)"
        };
        let _ = writeln!(
            report,
            "shrunk to {} of {} calls in {replays} replays, {:.0} s{done}:",
            cur.len(),
            prefix.len(),
            started.elapsed().as_secs_f64()
        );
    }
    // The sequence with what each side answered, for the diagnosis.
    let r = replay(rig, &cur, allow, true, true)?;
    for ((step, call), (a, b)) in cur.iter().zip(&r.trace) {
        let rv = |o: &[Obs]| o.first().map_or(String::new(), |o| o.val.to_string());
        let (ra, rb) = (rv(a), rv(b));
        let answer = if ra == rb {
            ra
        } else {
            format!("SoftHSM {ra} / p11ha {rb}")
        };
        let _ = writeln!(report, "  #{step:<5} {call}  => {answer}");
    }
    let steps: Vec<String> = cur.iter().map(|(s, _)| s.to_string()).collect();
    let _ = writeln!(
        report,
        "replay: P11HA_DIFF_SEED={seed} P11HA_DIFF_CALLS={} P11HA_DIFF_STEPS={}{} cargo test --release --test differential {} -- --nocapture",
        last.0 + 1,
        steps.join(","),
        if opts.skip.is_empty() {
            String::new()
        } else {
            format!(" P11HA_DIFF_SKIP={}", opts.skip.join(","))
        },
        test_name(rig.setup),
    );
    Ok(report)
}

/// What two SoftHSM tokens made alike may still answer differently (set-up self-check): their
/// names, and the time SoftHSM writes into utcTime (which can tick between the two calls).
pub const SELF_CHECK_ALLOW: &str = "\
C_GetTokenInfo | label | * | * | self-check | two tokens, two labels
C_GetTokenInfo | serialNumber | * | * | self-check | two tokens, two serials
C_GetTokenInfo | utcTime | * | * | self-check | the clock may tick between the two calls
C_GetSlotInfo | slotDescription | * | * | self-check | two tokens, two slot IDs in the description
";

/// The test function of `tests/differential.rs` that runs `setup`.
pub fn test_name(setup: Setup) -> &'static str {
    match setup {
        Setup::Direct => "direct_members_sync_off",
        Setup::Sync => "direct_members_sync_on",
        Setup::P11Kit => "p11kit_members",
        Setup::DirectUnbounded => "direct_members_unbounded_calls_sync_off",
        Setup::SyncUnbounded => "direct_members_unbounded_calls_sync_on",
        Setup::SelfCheck => "softhsm_against_softhsm",
    }
}
