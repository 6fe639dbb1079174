//! `p11ha-bench`: p11ha against the member module called directly, side by side in one run
//! (issue 6). Sets up SoftHSM tokens and `p11-kit server` members under /tmp with the test kit
//! (the tests' own set-up), runs every contender in its own child process (p11ha and SoftHSM are one instance per process), alternates
//! the contenders in short fixed-time slices over several rounds and reports medians.
//!
//! ```text
//! cargo build --release && target/release/p11ha-bench          # full run (< 5 min)
//! target/release/p11ha-bench --quick                           # smoke run (< 60 s)
//! target/release/p11ha-bench --parts 7                         # only part 7 (reintroduction)
//! target/release/p11ha-bench --parts 11                        # only part 11 (destroys, m2 down)
//! target/release/p11ha-bench --parts 13                        # only part 13 (4 CPU burners)
//! ```
//! Parts: 1 in-process overhead, 2 remote members, 3 failover, 4 recovery, 5 C_Initialize,
//! 6 memory, 7 reintroduction, 8 multi-part SHA-256 with and without replay (issue 14), 9 CPU of
//! an idle application, 10 the audit trail on and off (issue 15), 11 destroys while a member is
//! down and their settling (issue 12, destroys.rs), 12 creating token objects on a synchronized
//! group with every member up (issue 17, creates.rs), 13 ECDSA quiet and with 4 CPU burners
//! (issue 17, burners.rs). Throughput parts report CPU time per operation beside ops/s, and
//! its ratio to direct.
//!
//! `P11HA_LIB` selects the libp11ha.so to measure (default: next to this executable);
//! `P11HA_LIB_BEFORE` adds an older one to parts 1 and 2, compared in the same run.
//! `P11HA_BENCH_KEEP=1` keeps the temporary directory (server and child logs).
//! Exit status 1 when part 7 reintroduced the wrong objects, part 11 left records or destroyed
//! objects on a member, or part 12 lost creations or left objects behind (numbers are never
//! judged); 2 on a bad command line.

mod burners;
mod child;
mod children;
mod creates;
mod destroys;
mod stats;

use children::ChildProc;
use p11ha_testkit::{p11ha_lib, Cluster, ConfigOpts, GROUP_LABEL, P11KIT_CLIENT_LIB, SOFTHSM_LIB};
use stats::{fmt_ns, median, mono_ns, summarize, Stats, Summary};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
/// Every part there is (the default run).
const PARTS: std::ops::RangeInclusive<u32> = 1..=13;
/// Bound of the wait from a member's return to its reintroduction log line (part 7).
const T_REINTRO: Duration = Duration::from_secs(120);

/// Bound of one child command that creates or destroys `n` objects.
fn bulk_timeout(n: usize) -> Duration {
    T + Duration::from_millis(250 * n as u64)
}

struct Params {
    /// Rounds of the alternating throughput parts (1, 2).
    rounds: usize,
    /// Time per contender per cell, ms.
    slice_ms: u64,
    /// Repetitions of the failover, recovery and C_Initialize measurements.
    reps: usize,
    /// Objects created while a member is down and reintroduced to it (part 7).
    objects: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child::main(&args[2], &args[3]);
        return;
    }
    // A CPU burner of part 13: --burn <parent pid> <max s>.
    if args.get(1).map(String::as_str) == Some("--burn") && args.len() == 4 {
        burners::burn(&args[2], &args[3]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    // --parts 1,2: only these parts (for profiling); default all.
    let parts: Vec<u32> = match args.iter().position(|a| a == "--parts") {
        Some(i) => {
            let v: Vec<&str> = args.get(i + 1).map_or(vec![], |v| v.split(',').collect());
            let parsed: Vec<Option<u32>> = v.iter().map(|x| x.parse().ok()).collect();
            if let Some(bad) = v
                .iter()
                .zip(&parsed)
                .find(|(_, n)| !n.is_some_and(|n| PARTS.contains(&n)))
            {
                eprintln!(
                    "p11ha-bench: no part {:?} (parts are 1-{})",
                    bad.0,
                    PARTS.end()
                );
                std::process::exit(2);
            }
            parsed.into_iter().flatten().collect()
        }
        None => PARTS.collect(),
    };
    let known =
        |i: usize, a: &str| a == "--quick" || a == "--parts" || (i > 1 && args[i - 1] == "--parts");
    if parts.is_empty() || args.iter().enumerate().skip(1).any(|(i, a)| !known(i, a)) {
        eprintln!(
            "usage: p11ha-bench [--quick] [--parts 1,2,...] (parts 1-{})",
            PARTS.end()
        );
        std::process::exit(2);
    }
    let on = |n: u32| parts.contains(&n);
    let p = if quick {
        Params {
            rounds: 1,
            slice_ms: 100,
            reps: 1,
            objects: 100,
        }
    } else {
        Params {
            rounds: 5,
            slice_ms: 300,
            reps: 3,
            objects: 1000,
        }
    };
    let lib = p11ha_lib();
    let t0 = Instant::now();
    progress(&format!(
        "p11ha-bench{}: provisioning 3 SoftHSM tokens",
        if quick { " --quick" } else { "" }
    ));
    let w = Cluster::new(3);
    if std::env::var_os("P11HA_BENCH_KEEP").is_some() {
        w.keep_dir();
        progress(&format!("keeping {}", w.dir().display()));
    }
    let mut out = Vec::new();
    if on(1) {
        out.push(part1(&w, &lib, &p));
    }
    for i in 0..3 {
        w.start_server(i);
    }
    if on(2) {
        out.push(part2(&w, &lib, &p));
    }
    if on(8) {
        out.push(part8(&w, &lib, &p));
    }
    if on(9) {
        out.push(part9(&w, &lib, &p));
    }
    if on(10) {
        out.push(part10(&w, &lib, &p));
    }
    if on(13) {
        out.push(burners::part13(&w, &lib, &p));
    }
    // Part 5 runs before the fault parts, while every member is fresh.
    let p5 = on(5).then(|| part5(&w, &lib, &p));
    if on(3) {
        out.push(part3(&w, &lib, &p));
    }
    if on(4) {
        out.push(part4(&w, &lib, &p));
    }
    out.extend(p5);
    if on(6) {
        out.push(part6(&w, &lib));
    }
    let mut wrong = Vec::new();
    if on(11) {
        let (s, problems) = destroys::part11(&w, &lib, &p);
        out.push(s);
        wrong.extend(problems.into_iter().map(|x| format!("part 11: {x}")));
    }
    if on(12) {
        let (s, problems) = creates::part12(&w, &lib, p.objects);
        out.push(s);
        wrong.extend(problems.into_iter().map(|x| format!("part 12: {x}")));
    }
    // Part 7 runs last: it leaves its objects on every member.
    if on(7) {
        let (s, problems) = part7(&w, &lib, p.objects);
        out.push(s);
        wrong.extend(problems.into_iter().map(|x| format!("part 7: {x}")));
    }
    println!(
        "# p11ha-bench{} ({} rounds × {} ms slices; {} repetitions)\n",
        if quick { " --quick" } else { "" },
        p.rounds,
        p.slice_ms,
        p.reps
    );
    for s in out {
        println!("{s}");
    }
    println!("total run time: {:.1} s", t0.elapsed().as_secs_f64());
    // Numbers are reported, never judged; what parts 7, 11 and 12 leave on the members must be
    // right, though.
    if !wrong.is_empty() {
        for problem in &wrong {
            eprintln!("p11ha-bench: FAIL: {problem}");
        }
        // exit() runs no destructors: the cluster's servers and directory go first.
        drop(w);
        std::process::exit(1);
    }
}

/// The benchmark's p11ha group over `members` (each given a provider, in that order):
/// ReceiveTimeout 1000 ms, ConnectTimeout 2000 ms, AutoReconnectInterval 1 s, serial 1234.
fn conf(members: &[usize], direct: bool) -> ConfigOpts {
    ConfigOpts {
        direct,
        group_serial: Some("1234".into()),
        members: Some(members.to_vec()),
        providers: Some(members.to_vec()),
        receive_timeout_ms: 1000,
        connect_timeout_ms: 2000,
        auto_reconnect_interval: 1,
        ..Default::default()
    }
}

/// Writes `o` to a file of its own (`Chrystoki<n>.conf`): a child may still be reading the
/// previous one.
fn write_config(w: &Cluster, o: &ConfigOpts) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) + 1;
    w.write_config(&ConfigOpts {
        file_name: format!("Chrystoki{n}.conf"),
        ..o.clone()
    })
}

