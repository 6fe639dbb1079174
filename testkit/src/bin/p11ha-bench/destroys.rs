//! Part 11 (issue 12): destroys while a member is down. What a down member is owed lives on the
//! live members as hidden records (src/ha/sync/records.rs), written inside the application's
//! destroy; they are settled when the member returns. Measured here: the destroy itself
//! (direct, p11ha with every member up, p11ha with m2 down) and the settling at m2's return,
//! for two record counts so that the growth shows. Afterwards no record and no destroyed object
//! may be left on any member: the bench fails (exit 1) otherwise.
//!
//! The child side (`destroys`, `census`) lives here too; child.rs only dispatches to it.

use crate::stats::{cpu_ns, fmt_ns, median, summarize, Stats, Summary};
use crate::{
    conf, create, ha_child, kill_server, ops, p11kit_child, progress, start_server, wait_log,
    Params, T, T_REINTRO,
};
use cryptoki_sys::*;
use p11ha::ha::sync::records::OWED_LABEL;
use p11ha_testkit::raw::Module;
use p11ha_testkit::{Cluster, ConfigOpts};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::children::ChildProc;

/// The member that goes down.
const DOWN: usize = 2;
/// The group's AutoReconnectInterval (`conf`).
const INTERVAL: Duration = Duration::from_secs(1);

/// Bound of a child command over `n` objects (destroys slow down as records pile up).
fn timeout(n: usize) -> Duration {
    T + Duration::from_millis(100 * n as u64)
}

/// What a child's `destroys` answered: the destroys' stats (CPU included) and the p50 of the
/// first and of the last tenth of them (the growth as records pile up).
struct Destroyed {
    st: Stats,
    p50_first: u64,
    p50_last: u64,
}

fn destroys(c: &mut ChildProc, prefix: &str, n: usize) -> Destroyed {
    let r = c.ask(&format!("destroys {prefix}"), "destroys", timeout(n));
    let v: Vec<&str> = r.split_whitespace().collect();
    let st = Stats::decode(&v[..v.len().min(7)].join(" "));
    let num = |i: usize| v.get(i).and_then(|x| x.parse().ok());
    match (st, num(7), num(8)) {
        (Some(st), Some(p50_first), Some(p50_last)) => Destroyed {
            st,
            p50_first,
            p50_last,
        },
        _ => panic!("bad answer from {}: destroys {r}", c.name),
    }
}

/// (objects labelled `<prefix>-…`, p11ha records) on member `i`, counted on the member itself.
fn census(w: &Cluster, i: usize, prefix: &str) -> (u64, u64) {
    let r = p11kit_child(w, i).ask(&format!("census {prefix}"), "census", timeout(1000));
    let v: Vec<u64> = r
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [objects, records] => (objects, records),
        _ => panic!("bad answer from m{i}: census {r}"),
    }
}

/// One settling case: `n` objects created through p11ha with every member up, m2 killed, the
/// `n` destroyed through p11ha, m2 restarted.
struct Case {
    n: usize,
    d: Destroyed,
    /// Records each live member held after the destroys (m0, m1).
    records: [u64; 2],
    /// m2's return (socket accepting) → `recovery attempt k succeeded for member: <m2>`.
    settle_ns: Option<u64>,
    /// The round's work in that: the last failed attempt before the return → succeeded, less
    /// the AutoReconnectInterval the management thread slept in between.
    work_ns: Option<u64>,
    /// Destroyed objects and records on any member after the settling (must be 0).
    left: u64,
}

