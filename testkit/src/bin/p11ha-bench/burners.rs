//! Part 13 (issue 17): ECDSA at 1 thread, p11ha against direct, first on a quiet machine, then
//! with [`BURNERS`] CPU-burner processes running. p11ha hands each call to a pool thread and
//! waits for it, so every call needs the scheduler twice more than a direct call; what that
//! costs when the CPUs are contended is the loss of the ratio to direct.
//!
//! A burner is this executable re-executed as `p11ha-bench --burn <parent pid> <max s>` (a
//! busy loop, [`burn`]), in a process group of its own that the cluster tracks: it is killed
//! by PGID when the part ends ([`Burners`]' drop), when the cluster is dropped (also on a
//! panic), by the kernel when the bench dies (PR_SET_PDEATHSIG), and it ends by itself once
//! its parent is gone or `max s` have passed.

use crate::destroys::loadavg;
use crate::stats::{fmt_ns, Summary};
use crate::{alternate, conf, ha_child, ops, p11kit_child, progress, softhsm_child, Params};
use p11ha_testkit::proc::kill_group_and_wait;
use p11ha_testkit::Cluster;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Burner processes in the burdened half.
pub const BURNERS: usize = 4;
/// A burner's own bound on its life (the part takes well under a minute).
const BURN_MAX_S: u64 = 300;
/// Target: quiet ratio − burdened ratio.
const MAX_LOSS: f64 = 0.05;

/// The burner's side: spin until killed, until `parent` is no longer this process's parent,
/// or for `max_s` seconds.
pub fn burn(parent: &str, max_s: &str) {
    // SAFETY: prctl with constant arguments; SIGKILL once the thread that spawned us exits.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    }
    let parent: u32 = parent.parse().unwrap_or(0);
    let end = Instant::now() + Duration::from_secs(max_s.parse().unwrap_or(BURN_MAX_S));
    let mut x: u64 = 1;
    while std::os::unix::process::parent_id() == parent && Instant::now() < end {
        // A few ms of pure user-space work between the checks.
        for _ in 0..1_000_000 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

/// Running burner processes; killed by process group on drop.
pub struct Burners {
    procs: Vec<(Child, i32)>,
}

impl Burners {
    pub fn start(w: &Cluster, n: usize) -> Burners {
        let exe = std::env::current_exe().expect("current_exe");
        let procs = (0..n)
            .map(|_| {
                let child = Command::new(&exe)
                    .arg("--burn")
                    .arg(std::process::id().to_string())
                    .arg(BURN_MAX_S.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("spawn burner");
                let pgid = child.id() as i32;
                w.track_group(pgid);
                (child, pgid)
            })
            .collect();
        // Let the scheduler see them as the CPU hogs they are before anything is measured.
        std::thread::sleep(Duration::from_millis(200));
        Burners { procs }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for (child, pgid) in &mut self.procs {
            kill_group_and_wait(*pgid, Duration::from_secs(10));
            let _ = child.wait();
        }
    }
}

/// Part 13's report. In the quick run 3 rounds of 100 ms slices (a few seconds in all), else
/// `p.rounds + 2` rounds of `p.slice_ms`.
pub fn part13(w: &Cluster, lib: &Path, p: &Params) -> String {
    progress(&format!(
        "part 13: ECDSA 1 thread, quiet and with {BURNERS} CPU burners"
    ));
    let q = Params {
        rounds: if p.rounds == 1 { 3 } else { p.rounds + 2 },
        slice_ms: p.slice_ms,
        reps: p.reps,
        objects: p.objects,
    };
    let load0 = loadavg();
    let cells = [("ecdsa", 1usize)];
    let mut rows = Vec::new();
    for remote in [false, true] {
        let mut cs = if remote {
            vec![
                p11kit_child(w, 0),
                ha_child(w, lib, "p11ha-burn-r1", &conf(&[0], false)),
            ]
        } else {
            vec![
                softhsm_child(w),
                ha_child(w, lib, "p11ha-burn-1", &conf(&[0], true)),
            ]
        };
        let quiet = alternate(&mut cs, &cells, &q);
        let burners = Burners::start(w, BURNERS);
        let burdened = alternate(&mut cs, &cells, &q);
        drop(burners);
        rows.push((
            remote,
            [quiet[0][0], quiet[0][1]],
            [burdened[0][0], burdened[0][1]],
        ));
    }
    let load1 = loadavg();
    let mut s = format!(
        "## 13. ECDSA P-256 sign, 1 thread, quiet and with {BURNERS} CPU burners (issue 17)\n\n\
         Load average {load0} at the start, {load1} at the end. Quiet: direct and p11ha alternate in \
         {} rounds of {} ms slices; burdened: the same with {BURNERS} busy-loop processes running \
         ({} CPUs). Cell: ops/s, p50, CPU per operation. Ratio = p11ha ops/s ÷ direct; CPU ÷ = \
         p11ha CPU per operation ÷ direct; loss = quiet ratio − burdened ratio.\n\n\
         | case | quiet: direct | quiet: p11ha | ratio | CPU ÷ | burdened: direct | burdened: p11ha | ratio | CPU ÷ | loss | target | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        q.rounds,
        q.slice_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let cell = |x: Summary| {
        format!(
            "{} /s, {}, CPU {}",
            ops(x.ops),
            fmt_ns(x.p50),
            fmt_ns(x.cpu)
        )
    };
    for (remote, [qd, qh], [bd, bh]) in rows {
        let (qr, br) = (qh.ops / qd.ops, bh.ops / bd.ops);
        let loss = qr - br;
        s += &format!(
            "| {} | {} | {} | {qr:.3} | {:.2} | {} | {} | {br:.3} | {:.2} | {loss:+.3} | ≤ {MAX_LOSS}: {} | {} |\n",
            if remote {
                "p11-kit-client direct vs p11ha, 1 remote member"
            } else {
                "in-process SoftHSM direct vs p11ha, 1 member"
            },
            cell(qd),
            cell(qh),
            qh.cpu / qd.cpu,
            cell(bd),
            cell(bh),
            bh.cpu / bd.cpu,
            if loss <= MAX_LOSS { "met" } else { "MISSED" },
            qd.fails + qh.fails + bd.fails + bh.fails
        );
    }
    s
}