/// Starts member `i`'s server; returns the CLOCK_MONOTONIC time at which its socket accepted.
fn start_server(w: &Cluster, i: usize) -> u64 {
    w.start_server(i);
    mono_ns()
}

/// SIGKILLs member `i`'s server group; returns the time of the signal.
fn kill_server(w: &Cluster, i: usize) -> u64 {
    let t = mono_ns();
    w.kill(i);
    t
}

/// SIGSTOPs (hangs) member `i`'s server group; returns the time of the signal.
fn stop_server(w: &Cluster, i: usize) -> u64 {
    let t = mono_ns();
    w.stop(i);
    t
}

fn progress(s: &str) {
    eprintln!("[bench] {s}");
}

/// Start a child and wait for it to be logged in.
fn start(w: &Cluster, name: &str, module: &Path, label: &str, env: &[(&str, String)]) -> ChildProc {
    let mut c = children::spawn(w, name, module, label, env);
    c.expect("init", T);
    c.rss0 = c.expect("ready", T).parse().unwrap_or(0);
    c
}

fn ha_child(w: &Cluster, lib: &Path, name: &str, conf: &ConfigOpts) -> ChildProc {
    let path = write_config(w, conf);
    start(
        w,
        name,
        lib,
        GROUP_LABEL,
        &[("P11HA_CONF", path.display().to_string())],
    )
}

fn softhsm_child(w: &Cluster) -> ChildProc {
    start(
        w,
        "softhsm",
        Path::new(SOFTHSM_LIB),
        &w.members[0].label,
        &[("SOFTHSM2_CONF", w.members[0].conf.display().to_string())],
    )
}

/// p11-kit-client to member `i`'s server alone.
fn p11kit_child(w: &Cluster, i: usize) -> ChildProc {
    start(
        w,
        "p11-kit-client",
        Path::new(P11KIT_CLIENT_LIB),
        &w.members[i].label,
        &[("P11_KIT_SERVER_ADDRESS", w.members[i].address())],
    )
}

/// `P11HA_LIB_BEFORE`: an older libp11ha.so measured in the same run as `P11HA_LIB` (parts 1
/// and 2), so that before and after see the same machine load.
fn before_lib() -> Option<std::path::PathBuf> {
    std::env::var_os("P11HA_LIB_BEFORE").map(Into::into)
}

/// A row name, its direct result, and (before, after) per column.
type BeforeAfterRow = (String, Summary, Vec<(Summary, Summary)>);