fn settle_case(
    w: &Cluster,
    h: &mut ChildProc,
    prefix: &str,
    n: usize,
    wrong: &mut Vec<String>,
) -> Case {
    let made = create(h, prefix, n);
    if made.fails > 0 {
        wrong.push(format!(
            "{prefix}: {} of {n} creations failed (first {})",
            made.fails, made.first_rv
        ));
    }
    kill_server(w, DOWN);
    let d = destroys(h, prefix, n);
    if d.st.fails > 0 || d.st.n != n as u64 {
        wrong.push(format!(
            "{prefix}: {} of {} destroys with m{DOWN} down failed (expected {n} objects)",
            d.st.fails, d.st.n
        ));
    }
    let records = [census(w, 0, prefix).1, census(w, 1, prefix).1];
    let log = w.ha_log_path();
    let len = || std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    // m2 returns just after a failed recovery attempt, so that the next one comes one interval
    // later instead of anywhere within it: what is left is the round's own work.
    let serial = &w.members[DOWN].serial;
    let failed = wait_log(
        &log,
        len(),
        &format!("failed for member: {serial}"),
        INTERVAL * 3,
    );
    let from = len();
    let t_ret = start_server(w, DOWN);
    let needle = format!("succeeded for member: {serial}");
    let seen = wait_log(&log, from, &needle, T_REINTRO).map(|(_, t)| t);
    let settle_ns = seen.map(|t| t.saturating_sub(t_ret));
    let work_ns = match (failed, seen) {
        (Some((_, f)), Some(t)) => Some(t.saturating_sub(f + INTERVAL.as_nanos() as u64)),
        _ => None,
    };
    if settle_ns.is_none() {
        wrong.push(format!(
            "{prefix}: no `{needle}` within {} s of m{DOWN}'s return",
            T_REINTRO.as_secs()
        ));
    }
    let mut left = 0;
    for i in 0..w.len() {
        let (objects, recs) = census(w, i, prefix);
        left += objects + recs;
        if objects > 0 || recs > 0 {
            wrong.push(format!(
                "{prefix}: after settling, m{i} still holds {objects} destroyed objects and \
                 {recs} records"
            ));
        }
    }
    Case {
        n,
        d,
        records,
        settle_ns,
        work_ns,
        left,
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Part 11's report, and what went wrong in it (any failed step, or anything left on a member).
pub fn part11(w: &Cluster, lib: &Path, p: &Params) -> (String, Vec<String>) {
    // 1,000 objects, 100 with --quick: part 11 stays a few seconds in the test suite's smoke run.
    let (batch, small, large) = (p.objects / 5, p.objects / 10, p.objects);
    progress(&format!(
        "part 11: destroys while m{DOWN} is down, settling {small} and {large} records"
    ));
    let load0 = loadavg();
    let mut wrong = Vec::new();
    let synced = ConfigOpts {
        ha_synchronize: Some(true),
        ..conf(&[0, 1, 2], false)
    };
    let mut cs = [
        p11kit_child(w, 0),
        ha_child(w, lib, "p11ha-destroys", &synced),
    ];
    // (a) every member up: direct and p11ha alternate, one batch each per round.
    let mut up: [Vec<Stats>; 2] = [Vec::new(), Vec::new()];
    for r in 0..p.rounds {
        for k in 0..2 {
            let i = (k + r) % 2;
            let prefix = format!("d11-up{i}-{r}");
            let made = create(&mut cs[i], &prefix, batch);
            let d = destroys(&mut cs[i], &prefix, batch);
            if made.fails + d.st.fails > 0 || d.st.n != batch as u64 {
                wrong.push(format!(
                    "{prefix} ({}): {} creations and {} of {} destroys failed",
                    cs[i].name, made.fails, d.st.fails, d.st.n
                ));
            }
            up[i].push(d.st);
        }
    }
    // The same with `large` objects on the tokens: what the token's size costs by itself,
    // apart from the records (a SoftHSM destroy costs more the more files its token holds).
    let mut full = Vec::new();
    for c in cs.iter_mut() {
        let prefix = format!("d11-full-{}", full.len());
        let made = create(c, &prefix, large);
        let d = destroys(c, &prefix, large);
        if made.fails + d.st.fails > 0 || d.st.n != large as u64 {
            wrong.push(format!(
                "{prefix} ({}): {} creations and {} of {} destroys failed",
                c.name, made.fails, d.st.fails, d.st.n
            ));
        }
        full.push(d.st);
    }
    let [direct, mut h] = cs;
    drop(direct);
    // (b) m2 down: `small` records p.reps times, then `large` once.
    let smalls: Vec<Case> = (0..p.reps)
        .map(|r| settle_case(w, &mut h, &format!("d11-small-{r}"), small, &mut wrong))
        .collect();
    let big = settle_case(w, &mut h, "d11-large", large, &mut wrong);
    drop(h);
    let load1 = loadavg();

    let d = summarize(&up[0]);
    let row = |name: String, x: Summary, n: String| {
        format!(
            "| {name} | {n} | {} /s | ×{:.1} | {} | {} | {} (×{:.1}) | {} |\n",
            ops(x.ops),
            d.ops / x.ops,
            fmt_ns(x.p50),
            fmt_ns(x.p99),
            fmt_ns(x.cpu),
            x.cpu / d.cpu,
            x.fails
        )
    };
    let small_st: Vec<Stats> = smalls.iter().map(|c| c.d.st).collect();
    let mut s = format!(
        "## 11. Destroys while a member is down (issue 12): p11ha over 3 remote members, HASynchronize on\n\n\
         Load average {load0} at the start, {load1} at the end. Token data objects (CKO_DATA, \
         private) are created (not timed), then destroyed one after the other (timed). Direct = \
         p11-kit-client to m0 alone. With m{DOWN}'s server killed, every p11ha destroy also writes \
         a record of what m{DOWN} is owed on m0 and m1 before it returns. All up: {} rounds of \
         {batch} destroys, direct and p11ha alternating. Cell: destroys/s, time ÷ direct, p50 / \
         p99 per destroy, CPU time (user + sys) of the application process per destroy (÷ \
         direct).\n\n\
         | contender | destroys | destroys/s | time ÷ direct | p50 | p99 | CPU per destroy | failed |\n\
         |---|---|---|---|---|---|---|---|\n",
        p.rounds
    );
    s += &row(
        "direct: p11-kit-client, m0".into(),
        d,
        format!("{} × {batch}", p.rounds),
    );
    s += &row(
        "p11ha, all up".into(),
        summarize(&up[1]),
        format!("{} × {batch}", p.rounds),
    );
    s += &row(
        format!("direct, {large} objects on the token"),
        summarize(&full[..1]),
        format!("{large}"),
    );
    s += &row(
        format!("p11ha, all up, {large} objects on the tokens"),
        summarize(&full[1..]),
        format!("{large}"),
    );
    s += &row(
        format!("p11ha, m{DOWN} down, {small} records"),
        summarize(&small_st),
        format!("{} × {small}", p.reps),
    );
    s += &row(
        format!("p11ha, m{DOWN} down, {large} records"),
        summarize(&[big.d.st]),
        format!("{large}"),
    );
    s += &format!(
        "\nSettling: m{DOWN}'s server is restarted just after a failed recovery attempt was \
         logged; return = its socket accepting; succeeded = the HA log line `recovery attempt k \
         succeeded for member: <m{DOWN}>` (polled every 10 ms). Round's work = succeeded − the \
         failed attempt's line − the 1 s AutoReconnectInterval slept in between (the round reads \
         the records, reconnects, settles and destroys the records); per record = that ÷ \
         records. Records = p11ha-owed objects on m0 / m1 after the destroys. Left = destroyed \
         objects + records on m0, m1, m{DOWN} afterwards (must be 0, else FAIL).\n\n\
         | destroys while m{DOWN} down | records m0 / m1 | destroy time | p50 first → last tenth | return → succeeded | round's work | per record | left |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let t = |x: Option<u64>| x.map_or("not seen".into(), |t| fmt_ns(t as f64));
    let mut case_row = |c: &Case, note: &str| {
        let per = c.work_ns.map_or("—".into(), |t| {
            fmt_ns(t as f64 / c.records[0].max(1) as f64)
        });
        s += &format!(
            "| {}{note} | {} / {} | {} | {} → {} | {} | {} | {per} | {} |\n",
            c.n,
            c.records[0],
            c.records[1],
            fmt_ns(c.d.st.elapsed as f64),
            fmt_ns(c.d.p50_first as f64),
            fmt_ns(c.d.p50_last as f64),
            t(c.settle_ns),
            t(c.work_ns),
            if c.left == 0 {
                "0".to_string()
            } else {
                format!("{} FAIL", c.left)
            }
        );
    };
    for (r, c) in smalls.iter().enumerate() {
        case_row(c, &format!(" (run {})", r + 1));
    }
    case_row(&big, "");
    let small_work = median(
        smalls
            .iter()
            .filter_map(|c| c.work_ns)
            .map(|t| t as f64)
            .collect(),
    );
    let small_time = median(smalls.iter().map(|c| c.d.st.elapsed as f64).collect());
    if let (Some(big_work), true) = (big.work_ns, small_work > 0.0) {
        s += &format!(
            "\nGrowth, {large} vs {small} records (×{:.0}): round's work ×{:.1} (median of the \
             small runs {}), destroys with m{DOWN} down ×{:.1} in time.\n",
            large as f64 / small as f64,
            big_work as f64 / small_work,
            fmt_ns(small_work),
            big.d.st.elapsed as f64 / small_time
        );
    }
    for problem in &wrong {
        s += &format!("\nFAIL: {problem}\n");
    }
    (s, wrong)
}

// --- child side -------------------------------------------------------------------------------

/// `destroys <prefix>`: destroys, one after the other, every data object labelled
/// `<prefix>-…`; `census <prefix>`: counts them and p11ha's records.
pub fn child(m: &Module, slot: CK_SLOT_ID, a: &[&str]) -> Result<String, String> {
    let prefix = format!("{}-", a.get(1).copied().unwrap_or(""));
    let h = m.open_session(slot)?;
    let labelled = m.data_objects(h).map(|objs| {
        objs.into_iter()
            .map(|o| (o, label(m, h, o)))
            .collect::<Vec<_>>()
    });
    let out = labelled.map(|objs| match a[0] {
        "destroys" => {
            let mine: Vec<CK_OBJECT_HANDLE> = objs
                .iter()
                .filter(|(_, l)| l.starts_with(prefix.as_bytes()))
                .map(|(o, _)| *o)
                .collect();
            let cpu0 = cpu_ns();
            let t = Instant::now();
            let mut lats = Vec::with_capacity(mine.len());
            let mut fails = 0;
            for o in mine {
                let s = Instant::now();
                if m.destroy(h, o) != CKR_OK {
                    fails += 1;
                }
                lats.push(u32::try_from(s.elapsed().as_nanos()).unwrap_or(u32::MAX));
            }
            let elapsed = t.elapsed().as_nanos() as u64;
            let cpu = cpu_ns() - cpu0;
            let tenth = (lats.len() / 10).max(1).min(lats.len());
            let p50 = |v: &[u32]| {
                let mut v = v.to_vec();
                Stats::of(&mut v, 0, 0).p50
            };
            let (first, last) = (p50(&lats[..tenth]), p50(&lats[lats.len() - tenth..]));
            let st = Stats {
                cpu,
                ..Stats::of(&mut lats, fails, elapsed)
            };
            format!("destroys {} {first} {last}", st.encode())
        }
        _ => {
            let n = |f: &dyn Fn(&[u8]) -> bool| objs.iter().filter(|(_, l)| f(l)).count();
            format!(
                "census {} {}",
                n(&|l| l.starts_with(prefix.as_bytes())),
                n(&|l| l == OWED_LABEL)
            )
        }
    });
    m.close_session(h);
    out
}

/// CKA_LABEL of `o` (empty when unreadable or longer than any label this part writes).
fn label(m: &Module, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: buf.as_mut_ptr() as *mut _,
        ulValueLen: buf.len() as CK_ULONG,
    }];
    let get = m
        .functions()
        .C_GetAttributeValue
        .expect("C_GetAttributeValue");
    // SAFETY: one attribute pointing at a live local buffer of the length given.
    let rv = unsafe { get(h, o, t.as_mut_ptr(), 1) };
    if rv != CKR_OK {
        return Vec::new();
    }
    buf[..t[0].ulValueLen as usize].to_vec()
}
