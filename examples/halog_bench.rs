//! Cost of the HA log: `cargo run --release --example halog_bench [dir]`.
//!
//! Prints (1) ns per record on the caller's thread (async mode: format + enqueue), (2) records/s the
//! writer thread gets to disk, (3) ns per record in synchronous mode, (4) the latency of a fake
//! crypto-like call (about 20 us of CPU work) alone and while another thread floods the log.

use p11ha::config::LogSettings;
use p11ha::halog::HaLog;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn settings(dir: &std::path::Path) -> LogSettings {
    LogSettings {
        path: Some(dir.to_path_buf()),
        enabled: true,
        max_len: 10_000_000,
        to_stdout: false,
        retain: 0,
        to_syslog: false,
        syslog_socket: p11ha::config::DEFAULT_SYSLOG_SOCKET.into(),
    }
}

fn fake_crypto_call() -> u64 {
    // ~20 us of CPU work standing in for a sign operation on a member.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..20_000u64 {
        x = x.rotate_left(7) ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    std::hint::black_box(x)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn call_latencies(n: usize, log: Option<&HaLog>) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            fake_crypto_call();
            if let Some(log) = log {
                // A failing call that logs, as the HA layer would.
                log.drop_member("11234840370164", &format!("12348403701{:02}", i % 100));
            }
            t.elapsed()
        })
        .collect()
}

fn main() {
    let base = std::env::args().nth(1).map(std::path::PathBuf::from);
    let tmp = tempfile::Builder::new()
        .prefix("halog-bench")
        .tempdir_in(base.unwrap_or_else(std::env::temp_dir))
        .unwrap();

    // (1)+(2): a burst of N records from one thread, then flush.
    let dir = tmp.path().join("async");
    std::fs::create_dir(&dir).unwrap();
    let log = HaLog::open(&settings(&dir));
    log.mgmt_thread_start("warmup");
    log.flush();
    let n = 10_000;
    let t = Instant::now();
    for i in 0..n {
        log.recovery_failed("11234840370164", i, "1234840370164", 0x30);
    }
    let enqueue = t.elapsed();
    log.flush();
    let total = t.elapsed();
    println!(
        "async: {:.0} ns/record on the caller's thread (burst of {n}), {:.0} records/s written (burst to disk incl. flush), dropped pending {}",
        enqueue.as_nanos() as f64 / n as f64,
        n as f64 / total.as_secs_f64(),
        log.dropped_pending()
    );

    // (3): synchronous mode.
    let dir = tmp.path().join("sync");
    std::fs::create_dir(&dir).unwrap();
    let slog = HaLog::open_sync(&settings(&dir));
    let t = Instant::now();
    for i in 0..n {
        slog.recovery_failed("11234840370164", i, "1234840370164", 0x30);
    }
    println!(
        "sync:  {:.0} ns/record on the caller's thread (flock + write(2) each)",
        t.elapsed().as_nanos() as f64 / n as f64
    );

    // (4): crypto-like call latency, idle vs. another thread flooding the log.
    let calls = 2_000;
    let mut idle = call_latencies(calls, None);
    let mut logging_idle = call_latencies(calls, Some(&log));
    log.flush();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                log.config_error("flood", "a configuration message of typical length here");
                sent += 1;
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let mut busy = call_latencies(calls, Some(&log));
    let busy_window = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let dropped = log.dropped_pending();
    log.flush();
    for (name, v) in [
        ("call alone            ", &mut idle),
        ("call + 1 log record   ", &mut logging_idle),
        ("call + record, flooded", &mut busy),
    ] {
        println!(
            "{name}: p50 {:>7.1} us  p99 {:>7.1} us  max {:>8.1} us",
            percentile(v, 0.5).as_secs_f64() * 1e6,
            percentile(v, 0.99).as_secs_f64() * 1e6,
            percentile(v, 1.0).as_secs_f64() * 1e6
        );
    }
    println!(
        "flooder: {sent} records offered in {:.2} s ({:.0}/s), {dropped} dropped by the full queue at the end of the window (counted, reported in one line)",
        busy_window.as_secs_f64() + 0.05,
        sent as f64 / (busy_window.as_secs_f64() + 0.05)
    );
}