/// The before/after table of a part run with [`before_lib`]: per row, the ratio to direct and
/// the CPU ratio to direct of the old and the new library. `rows`: (name, direct, [(before,
/// after)] per column).
fn before_after(title: &str, cols: &[&str], rows: &[BeforeAfterRow]) -> String {
    let mut s = format!(
        "\n{title}: before = P11HA_LIB_BEFORE, after = P11HA_LIB, same run. Cell: ops/s ratio to \
         direct before → after; CPU per operation ÷ direct before → after.\n\n| |"
    );
    for c in cols {
        s += &format!(" {c} |");
    }
    s += "\n|---|";
    s += &"---|".repeat(cols.len());
    s += "\n";
    for (name, d, cells) in rows {
        s += &format!("| {name} |");
        for (b, a) in cells {
            s += &format!(
                " {:.3} → {:.3}; CPU ÷ {:.2} → {:.2} |",
                b.ops / d.ops,
                a.ops / d.ops,
                b.cpu / d.cpu,
                a.cpu / d.cpu
            );
        }
        s += "\n";
    }
    s
}

fn run(c: &mut ChildProc, op: &str, threads: usize, ms: u64) -> Stats {
    let r = c.ask(&format!("run {op} {threads} {ms}"), "res", T);
    Stats::decode(&r).unwrap_or_else(|| panic!("bad result from {}: {r}", c.name))
}

/// Rounds × cells × contenders, the contender order rotating every round; a short warm-up
/// slice per contender and cell first. Returns summaries indexed `[cell][contender]`.
fn alternate(cs: &mut [ChildProc], cells: &[(&str, usize)], p: &Params) -> Vec<Vec<Summary>> {
    for &(op, th) in cells {
        for c in cs.iter_mut() {
            run(c, op, th, 30);
        }
    }
    let mut res: Vec<Vec<Vec<Stats>>> = vec![vec![Vec::new(); cs.len()]; cells.len()];
    for r in 0..p.rounds {
        for (ci, &(op, th)) in cells.iter().enumerate() {
            for k in 0..cs.len() {
                let i = (k + r + ci) % cs.len();
                res[ci][i].push(run(&mut cs[i], op, th, p.slice_ms));
            }
        }
    }
    res.iter()
        .map(|cell| cell.iter().map(|v| summarize(v)).collect())
        .collect()
}

fn ops(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

// ---------------------------------------------------------------------------------------------

fn part1(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 1: single-thread overhead, direct SoftHSM vs p11ha over 1 and 3 members");
    let mut cs = vec![
        softhsm_child(w),
        ha_child(w, lib, "p11ha-1", &conf(&[0], true)),
        ha_child(w, lib, "p11ha-3", &conf(&[0, 1, 2], true)),
    ];
    let before = before_lib();
    if let Some(b) = &before {
        cs.push(ha_child(w, b, "before-1", &conf(&[0], true)));
        cs.push(ha_child(w, b, "before-3", &conf(&[0, 1, 2], true)));
    }
    // Calls on the application's thread (`ProviderNNBoundedCalls = 0`), measured alongside.
    let unbounded = |members: &[usize]| ConfigOpts {
        unbounded_calls: true,
        ..conf(members, true)
    };
    let u = cs.len();
    cs.push(ha_child(w, lib, "p11ha-1u", &unbounded(&[0])));
    cs.push(ha_child(w, lib, "p11ha-3u", &unbounded(&[0, 1, 2])));
    if let Some(b) = &before {
        cs.push(ha_child(w, b, "before-1u", &unbounded(&[0])));
        cs.push(ha_child(w, b, "before-3u", &unbounded(&[0, 1, 2])));
    }
    let cells: Vec<(&str, usize)> = child::OPS.iter().map(|&o| (o, 1)).collect();
    let res = alternate(&mut cs, &cells, p);
    let head = "| operation | direct SoftHSM | p11ha, 1 member | ratio | Δ/call | CPU ÷ | p11ha, 3 members | ratio | Δ/call | CPU ÷ | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n";
    let mut s = format!(
        "## 1. Overhead per operation, 1 thread (SoftHSM members loaded in-process)\n\n\
         Cell: ops/s, p50 / p99 latency, CPU time (user + sys, whole process) per operation. Ratio = \
         p11ha ops/s ÷ direct ops/s; Δ/call = extra time per call of p11ha over direct (from the \
         throughputs); CPU ÷ = p11ha CPU per operation ÷ direct CPU per operation.\n\n{head}"
    );
    let mut calls_here = format!(
        "\nThe same, measured alongside, with `ProviderNNBoundedCalls = 0` (member calls on the \
         application's thread, no ReceiveTimeout bound):\n\n{head}"
    );
    for (ci, &(op, _)) in cells.iter().enumerate() {
        let d = res[ci][0];
        let cell = |x: Summary| {
            format!(
                "{} /s, {} / {}, CPU {}",
                ops(x.ops),
                fmt_ns(x.p50),
                fmt_ns(x.p99),
                fmt_ns(x.cpu)
            )
        };
        let delta = |x: Summary| {
            let v: f64 = 1e9 / x.ops - 1e9 / d.ops;
            format!("{}{}", if v < 0.0 { "−" } else { "+" }, fmt_ns(v.abs()))
        };
        let row = |h1: Summary, h3: Summary| {
            format!(
                "| {} | {} | {} | {:.3} | {} | {:.2} | {} | {:.3} | {} | {:.2} | {} |\n",
                op_name(op),
                cell(d),
                cell(h1),
                h1.ops / d.ops,
                delta(h1),
                h1.cpu / d.cpu,
                cell(h3),
                h3.ops / d.ops,
                delta(h3),
                h3.cpu / d.cpu,
                d.fails + h1.fails + h3.fails
            )
        };
        s += &row(res[ci][1], res[ci][2]);
        calls_here += &row(res[ci][u], res[ci][u + 1]);
    }
    s += &calls_here;
    if before.is_some() {
        let rows: Vec<_> = cells
            .iter()
            .enumerate()
            .map(|(ci, &(op, _))| {
                let r = &res[ci];
                (
                    op_name(op).to_string(),
                    r[0],
                    vec![
                        (r[3], r[1]),
                        (r[4], r[2]),
                        (r[u + 2], r[u]),
                        (r[u + 3], r[u + 1]),
                    ],
                )
            })
            .collect();
        let cols = [
            "1 member",
            "3 members",
            "1 member, `BoundedCalls = 0`",
            "3 members, `BoundedCalls = 0`",
        ];
        s += &before_after("Part 1", &cols, &rows);
    }
    s
}

fn op_name(op: &str) -> &'static str {
    match op {
        "ecdsa" => "ECDSA P-256 sign (CKM_ECDSA, 32 B digest)",
        "ecdsa2" => "ECDSA P-256 sign, two-call (length query, then the buffer)",
        "rsa" => "RSA-2048 sign (CKM_SHA256_RSA_PKCS)",
        "hmac" => "HMAC-SHA256 sign (64 B)",
        "aesgcm" => "AES-256-GCM encrypt 1 KiB",
        "random" => "C_GenerateRandom 32 B",
        "digest" => "C_DigestInit + C_Digest 64 B",
        _ => "C_GetSessionInfo",
    }
}

