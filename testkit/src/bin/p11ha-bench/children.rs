//! Measuring child processes: `p11ha-bench --child <module> <label>` (child.rs) started in its
//! own process group, driven by one-line commands on stdin. Each is killed by process group when
//! dropped, and the cluster kills whatever is left of it on its own drop.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use p11ha_testkit::proc::{kill_group_and_wait, signal_group};
use p11ha_testkit::Cluster;

/// Bound on reaping a killed child's process group.
const REAP: Duration = Duration::from_secs(10);

/// Starts a measuring child for `module` with `env`; it answers `init <C_Initialize ns>`, then
/// `ready <VmRSS kB before loading>` (or `error ...`). Its stderr goes to `children.log` in the
/// cluster's directory.
pub fn spawn(
    w: &Cluster,
    name: &str,
    module: &Path,
    label: &str,
    env: &[(&str, String)],
) -> ChildProc {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.arg("--child")
        .arg(module)
        .arg(label)
        .env_remove("P11HA_CONF")
        .env_remove("SOFTHSM2_CONF")
        .env_remove("P11_KIT_SERVER_ADDRESS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(w.dir().join("children.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn child");
    let pgid = child.id() as i32;
    w.track_group(pgid);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    ChildProc {
        name: name.to_string(),
        rss0: 0,
        stdin: child.stdin.take(),
        child,
        pgid,
        rx,
    }
}

/// A measuring child process; killed (by process group) on drop.
pub struct ChildProc {
    pub name: String,
    /// VmRSS (kB) of the child before it loaded the module (from its `ready` line).
    pub rss0: u64,
    stdin: Option<ChildStdin>,
    child: Child,
    pgid: i32,
    rx: Receiver<String>,
}

impl ChildProc {
    pub fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// The next line from the child, or None after `timeout` or when it exited.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next line, which must start with `tag`; returns the rest.
    pub fn expect(&self, tag: &str, timeout: Duration) -> String {
        match self.recv(timeout) {
            Some(l) if l.starts_with(tag) => l[tag.len()..].trim().to_string(),
            other => panic!("child {}: expected `{tag}`, got {other:?}", self.name),
        }
    }

    /// Like [`ChildProc::expect`], None instead of a panic.
    pub fn expect_opt(&self, tag: &str, timeout: Duration) -> Option<String> {
        self.recv(timeout)
            .filter(|l| l.starts_with(tag))
            .map(|l| l[tag.len()..].trim().to_string())
    }

    pub fn ask(&mut self, line: &str, tag: &str, timeout: Duration) -> String {
        self.send(line);
        self.expect(tag, timeout)
    }

    /// Kill the child's process group now (a child stuck on a hung member).
    pub fn kill(mut self) {
        drop(self.stdin.take());
        self.kill_group();
    }

    fn kill_group(&mut self) {
        // SIGCONT first so that a child stopped with a member's group dies at once.
        signal_group(self.pgid, libc::SIGCONT);
        kill_group_and_wait(self.pgid, REAP);
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.send("quit");
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill_group();
    }
}
