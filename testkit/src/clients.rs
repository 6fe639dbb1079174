//! Running commands with a time bound: the real-client scripts of `tests/clients/`, the C client
//! of `tests/c/`, and the tools the fixtures use (softhsm2-util, pkcs11-tool, openssl).

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::proc::{kill_group_and_wait, signal_group};
use crate::repo_dir;

/// Names accepted by [`run_client`], one script each in `tests/clients/`.
pub const CLIENTS: &[&str] = &[
    "pkcs11-tool",
    "openssl-engine",
    "p11tool",
    "ssh-keygen",
    "pykcs11",
    "pkcs11-spy",
];

/// Default time bound of one client run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Outcome of one bounded command run.
#[derive(Debug)]
pub struct ClientRun {
    pub what: String,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl ClientRun {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }
    /// Exit code (None when killed by a signal or timed out).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// Terminating signal, if any (SIGPIPE = 13).
    pub fn signal(&self) -> Option<i32> {
        self.status.and_then(|s| s.signal())
    }
    /// Panic with everything the command printed unless it succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success(), "{} failed:\n{}", self.what, self.describe());
        self
    }
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {:?} timed_out: {} elapsed: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Run `cmd` in its own process group with stdout/stderr captured. On timeout the whole group
/// is SIGKILLed. Never leaves a process behind in that group.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> ClientRun {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    let pgid = child.id() as i32;
    let out = reader(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(st) => break Some(st),
            None if start.elapsed() >= timeout => {
                timed_out = true;
                signal_group(pgid, libc::SIGKILL);
                break child.wait().ok();
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    // Whatever the leader left running in its group (it should be nothing) goes too, so the
    // pipe readers see EOF.
    kill_group_and_wait(pgid, Duration::from_secs(5));
    ClientRun {
        what,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// [`run_cmd`] on a background thread (e.g. a load running while a test kills a member).
pub fn run_cmd_bg(cmd: Command, timeout: Duration) -> thread::JoinHandle<ClientRun> {
    thread::spawn(move || run_cmd(cmd, timeout))
}

/// A command line for the C client built by [`build_c_client`]: `-m module -t label` + `args`
/// (`-n THREADS -d SECONDS -c COUNT -i IDLE_MS -q -p PIN`).
pub fn c_client_cmd(exe: &Path, module: &Path, label: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("-m").arg(module).args(["-t", label]).args(args);
    cmd
}

/// `(ok, failed)` from the C client's summary line `ok=N failed=M ...` (None: no summary, e.g.
/// the client died of a signal).
pub fn c_client_counts(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.starts_with("ok="))?;
    let mut it = line.split_whitespace();
    let ok = it.next()?.strip_prefix("ok=")?.parse().ok()?;
    let failed = it.next()?.strip_prefix("failed=")?.parse().ok()?;
    Some((ok, failed))
}

/// Run a command that must succeed (fixture set-up); panics with its output otherwise.
pub fn checked(cmd: Command) -> String {
    let r = run_cmd(cmd, Duration::from_secs(60));
    r.assert_ok();
    r.stdout
}

/// `tests/clients/` of the p11ha repository.
pub fn clients_dir() -> PathBuf {
    repo_dir().join("tests/clients")
}

/// The script for a client name of [`CLIENTS`].
pub fn client_script(name: &str) -> PathBuf {
    let dir = clients_dir();
    for ext in ["sh", "py"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.exists() {
            return p;
        }
    }
    panic!(
        "no client script {name}.sh or {name}.py in {}",
        dir.display()
    );
}

/// Run the real-client script `name` (see [`CLIENTS`]) against PKCS#11 module `module` and the
/// token labelled `label`, bounded by [`CLIENT_TIMEOUT`].
pub fn run_client(name: &str, module: &Path, label: &str) -> ClientRun {
    run_client_env(name, module, label, &[])
}

/// [`run_client`] with extra environment for the module (`P11HA_CONF`, `SOFTHSM2_CONF` or
/// `P11_KIT_SERVER_ADDRESS`). The test process's environment is not changed.
pub fn run_client_env(name: &str, module: &Path, label: &str, env: &[(&str, &OsStr)]) -> ClientRun {
    let script = client_script(name);
    let mut cmd = Command::new(&script);
    cmd.arg(module).arg(label);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, CLIENT_TIMEOUT)
}

/// Compile `tests/c/ha_client.c` into `out_dir/ha_client` and return its path.
pub fn build_c_client(out_dir: &Path) -> PathBuf {
    let src = repo_dir().join("tests/c/ha_client.c");
    let exe = out_dir.join("ha_client");
    let mut cmd = Command::new("cc");
    cmd.args([
        "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
    ])
    .arg("-I/usr/include/p11-kit-1")
    .arg(&src)
    .arg("-o")
    .arg(&exe)
    .arg("-ldl");
    checked(cmd);
    exe
}

/// Compile `tests/c/<name>.c`, a C test program like the C client (same flags, and
/// `include/p11ha.h` on the include path), into `out_dir/<name>`; returns its path.
pub fn build_c_program(name: &str, out_dir: &Path) -> PathBuf {
    let src = repo_dir().join(format!("tests/c/{name}.c"));
    let exe = out_dir.join(name);
    let mut cmd = Command::new("cc");
    cmd.args([
        "-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread",
    ])
    .arg("-I/usr/include/p11-kit-1")
    .arg(format!("-I{}", repo_dir().join("include").display()))
    .arg(&src)
    .arg("-o")
    .arg(&exe)
    .arg("-ldl");
    checked(cmd);
    exe
}

/// Compile the fault-injection pass-through module `tests/c/fault_module.c` into
/// `out_dir/fault.so`; returns its path. (One loaded copy is one set of faults: give each member
/// its own copy of the file, see [`crate::setup`].)
pub fn build_fault_module(out_dir: &Path) -> PathBuf {
    let src = repo_dir().join("tests/c/fault_module.c");
    let lib = out_dir.join("fault.so");
    let mut cmd = Command::new("cc");
    cmd.args([
        "-shared", "-fPIC", "-O1", "-g", "-Wall", "-Wextra", "-Werror",
    ])
    .arg("-I/usr/include/p11-kit-1")
    .arg("-o")
    .arg(&lib)
    .arg(&src)
    .arg("-ldl");
    checked(cmd);
    lib
}
