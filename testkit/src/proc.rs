//! Process helpers: bounded waits, process-group inspection, locating the library under test.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Poll `cond` every 20 ms until it is true or `timeout` passes. Returns whether it became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// State, ppid and pgrp of a process from /proc/PID/stat (the command name may hold spaces).
fn stat_of(pid: i32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process (present and not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    matches!(stat_of(pid), Some((st, _, _)) if st != 'Z' && st != 'X')
}

/// Live (non-zombie) processes whose process group is `pgid`. Zombies are ignored: children of a
/// killed p11-kit server are re-parented to PID 1, which may be slow (or never) to reap them.
pub fn live_pids_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some((st, _, pg)) = stat_of(pid) {
                if pg == pgid && st != 'Z' && st != 'X' {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Send `sig` to every process of group `pgid`. Errors (group already gone) are ignored.
pub fn signal_group(pgid: i32, sig: i32) {
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    // SAFETY: plain syscall; a negative pid addresses the process group.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Kill a process group and wait (bounded) until no live member of it remains.
pub fn kill_group_and_wait(pgid: i32, timeout: Duration) -> bool {
    signal_group(pgid, libc::SIGKILL);
    wait_until(timeout, || live_pids_in_group(pgid).is_empty())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).ok()?.modified().ok()
}

/// The `libp11ha.so` under test, measured or demonstrated.
///
/// `P11HA_LIB` overrides. Otherwise the freshest of `<dir of this exe>/libp11ha.so` and
/// `<that dir>/../libp11ha.so`. For a test exe in `target/<profile>/deps/` that is
/// `deps/libp11ha.so` (which `cargo test` rebuilds, no hash in the name) or
/// `target/<profile>/libp11ha.so` (refreshed by `cargo build` but not always by `cargo test`);
/// for `target/<profile>/p11ha-bench` the latter; for `target/<profile>/examples/demo` too.
pub fn p11ha_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("P11HA_LIB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe dir").to_path_buf();
    let mut candidates = vec![deps.join("libp11ha.so")];
    if let Some(profile) = deps.parent() {
        candidates.push(profile.join("libp11ha.so"));
    }
    candidates
        .into_iter()
        .filter_map(|p| mtime(&p).map(|t| (t, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "libp11ha.so not found next to {} or in its parent: run `cargo build` (same profile) or set P11HA_LIB",
                exe.display()
            )
        })
}