fn part2(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 2: remote members (p11-kit server), 1/2/4/8 threads");
    let mut cs = vec![
        p11kit_child(w, 0),
        ha_child(w, lib, "p11ha-r1", &conf(&[0], false)),
        ha_child(w, lib, "p11ha-r2", &conf(&[0, 1], false)),
        ha_child(w, lib, "p11ha-r3", &conf(&[0, 1, 2], false)),
    ];
    let before = before_lib();
    if let Some(b) = &before {
        cs.push(ha_child(w, b, "before-r1", &conf(&[0], false)));
        cs.push(ha_child(w, b, "before-r3", &conf(&[0, 1, 2], false)));
    }
    let threads = [1usize, 2, 4, 8];
    let mut cells: Vec<(&str, usize)> = threads.iter().map(|&t| ("ecdsa", t)).collect();
    // A two-call application (length query, then the buffer) at 1 thread: the last row.
    cells.push(("ecdsa2", 1));
    let rows: Vec<String> = threads
        .iter()
        .map(|t| t.to_string())
        .chain(["1, two-call".to_string()])
        .collect();
    let res = alternate(&mut cs, &cells, p);
    let mut s = String::from(
        "## 2. Remote members through `p11-kit server`, ECDSA P-256 sign\n\n\
         Cell: ops/s (ratio to p11-kit-client direct), p50 / p99, CPU time of the application \
         process per operation (ratio to direct).\n\n\
         | threads | p11-kit-client direct | p11ha, 1 member | p11ha, 2 members | p11ha, 3 members | failed |\n\
         |---|---|---|---|---|---|\n",
    );
    for (ci, th) in rows.iter().enumerate() {
        let d = res[ci][0];
        let cell = |x: Summary| {
            format!(
                "{} /s (×{:.2}), {} / {}, CPU {} (×{:.2})",
                ops(x.ops),
                x.ops / d.ops,
                fmt_ns(x.p50),
                fmt_ns(x.p99),
                fmt_ns(x.cpu),
                x.cpu / d.cpu
            )
        };
        s += &format!(
            "| {th} | {} | {} | {} | {} | {} |\n",
            cell(d),
            cell(res[ci][1]),
            cell(res[ci][2]),
            cell(res[ci][3]),
            res[ci].iter().map(|x| x.fails).sum::<u64>()
        );
    }
    if before.is_some() {
        let rows: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(ci, th)| {
                let r = &res[ci];
                (
                    format!("{th} threads"),
                    r[0],
                    vec![(r[4], r[1]), (r[5], r[3])],
                )
            })
            .collect();
        s += &before_after("Part 2", &["1 member", "3 members"], &rows);
    }
    s
}

/// The p11ha group of part 8, with `MultipartReplayLimit` = `limit` (None: the default).
fn mp_conf(members: &[usize], direct: bool, limit: Option<u64>) -> ConfigOpts {
    ConfigOpts {
        extra_ha_lines: limit
            .map(|l| vec![format!("MultipartReplayLimit = {l};")])
            .unwrap_or_default(),
        ..conf(members, direct)
    }
}

