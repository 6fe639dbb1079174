//! Latency statistics and the monotonic clock shared by parent and children.

/// CLOCK_MONOTONIC in ns: the same clock in every process of the machine.
pub fn mono_ns() -> u64 {
    // SAFETY: plain syscall into a local struct.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) this process used so far, every thread included, in ns.
pub fn cpu_ns() -> u64 {
    // SAFETY: plain syscall into a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One measurement: operations, failures, latency percentiles (ns), elapsed time (ns), CPU
/// time of the whole process meanwhile (ns).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub n: u64,
    pub fails: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    pub elapsed: u64,
    pub cpu: u64,
}

impl Stats {
    pub fn of(lats: &mut [u32], fails: u64, elapsed: u64) -> Stats {
        lats.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lats.is_empty() {
                0
            } else {
                let i = ((lats.len() as f64 * p).ceil() as usize).clamp(1, lats.len()) - 1;
                u64::from(lats[i])
            }
        };
        Stats {
            n: lats.len() as u64,
            fails,
            p50: pct(0.50),
            p99: pct(0.99),
            max: lats.last().copied().map_or(0, u64::from),
            elapsed,
            cpu: 0,
        }
    }

    pub fn ops_per_s(&self) -> f64 {
        if self.elapsed == 0 {
            0.0
        } else {
            self.n as f64 * 1e9 / self.elapsed as f64
        }
    }

    /// CPU time per operation, ns.
    pub fn cpu_per_op(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.cpu as f64 / self.n as f64
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.n, self.fails, self.p50, self.p99, self.max, self.elapsed, self.cpu
        )
    }

    pub fn decode(s: &str) -> Option<Stats> {
        let v: Vec<u64> = s
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        (v.len() == 7).then(|| Stats {
            n: v[0],
            fails: v[1],
            p50: v[2],
            p99: v[3],
            max: v[4],
            elapsed: v[5],
            cpu: v[6],
        })
    }
}

/// Median of a list of values (NaN-free).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Rounds of one contender in one cell: median ops/s, p50, p99, CPU per operation and the
/// total failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub ops: f64,
    pub p50: f64,
    pub p99: f64,
    pub cpu: f64,
    pub fails: u64,
}

pub fn summarize(rounds: &[Stats]) -> Summary {
    Summary {
        ops: median(rounds.iter().map(Stats::ops_per_s).collect()),
        p50: median(rounds.iter().map(|s| s.p50 as f64).collect()),
        p99: median(rounds.iter().map(|s| s.p99 as f64).collect()),
        cpu: median(rounds.iter().map(Stats::cpu_per_op).collect()),
        fails: rounds.iter().map(|s| s.fails).sum(),
    }
}

/// A latency in ns, human-readable.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.0} µs", ns / 1e3)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}
