//! The writer: rotation, no lost/duplicated/torn lines across processes and threads, and the
//! stderr line of a disabled log. Child processes re-execute this test binary (env `HALOG_CHILD`).

use p11ha::config::LogSettings;
use p11ha::halog::HaLog;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn settings(dir: &Path, max_len: u64) -> LogSettings {
    LogSettings {
        path: Some(dir.to_path_buf()),
        enabled: true,
        max_len,
        to_stdout: false,
        retain: 0,
        to_syslog: false,
        syslog_socket: p11ha::config::DEFAULT_SYSLOG_SOCKET.into(),
    }
}

/// (rotated files sorted by name, current file).
fn log_files(dir: &Path) -> (Vec<PathBuf>, PathBuf) {
    let mut rotated = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "haErrorLog.txt" || name == ".haErrorLog.lock" {
            continue;
        }
        // haErrorLog.20261121T092301.000123456Z.txt
        assert!(
            name.starts_with("haErrorLog.") && name.ends_with("Z.txt"),
            "{name}"
        );
        let stamp = &name["haErrorLog.".len()..name.len() - "Z.txt".len()];
        assert_eq!(stamp.len(), 15 + 1 + 9, "{name}");
        assert_eq!(&stamp[8..9], "T");
        assert!(chrono::NaiveDateTime::parse_from_str(&stamp[..15], "%Y%m%dT%H%M%S").is_ok());
        rotated.push(dir.join(name));
    }
    rotated.sort();
    (rotated, dir.join("haErrorLog.txt"))
}

/// Every line of every file, in file order (rotated by name, then current).
fn all_lines(dir: &Path) -> (Vec<String>, usize) {
    let (rotated, current) = log_files(dir);
    let n = rotated.len();
    let mut text = String::new();
    for f in rotated.iter().chain(std::iter::once(&current)) {
        if let Ok(t) = std::fs::read_to_string(f) {
            assert!(
                t.is_empty() || t.ends_with('\n'),
                "{} ends mid-line",
                f.display()
            );
            text.push_str(&t);
        }
    }
    (text.lines().map(str::to_owned).collect(), n)
}

/// `(group, message)` of a well-formed record line, or panic.
fn parse(line: &str) -> (String, String) {
    chrono::NaiveDateTime::parse_from_str(&line[..24], "%a %b %e %H:%M:%S %Y")
        .unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
    let rest = line[24..].strip_prefix(" : [").expect(line);
    let (pid, rest) = rest.split_once("] HA group: ").expect(line);
    assert!(pid.parse::<u32>().is_ok(), "{line}");
    let (group, msg) = rest.split_once(' ').expect(line);
    let msg = msg.strip_prefix("configuration error: ").expect(line);
    (group.to_owned(), msg.to_owned())
}

#[test]
fn rotation_with_small_max_len() {
    let dir = tempfile::tempdir().unwrap();
    let max_len = 1000;
    let log = HaLog::open_sync(&settings(dir.path(), max_len));
    for i in 0..300 {
        log.config_error("G", &format!("record {i:04} {}", "x".repeat(i % 50)));
    }
    log.flush();
    let (rotated, current) = log_files(dir.path());
    assert!(rotated.len() >= 20, "only {} rotations", rotated.len());
    for f in &rotated {
        let text = std::fs::read_to_string(f).unwrap();
        let last = text.lines().last().unwrap().len() as u64 + 1;
        let size = text.len() as u64;
        // Rotated right after the record that reached max_len, that record complete.
        assert!(
            size >= max_len && size - last < max_len,
            "{}: {size}",
            f.display()
        );
    }
    assert!(std::fs::metadata(&current).unwrap().len() < max_len);
    let (lines, _) = all_lines(dir.path());
    let seen: Vec<String> = lines.iter().map(|l| parse(l).1).collect();
    let want: Vec<String> = (0..300)
        .map(|i| format!("record {i:04} {}", "x".repeat(i % 50)))
        .collect();
    assert_eq!(seen, want, "every record exactly once, in order");
}

#[test]
fn rotation_async_and_reopen_after_removal() {
    let dir = tempfile::tempdir().unwrap();
    let log = HaLog::open(&settings(dir.path(), 500));
    for i in 0..100 {
        log.config_error("A", &format!("r{i}"));
    }
    log.flush();
    // Someone removes the current file: the next record starts a new one.
    std::fs::remove_file(dir.path().join("haErrorLog.txt")).unwrap();
    log.config_error("A", "after removal");
    log.flush();
    let text = std::fs::read_to_string(dir.path().join("haErrorLog.txt")).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.ends_with("HA group: A configuration error: after removal\n"));
    let (rotated, _) = log_files(dir.path());
    assert!(rotated.len() >= 5);
}

const PROCS: usize = 5; // 4 async + 1 sync
const THREADS: usize = 4;
const PER_THREAD: usize = 1500;
const MP_MAX_LEN: u64 = 20_000;