fn part8(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 8: multi-part SHA-256, replay on / off / direct, and a failover mid-stream");
    let mib = (child::MP_PART * child::MP_PARTS) as f64 / (1 << 20) as f64;
    let mut s = format!(
        "## 8. Multi-part SHA-256 over {mib} MiB in {} parts of {} KiB (issue 14), 1 thread\n\n\
         Replay on = default MultipartReplayLimit ({} bytes: the whole stream is kept); off = \
         MultipartReplayLimit = 0. Cell: MiB/s (ratio to direct), p50 per stream, CPU per stream \
         (ratio to direct). Every stream's digest is checked against the thread's first one \
         (failed counts mismatches too).\n\n\
         | members | direct | p11ha, replay on | p11ha, replay off | failed |\n\
         |---|---|---|---|---|\n",
        child::MP_PARTS,
        child::MP_PART / 1024,
        p11ha::config::DEFAULT_REPLAY_LIMIT,
    );
    let cells = [("sha256mp", 1usize)];
    for remote in [false, true] {
        let mut cs = if remote {
            vec![
                p11kit_child(w, 0),
                ha_child(w, lib, "p11ha-mp-on", &mp_conf(&[0, 1, 2], false, None)),
                ha_child(w, lib, "p11ha-mp-off", &mp_conf(&[0, 1, 2], false, Some(0))),
            ]
        } else {
            vec![
                softhsm_child(w),
                ha_child(w, lib, "p11ha-mp-on", &mp_conf(&[0], true, None)),
                ha_child(w, lib, "p11ha-mp-off", &mp_conf(&[0], true, Some(0))),
            ]
        };
        let res = alternate(&mut cs, &cells, p);
        let d = res[0][0];
        let cell = |x: Summary| {
            format!(
                "{:.1} MiB/s (×{:.2}), {}, CPU {} (×{:.2})",
                x.ops * mib,
                x.ops / d.ops,
                fmt_ns(x.p50),
                fmt_ns(x.cpu),
                x.cpu / d.cpu
            )
        };
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            if remote {
                "3 remote (p11-kit server); direct = p11-kit-client to m0"
            } else {
                "1 in-process SoftHSM; direct = SoftHSM"
            },
            cell(d),
            cell(res[0][1]),
            cell(res[0][2]),
            res[0].iter().map(|x| x.fails).sum::<u64>()
        );
    }
    s += "\nFailover mid-stream: 4 threads streaming on p11ha over 3 remote members, m0's server \
          SIGKILLed after 1 s. Streams overlapping fault ± 0.5 s; stall = slowest such stream − \
          p50 stream.\n\n\
          | replay | streams in run | failed in run | streams in window | p50 | max | stall |\n\
          |---|---|---|---|---|---|---|\n";
    for (name, limit) in [("on (default limit)", None), ("off (limit 0)", Some(0))] {
        let mut c = ha_child(w, lib, "p11ha-mp-fail", &mp_conf(&[0, 1, 2], false, limit));
        c.send("load sha256mp 4 2500");
        std::thread::sleep(Duration::from_millis(1000));
        let t = kill_server(w, 0);
        let loaded = c.expect("loaded", T);
        let mut it = loaded
            .split_whitespace()
            .map(|x| x.parse::<u64>().unwrap_or(0));
        let (n, fails) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        let r = c.ask(
            &format!("window {} {}", t - 500_000_000, t + 500_000_000),
            "res",
            T,
        );
        drop(c);
        start_server(w, 0);
        let st = Stats::decode(&r).expect("window stats");
        s += &format!(
            "| {name} | {n} | {fails} | {} | {} | {} | {} |\n",
            st.n,
            fmt_ns(st.p50 as f64),
            fmt_ns(st.max as f64),
            fmt_ns(st.max.saturating_sub(st.p50) as f64)
        );
    }
    s
}

/// Part 10's group with the audit trail `audit` (None: off; Some(key use)).
fn audit_conf(audit: Option<bool>) -> ConfigOpts {
    let mut lines = Vec::new();
    if let Some(key_use) = audit {
        lines.push("haAuditLog = enabled;".to_string());
        if key_use {
            lines.push("haAuditKeyUse = enabled;".to_string());
        }
    }
    ConfigOpts {
        extra_ha_lines: lines,
        ..conf(&[0], true)
    }
}

fn part10(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 10: the audit trail, off / management events / key use too");
    let mut cs = vec![
        ha_child(w, lib, "p11ha-audit-off", &audit_conf(None)),
        ha_child(w, lib, "p11ha-audit-on", &audit_conf(Some(false))),
        ha_child(w, lib, "p11ha-audit-keyuse", &audit_conf(Some(true))),
        softhsm_child(w),
    ];
    let cells = [("ecdsa", 1usize), ("ecdsa", 4), ("openclose", 1)];
    let res = alternate(&mut cs, &cells, p);
    let mut s = String::from(
        "## 10. The audit trail (issue 15): p11ha over 1 in-process SoftHSM member\n\n\
         Off = `haAuditLog` disabled; on = management events (sessions, logins, objects, HA \
         events); key use = `haAuditKeyUse` too (one record per C_SignInit). Cell: ops/s (ratio \
         to off), p50, CPU per operation (÷ direct SoftHSM, the last column, measured alongside). \
         `C_OpenSession` + `C_CloseSession` write two records when on, so half the difference of \
         their p50 to off is the cost of a record on the application's thread (MACs are computed \
         on another thread).\n\n\
         | operation | threads | audit off | on | on, with key use | direct SoftHSM | failed |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (ci, &(op, th)) in cells.iter().enumerate() {
        let (off, d) = (res[ci][0], res[ci][3]);
        let cell = |x: Summary| {
            format!(
                "{} /s (×{:.3}), {}, CPU {} (÷ {:.2})",
                ops(x.ops),
                x.ops / off.ops,
                fmt_ns(x.p50),
                fmt_ns(x.cpu),
                x.cpu / d.cpu
            )
        };
        s += &format!(
            "| {} | {th} | {} | {} | {} | {} | {} |\n",
            if op == "openclose" {
                "C_OpenSession + C_CloseSession"
            } else {
                "ECDSA P-256 sign"
            },
            cell(off),
            cell(res[ci][1]),
            cell(res[ci][2]),
            cell(d),
            res[ci].iter().map(|x| x.fails).sum::<u64>()
        );
    }
    let oc = &res[2];
    let per = |x: Summary| (x.p50 - oc[0].p50) / 2.0;
    s += &format!(
        "\nPer record on the application's thread (p50 difference ÷ 2): {} (target ≤ 2 µs). \
         ECDSA throughput with management events on, ÷ off: {:.3} at 1 thread, {:.3} at 4 \
         (target ≥ 0.98); with key use: {:.3} / {:.3}.\n",
        fmt_ns(per(oc[1])),
        res[0][1].ops / res[0][0].ops,
        res[1][1].ops / res[1][0].ops,
        res[0][2].ops / res[0][0].ops,
        res[1][2].ops / res[1][0].ops,
    );
    s
}

fn part9(w: &Cluster, lib: &Path, p: &Params) -> String {
    let ms = if p.rounds == 1 { 2000 } else { 10_000 };
    progress(&format!("part 9: CPU of an idle application, {ms} ms"));
    let mut cs = [
        ("p11-kit-client to m0, logged in", p11kit_child(w, 0)),
        (
            "p11ha over 3 remote members, logged in",
            ha_child(w, lib, "p11ha-idle", &conf(&[0, 1, 2], false)),
        ),
        (
            "p11ha over 3 in-process SoftHSM members, logged in",
            ha_child(w, lib, "p11ha-idle-direct", &conf(&[0, 1, 2], true)),
        ),
    ];
    // One signing second first, so that the pool threads exist; then all idle side by side.
    for (_, c) in cs.iter_mut() {
        run(c, "ecdsa", 4, 300);
    }
    for (_, c) in cs.iter_mut() {
        c.send(&format!("idle {ms}"));
    }
    let mut s = format!(
        "## 9. Idle: CPU time (user + sys) of the application process over {} s with no calls\n\n\
         After 0.3 s of 4-thread ECDSA signing (pool threads started), all contenders side by side.\n\n\
         | application uses | CPU while idle |\n|---|---|\n",
        ms / 1000
    );
    for (name, c) in cs.iter_mut() {
        let cpu: f64 = c
            .expect("idle", T + Duration::from_millis(ms))
            .parse()
            .unwrap_or(f64::NAN);
        s += &format!("| {name} | {} |\n", fmt_ns(cpu));
    }
    s
}

/// One failover run: 4-thread ECDSA load on p11ha over 3 remote members, `fault` applied to m0
/// after 1 s; stats of the operations overlapping the second around the fault, and the
/// failures of the whole run.
fn failover_once(w: &Cluster, lib: &Path, hang: bool) -> (Stats, u64, u64) {
    let mut c = ha_child(w, lib, "p11ha-failover", &conf(&[0, 1, 2], false));
    let total_ms = if hang { 3000 } else { 2000 };
    c.send(&format!("load ecdsa 4 {total_ms}"));
    std::thread::sleep(Duration::from_millis(1000));
    let t = if hang {
        stop_server(w, 0)
    } else {
        kill_server(w, 0)
    };
    let loaded = c.expect("loaded", T);
    let mut it = loaded
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let (n, fails) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let r = c.ask(
        &format!("window {} {}", t - 500_000_000, t + 500_000_000),
        "res",
        T,
    );
    drop(c);
    if hang {
        w.cont(0);
        kill_server(w, 0);
    }
    start_server(w, 0);
    (Stats::decode(&r).expect("window stats"), n, fails)
}

fn part3(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 3: failover under 4-thread signing load");
    let mut s = String::from(
        "## 3. Failover: 4 threads signing (ECDSA) on p11ha over 3 remote members, member m0 fails after 1 s\n\n\
         ReceiveTimeout = 1000 ms. Latencies of the operations overlapping the second around the fault \
         (fault − 0.5 s … fault + 0.5 s); failed = failed operations in the whole run.\n\n\
         | fault | run | ops in run | failed | ops in window | p50 | p99 | max | target |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (hang, name, target) in [
        (
            false,
            "killed (SIGKILL of its server)",
            "0 failed, max < 50 ms",
        ),
        (
            true,
            "hung (SIGSTOP of its server)",
            "0 failed, max < 1050 ms",
        ),
    ] {
        for r in 0..p.reps {
            let (st, n, fails) = failover_once(w, lib, hang);
            let limit = if hang { 1_050_000_000 } else { 50_000_000 };
            let met = fails == 0 && st.max < limit;
            s += &format!(
                "| {name} | {} | {n} | {fails} | {} | {} | {} | {} | {} ({}) |\n",
                r + 1,
                st.n,
                fmt_ns(st.p50 as f64),
                fmt_ns(st.p99 as f64),
                fmt_ns(st.max as f64),
                if met { "met" } else { "MISSED" },
                target
            );
        }
    }
    s
}