/// Child side of the multi-process test (does nothing unless started by it).
#[test]
fn mp_child() {
    let Ok(dir) = std::env::var("HALOG_CHILD_DIR") else {
        return;
    };
    let id: usize = std::env::var("HALOG_CHILD_ID").unwrap().parse().unwrap();
    let s = settings(Path::new(&dir), MP_MAX_LEN);
    let log = if id == PROCS - 1 {
        HaLog::open_sync(&s)
    } else {
        HaLog::open(&s)
    };
    assert!(log.is_enabled());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for n in 0..PER_THREAD {
                    log.config_error(
                        &format!("P{id}"),
                        &format!("T{t} N{n:05} {}", "y".repeat(n % 40)),
                    );
                    if n % 100 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    log.flush();
    assert_eq!(log.dropped_pending(), 0);
}

fn wait_bounded(children: &mut [Child], limit: Duration) {
    let start = Instant::now();
    let mut done = vec![false; children.len()];
    while done.iter().any(|d| !d) {
        for (i, c) in children.iter_mut().enumerate() {
            if !done[i] {
                if let Some(status) = c.try_wait().unwrap() {
                    assert!(status.success(), "child {i} failed: {status}");
                    done[i] = true;
                }
            }
        }
        if start.elapsed() > limit {
            for (i, c) in children.iter_mut().enumerate() {
                if !done[i] {
                    let _ = c.kill(); // by PID, only our own children
                    let _ = c.wait();
                }
            }
            panic!("children did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn many_processes_and_threads_through_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = (0..PROCS)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", "mp_child", "--nocapture", "--test-threads=1"])
                .env("HALOG_CHILD_DIR", dir.path())
                .env("HALOG_CHILD_ID", id.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_bounded(&mut children, Duration::from_secs(120));

    let (lines, rotations) = all_lines(dir.path());
    assert!(rotations >= 10, "only {rotations} rotations");
    assert_eq!(
        lines.len(),
        PROCS * THREADS * PER_THREAD,
        "lost or duplicated lines"
    );
    // Per writer (process, thread): every sequence number exactly once and in order, which also
    // shows the rotated files sort in time order.
    let mut next: HashMap<(String, String), usize> = HashMap::new();
    for line in &lines {
        let (group, msg) = parse(line);
        let mut parts = msg.splitn(3, ' ');
        let t = parts.next().unwrap().to_owned();
        let n: usize = parts.next().unwrap()[1..].parse().expect(line);
        assert_eq!(
            parts.next().unwrap_or(""),
            "y".repeat(n % 40),
            "torn: {line}"
        );
        let expect = next.entry((group.clone(), t.clone())).or_insert(0);
        assert_eq!(
            n, *expect,
            "{group} {t}: out of order or duplicated: {line}"
        );
        *expect += 1;
    }
    assert_eq!(next.len(), PROCS * THREADS);
    assert!(next.values().all(|&n| n == PER_THREAD));
}

/// Child side of the stderr test.
#[test]
fn stderr_child() {
    let Ok(dir) = std::env::var("HALOG_STDERR_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let log = HaLog::open(&settings(&dir.join("missing"), 0));
    assert!(!log.is_enabled());
    log.members_offline("G");
    log.flush();
    let log = HaLog::open(&settings(&dir.join("file"), 0));
    assert!(!log.is_enabled());
    let log = HaLog::open(&settings(Path::new("/proc"), 0));
    assert!(!log.is_enabled());
}

/// A missing directory, a file, and /proc (which exists, but where nothing can be created).
#[test]
fn missing_directory_one_stderr_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "").unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stderr_child", "--nocapture", "--test-threads=1"])
        .env("HALOG_STDERR_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p11ha:")).collect();
    let d = dir.path().display();
    assert_eq!(
        ours,
        vec![
            format!("p11ha: HA log disabled: {d}/missing: directory does not exist"),
            format!("p11ha: HA log disabled: {d}/file: not a directory"),
            "p11ha: HA log disabled: /proc: cannot open or create .haErrorLog.lock: /proc is on a \
             proc file system, where files cannot be created (ENOENT)"
                .to_string(),
        ]
    );
}

#[test]
fn to_stdout_copies_lines() {
    let Ok(dir) = std::env::var("HALOG_STDOUT_DIR") else {
        // Parent: run ourselves as the child and look at stdout.
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "to_stdout_copies_lines",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HALOG_STDOUT_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let file = std::fs::read_to_string(dir.path().join("haErrorLog.txt")).unwrap();
        assert_eq!(file.lines().count(), 1);
        assert!(stdout.contains(&file), "{stdout:?}");
        return;
    };
    let mut s = settings(Path::new(&dir), 0);
    s.to_stdout = true;
    let log = HaLog::open(&s);
    log.new_member("G", "123");
    log.flush();
}