fn part4(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 4: recovery (AutoReconnectInterval = 1)");
    let mut s = String::from(
        "## 4. Recovery: p11ha over 3 remote members, AutoReconnectInterval = 1 s, 4 threads signing\n\n\
         m0's server is killed, restarted 0.5 s later; times from its return (socket accepting again).\n\
         Detection = kill → p11ha marks m0 down. In service = p11ha marks it up again (p11ha_group_status). \
         First served op = first time an operation is in flight on m0 afterwards (polled).\n\n\
         | run | detection | return → in service | return → first served op | failed ops | ops in run |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut served = Vec::new();
    for r in 0..p.reps {
        let mut c = ha_child(w, lib, "p11ha-recovery", &conf(&[0, 1, 2], false));
        c.ask(
            &format!("recover {} 4000", w.members[0].serial),
            "loading",
            T,
        );
        std::thread::sleep(Duration::from_millis(300));
        let t_kill = kill_server(w, 0);
        std::thread::sleep(Duration::from_millis(500));
        let t_ret = start_server(w, 0);
        let v: Vec<u64> = c
            .expect("recovered", T)
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let (dead, alive, first, n, fails) = (v[0], v[1], v[2], v[3], v[4]);
        let since = |t: u64| {
            if t == 0 {
                "not seen".to_string()
            } else {
                fmt_ns(t.saturating_sub(t_ret) as f64)
            }
        };
        if first != 0 {
            served.push(first.saturating_sub(t_ret) as f64);
        }
        s += &format!(
            "| {} | {} | {} | {} | {fails} | {n} |\n",
            r + 1,
            if dead == 0 {
                "not seen".into()
            } else {
                fmt_ns(dead.saturating_sub(t_kill) as f64)
            },
            since(alive),
            since(first)
        );
    }
    s += &format!(
        "\nMedian return → first served operation: {}.\n\n\
         Reintroduction of objects a returning member missed (HASynchronize on): part 7.\n",
        if served.is_empty() {
            "not seen".into()
        } else {
            fmt_ns(median(served))
        }
    );
    s
}

fn part5(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress("part 5: C_Initialize time (all up, one dead, one hung)");
    let mut s = String::from(
        "## 5. C_Initialize time, 3 remote members (ConnectTimeout = 2000 ms)\n\n\
         Median over the repetitions (each a fresh process); the direct column is p11-kit-client to m0 alone.\n\n\
         | members | p11ha C_Initialize | p11-kit-client direct C_Initialize |\n|---|---|---|\n",
    );
    let init_of = |c: &ChildProc, limit: Duration| -> Option<f64> {
        c.expect_opt("init", limit).and_then(|v| v.parse().ok())
    };
    for state in ["all up", "m0 dead", "m0 hung"] {
        match state {
            "m0 dead" => {
                kill_server(w, 0);
            }
            "m0 hung" => {
                start_server(w, 0);
                stop_server(w, 0);
            }
            _ => {}
        }
        let mut ha = Vec::new();
        for _ in 0..p.reps {
            let path = write_config(w, &conf(&[0, 1, 2], false));
            let c = children::spawn(
                w,
                "p11ha-init",
                lib,
                GROUP_LABEL,
                &[("P11HA_CONF", path.display().to_string())],
            );
            if let Some(x) = init_of(&c, T) {
                ha.push(x);
            }
            c.kill();
        }
        let c = children::spawn(
            w,
            "p11kit-init",
            Path::new(P11KIT_CLIENT_LIB),
            "m0",
            &[("P11_KIT_SERVER_ADDRESS", w.members[0].address())],
        );
        let direct = match init_of(&c, Duration::from_secs(3)) {
            Some(x) => fmt_ns(x),
            None => "> 3 s: blocks (no bound; killed)".into(),
        };
        c.kill();
        s += &format!(
            "| {state} | {} | {direct} |\n",
            if ha.is_empty() {
                "no answer".into()
            } else {
                fmt_ns(median(ha))
            }
        );
    }
    w.cont(0);
    kill_server(w, 0);
    start_server(w, 0);
    s
}

fn part6(w: &Cluster, lib: &Path) -> String {
    progress("part 6: resident memory");
    let mut s = String::from(
        "## 6. Resident memory (VmRSS) of the application process\n\n\
         At start (before loading any module), and after C_Initialize + login + 4 threads signing ECDSA for 0.3 s.\n\n\
         | application uses | VmRSS at start | VmRSS after | added by the module | vs direct |\n|---|---|---|---|---|\n",
    );
    let measure = |c: &mut ChildProc| -> (u64, u64) {
        run(c, "ecdsa", 4, 300);
        let after: u64 = c.ask("rss", "rss", T).parse().unwrap_or(0);
        (c.rss0, after)
    };
    let rows: Vec<(&str, (u64, u64))> = vec![
        ("SoftHSM directly", measure(&mut softhsm_child(w))),
        (
            "p11ha, 3 in-process SoftHSM members",
            measure(&mut ha_child(w, lib, "p11ha-3", &conf(&[0, 1, 2], true))),
        ),
        ("p11-kit-client directly", measure(&mut p11kit_child(w, 0))),
        (
            "p11ha, 3 remote members (p11-kit-client)",
            measure(&mut ha_child(w, lib, "p11ha-r3", &conf(&[0, 1, 2], false))),
        ),
    ];
    for (i, (name, (a, b))) in rows.iter().enumerate() {
        let base = rows[i - i % 2].1;
        let vs = if i % 2 == 0 {
            "—".to_string()
        } else {
            format!(
                "{:+.1} MiB ({:.2}×)",
                (*b as f64 - base.1 as f64) / 1024.0,
                *b as f64 / base.1 as f64
            )
        };
        s += &format!(
            "| {name} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {vs} |\n",
            *a as f64 / 1024.0,
            *b as f64 / 1024.0,
            b.saturating_sub(*a) as f64 / 1024.0
        );
    }
    s
}

/// The answer to a child's `create`: objects made, failures, time (ns), first failure's CK_RV,
/// CPU time of the child meanwhile (ns).
struct Created {
    ok: u64,
    fails: u64,
    ns: u64,
    first_rv: String,
    cpu: u64,
}

impl Created {
    /// CPU time per object made or failed, ns.
    fn cpu_each(&self) -> f64 {
        self.cpu as f64 / (self.ok + self.fails).max(1) as f64
    }
}

fn create(c: &mut ChildProc, prefix: &str, n: usize) -> Created {
    let r = c.ask(&format!("create {prefix} {n}"), "created", bulk_timeout(n));
    let v: Vec<&str> = r.split_whitespace().collect();
    let num = |i: usize| v.get(i).and_then(|x| x.parse().ok());
    match (num(0), num(1), num(2), v.get(3), num(4)) {
        (Some(ok), Some(fails), Some(ns), Some(rv), Some(cpu)) => Created {
            ok,
            fails,
            ns,
            first_rv: rv.to_string(),
            cpu,
        },
        _ => panic!("bad answer from {}: created {r}", c.name),
    }
}

/// Polls the HA log `path` from byte `from` on, every 10 ms, until a line contains `needle` or
/// `limit` has passed; returns the line and the CLOCK_MONOTONIC time it was seen.
fn wait_log(path: &Path, from: u64, needle: &str, limit: Duration) -> Option<(String, u64)> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(b) = std::fs::read(path) {
            let tail = b.get(from as usize..).unwrap_or_default();
            if let Some(l) = String::from_utf8_lossy(tail)
                .lines()
                .find(|l| l.contains(needle))
            {
                return Some((l.to_string(), mono_ns()));
            }
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number after `word ` in `line`.
fn number_after(line: &str, word: &str) -> Option<u64> {
    line.split(&format!("{word} "))
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Part 7's report, and what went wrong in it: a failed creation, no reintroduction, M ≠ N, or
/// m2 not holding the data objects m0 holds (the checks of the former ha_sync test
/// `reintroduction_of_1000_objects_is_timed`, which this part replaces).
fn part7(w: &Cluster, lib: &Path, n: usize) -> (String, Vec<String>) {
    progress(&format!(
        "part 7: reintroduction of {n} objects (HASynchronize on)"
    ));
    // Direct: the same creations on m0 alone, destroyed again so that the p11ha run starts from
    // the provisioned tokens (and m0 holds nothing m2 would be owed).
    let mut d = p11kit_child(w, 0);
    let direct = create(&mut d, "bench-direct", n);
    let destroyed: u64 = d
        .ask("destroy", "destroyed", bulk_timeout(n))
        .split_whitespace()
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    drop(d);
    assert_eq!(
        destroyed, direct.ok,
        "part 7: the direct objects were not all destroyed on m0"
    );

    let synced = ConfigOpts {
        ha_synchronize: Some(true),
        ..conf(&[0, 1, 2], false)
    };
    let mut c = ha_child(w, lib, "p11ha-sync", &synced);
    let log = w.ha_log_path();
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    kill_server(w, 2);
    let ha = create(&mut c, "bench-ha", n);
    let t_ret = start_server(w, 2);
    let needle = format!("token objects to recovered token {}", w.members[2].serial);
    let seen = wait_log(&log, from, &needle, T_REINTRO);
    drop(c);
    // What m2 holds now, counted on m2 itself, and what m0 holds.
    let on_m2 = p11kit_child(w, 2).ask("count", "count", bulk_timeout(n));
    let on_m0 = p11kit_child(w, 0).ask("count", "count", bulk_timeout(n));
    let mut wrong = Vec::new();
    if ha.fails > 0 {
        wrong.push(format!(
            "{} of {n} creations through p11ha failed (first {})",
            ha.fails, ha.first_rv
        ));
    }
    match seen.as_ref().map(|(l, _)| number_after(l, "reintroducing")) {
        None => wrong.push(format!("no `{needle}` within {} s", T_REINTRO.as_secs())),
        Some(m) if m != Some(n as u64) => wrong.push(format!(
            "reintroduced {} objects, expected N = {n}",
            m.map_or("an unreadable number of".into(), |m| m.to_string())
        )),
        Some(_) => {}
    }
    if on_m2 != on_m0 {
        wrong.push(format!(
            "m2 holds {on_m2} data objects afterwards, m0 {on_m0}"
        ));
    }

    let rate = |ns: f64| format!("{:.0} objects/s", n as f64 * 1e9 / ns);
    let failed = |x: &Created| {
        if x.fails == 0 {
            "0".to_string()
        } else {
            format!("{} (first {})", x.fails, x.first_rv)
        }
    };
    let mut s = format!(
        "## 7. Reintroduction of {n} objects: p11ha over 3 remote members, HASynchronize on\n\n\
         `HASynchronize = {{ {GROUP_LABEL} = 1; }}`, AutoReconnectInterval = 1 s. m2's server is killed, then {n} \
         token data objects (CKO_DATA, CKA_TOKEN and CKA_PRIVATE true, distinct labels and values) are \
         created one after the other through p11ha, each replicated to the other up member before the \
         call returns; then m2's server is restarted. Reintroduce = m2's return (socket accepting) → \
         the HA log line `recovery attempt k reintroducing M token objects to recovered token <m2>` \
         (polled every 10 ms; includes up to 1 s of AutoReconnectInterval). Direct = the same {n} \
         creations through p11-kit-client to m0 alone (destroyed again before the p11ha run). CPU = \
         CPU time (user + sys) of the application process per creation.\n\n\
         | step | direct: p11-kit-client, m0 alone | p11ha, HASynchronize | p11ha ÷ direct (time; CPU) | failed (direct / p11ha) |\n\
         |---|---|---|---|---|\n\
         | create {n} data objects | {} ({}, CPU {}) | {} ({}, CPU {}) | ×{:.2}; CPU ×{:.2} | {} / {} |\n",
        fmt_ns(direct.ns as f64),
        rate(direct.ns as f64),
        fmt_ns(direct.cpu_each()),
        fmt_ns(ha.ns as f64),
        rate(ha.ns as f64),
        fmt_ns(ha.cpu_each()),
        ha.ns as f64 / direct.ns as f64,
        ha.cpu_each() / direct.cpu_each(),
        failed(&direct),
        failed(&ha),
    );
    match &seen {
        Some((line, t)) => {
            let took = t.saturating_sub(t_ret) as f64;
            s += &format!(
                "| reintroduce them to m2 (return → log line) | — | {} ({}) | ×{:.2} of direct create | — |\n",
                fmt_ns(took),
                rate(took),
                took / direct.ns as f64
            );
            let m = number_after(line, "reintroducing");
            s += &format!(
                "\nLog line: recovery attempt {}, M = {} reintroduced ({}); m2 holds {on_m2} data objects afterwards (m0: {on_m0}).\n",
                number_after(line, "attempt").map_or("?".into(), |k| k.to_string()),
                m.map_or("?".into(), |m| m.to_string()),
                if m == Some(n as u64) {
                    format!("= N = {n}: met")
                } else {
                    format!("expected N = {n}: MISMATCH")
                }
            );
        }
        None => {
            s += &format!(
                "| reintroduce them to m2 (return → log line) | — | not seen within {} s | — | — |\n\n\
                 m2 holds {on_m2} data objects afterwards (m0: {on_m0}).\n",
                T_REINTRO.as_secs()
            );
        }
    }
    (s, wrong)
}
