//! The benchmark's own world: SoftHSM tokens with identical keys, `p11-kit server` members, p11ha
//! configurations, and child processes, each in its own process group. [`World`]'s Drop kills
//! every process group it started (by PGID, never by name) and removes its directory, also when
//! the benchmark panics. (Adapted from tests/support/cluster.rs.)

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SOFTHSM_LIB: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const P11KIT_CLIENT_LIB: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
pub const GROUP_LABEL: &str = "hagroup";
const SO_PIN: &str = "12345678";

fn checked(mut c: Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn signal_group(pgid: i32, sig: i32) {
    assert!(pgid > 1, "refusing to signal process group {pgid}");
    // SAFETY: plain syscall; a negative pid addresses the process group.
    unsafe { libc::kill(-pgid, sig) };
}

/// Live (non-zombie) processes of group `pgid`.
fn live_in_group(pgid: i32) -> usize {
    let mut n = 0;
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().take(3).collect();
        if f.len() == 3 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X" {
            n += 1;
        }
    }
    n
}

/// SIGKILL a process group and wait (bounded) until none of it is alive.
fn kill_group(pgid: i32) {
    signal_group(pgid, libc::SIGKILL);
    let end = Instant::now() + Duration::from_secs(10);
    while live_in_group(pgid) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub struct Member {
    pub label: String,
    pub serial: String,
    pub conf: PathBuf,
    pub sock: PathBuf,
}

impl Member {
    pub fn address(&self) -> String {
        format!("unix:path={}", self.sock.display())
    }
}

/// p11ha configuration knobs the benchmark varies.
#[derive(Clone)]
pub struct Conf {
    /// Member indexes.
    pub members: Vec<usize>,
    /// Members through their own copy of libsofthsm2.so instead of p11-kit-client.
    pub direct: bool,
    pub receive_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub auto_reconnect_interval: u64,
    /// `HASynchronize = { <group label> = 1; }`: object synchronization on.
    pub sync: bool,
}

impl Conf {
    pub fn new(members: &[usize], direct: bool) -> Conf {
        Conf {
            members: members.to_vec(),
            direct,
            receive_timeout_ms: 1000,
            connect_timeout_ms: 2000,
            auto_reconnect_interval: 1,
            sync: false,
        }
    }
}

struct Server {
    child: Child,
    pgid: i32,
}

pub struct World {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    servers: Mutex<Vec<Option<Server>>>,
    pgids: Mutex<Vec<i32>>,
    confs: Mutex<u32>,
}

impl World {
    /// `n` provisioned tokens in a fresh short directory under /tmp; no server started.
    pub fn new(n: usize) -> World {
        let dir = PathBuf::from(format!("/tmp/p11hab-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("keys")).unwrap();
        let mut w = World {
            dir: dir.clone(),
            members: Vec::new(),
            servers: Mutex::new((0..n).map(|_| None).collect()),
            pgids: Mutex::new(Vec::new()),
            confs: Mutex::new(0),
        };
        generate_keys(&dir.join("keys"));
        w.members = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let d = &dir;
                    s.spawn(move || provision(d, i))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("provisioning"))
                .collect()
        });
        w
    }

    fn register(&self, pgid: i32) {
        self.pgids.lock().unwrap().push(pgid);
    }

    /// Start member `i`'s p11-kit server and wait until its socket accepts; returns the
    /// CLOCK_MONOTONIC time at which it did.
    pub fn start_server(&self, i: usize) -> u64 {
        let m = &self.members[i];
        let _ = fs::remove_file(&m.sock);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("m{i}.server.log")))
            .unwrap();
        let mut child = Command::new("p11-kit")
            .args(["server", "-f", "--provider", SOFTHSM_LIB, "-n"])
            .arg(&m.sock)
            .arg(format!("pkcs11:token={}", m.label))
            .env("SOFTHSM2_CONF", &m.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn p11-kit server");
        let pgid = child.id() as i32;
        self.register(pgid);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if UnixStream::connect(&m.sock).is_ok() {
                break;
            }
            if Instant::now() > end || matches!(child.try_wait(), Ok(Some(_))) {
                kill_group(pgid);
                let _ = child.wait();
                panic!("p11-kit server for m{i} did not come up");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let t = crate::stats::mono_ns();
        self.servers.lock().unwrap()[i] = Some(Server { child, pgid });
        t
    }

    /// SIGKILL member `i`'s server group; returns the CLOCK_MONOTONIC time of the signal.
    pub fn kill_server(&self, i: usize) -> u64 {
        let s = self.servers.lock().unwrap()[i].take();
        let t = crate::stats::mono_ns();
        if let Some(mut s) = s {
            kill_group(s.pgid);
            let _ = s.child.wait();
        }
        t
    }

    fn server_pgid(&self, i: usize) -> i32 {
        self.servers.lock().unwrap()[i]
            .as_ref()
            .map(|s| s.pgid)
            .expect("server running")
    }

    /// SIGSTOP (hang) member `i`'s server group; returns the time of the signal.
    pub fn stop_server(&self, i: usize) -> u64 {
        let pg = self.server_pgid(i);
        let t = crate::stats::mono_ns();
        signal_group(pg, libc::SIGSTOP);
        t
    }

    pub fn cont_server(&self, i: usize) {
        signal_group(self.server_pgid(i), libc::SIGCONT);
    }

    /// A private copy of libsofthsm2.so (a distinct SoftHSM instance in one process).
    pub fn softhsm_copy(&self, name: &str) -> PathBuf {
        let libdir = self.dir.join("lib");
        fs::create_dir_all(&libdir).unwrap();
        let p = libdir.join(format!("softhsm-{name}.so"));
        if !p.exists() {
            fs::copy(SOFTHSM_LIB, &p).unwrap();
        }
        p
    }

    /// Writes a Chrystoki.conf for p11ha; returns its path.
    pub fn write_config(&self, c: &Conf) -> PathBuf {
        let n = {
            let mut g = self.confs.lock().unwrap();
            *g += 1;
            *g
        };
        let serials: Vec<&str> = c
            .members
            .iter()
            .map(|&i| self.members[i].serial.as_str())
            .collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "VirtualToken = {{\n   VirtualToken00Label = {GROUP_LABEL};\n   VirtualToken00SN = 1234;\n   VirtualToken00Members = {};\n   VirtualTokenActiveRecovery = activeEnhanced;\n}}",
            serials.join(", ")
        );
        if c.sync {
            let _ = writeln!(s, "HASynchronize = {{\n   {GROUP_LABEL} = 1;\n}}");
        }
        let _ = writeln!(
            s,
            "HAConfiguration = {{\n   HAOnly = 1;\n   haLogPath = {};\n   haLogStatus = enabled;\n   reconnAtt = -1;\n   AutoReconnectInterval = {};\n   ReceiveTimeout = {};\n   ConnectTimeout = {};\n}}",
            self.dir.join("log").display(),
            c.auto_reconnect_interval,
            c.receive_timeout_ms,
            c.connect_timeout_ms
        );
        fs::create_dir_all(self.dir.join("log")).unwrap();
        let _ = writeln!(s, "HAProviders = {{");
        for (n, &i) in c.members.iter().enumerate() {
            let m = &self.members[i];
            let (lib, env) = if c.direct {
                (
                    self.softhsm_copy(&format!("m{i}")),
                    format!("SOFTHSM2_CONF={}", m.conf.display()),
                )
            } else {
                (
                    PathBuf::from(P11KIT_CLIENT_LIB),
                    format!("P11_KIT_SERVER_ADDRESS={}", m.address()),
                )
            };
            let _ = writeln!(s, "   Provider{n:02}Library = {};", lib.display());
            let _ = writeln!(s, "   Provider{n:02}Env = {env};");
        }
        let _ = writeln!(s, "}}");
        let path = self.dir.join(format!("Chrystoki{n}.conf"));
        fs::write(&path, s).unwrap();
        path
    }

    /// The HA log every configuration of [`World::write_config`] writes to
    /// (`<haLogPath>/haErrorLog.txt`; it need not exist yet).
    pub fn ha_log(&self) -> PathBuf {
        self.dir.join("log").join("haErrorLog.txt")
    }

    /// Starts a measuring child (own process group) for `module` with `env`; it answers `init
    /// <C_Initialize ns>`, then `ready <VmRSS kB before loading>` (or `error ...`).
    pub fn child(
        &self,
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
                    .open(self.dir.join("children.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let pgid = child.id() as i32;
        self.register(pgid);
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = unbounded();
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
}

impl Drop for World {
    fn drop(&mut self) {
        let pgids = match self.pgids.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for pg in pgids {
            signal_group(pg, libc::SIGCONT);
            if live_in_group(pg) > 0 {
                kill_group(pg);
            }
        }
        let servers = match self.servers.get_mut() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for s in servers.iter_mut().flatten() {
            let _ = s.child.wait();
        }
        if std::env::var_os("P11HA_BENCH_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
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
}

impl ChildProc {
    /// Kill the child's process group now (a child stuck on a hung member).
    pub fn kill(mut self) {
        drop(self.stdin.take());
        signal_group(self.pgid, libc::SIGCONT);
        kill_group(self.pgid);
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
        signal_group(self.pgid, libc::SIGCONT);
        kill_group(self.pgid);
        let _ = self.child.wait();
    }
}

const IMPORT_SECRETS_PY: &str = r#"
import sys, PyKCS11
from PyKCS11 import *
lib = PyKCS11Lib(); lib.load(sys.argv[1])
slot = [s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == sys.argv[2]][0]
s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
s.login(sys.argv[3])
for path, kt, kid, label in ((sys.argv[4], CKK_AES, 3, "aes"), (sys.argv[5], CKK_GENERIC_SECRET, 4, "hmac")):
    value = open(path, "rb").read()
    s.createObject([
        (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, kt), (CKA_TOKEN, CK_TRUE), (CKA_PRIVATE, CK_TRUE),
        (CKA_SENSITIVE, CK_TRUE), (CKA_EXTRACTABLE, CK_FALSE), (CKA_ID, (kid,)), (CKA_LABEL, label),
        (CKA_VALUE, tuple(value)), (CKA_SIGN, CK_TRUE), (CKA_VERIFY, CK_TRUE),
        (CKA_ENCRYPT, CK_TRUE), (CKA_DECRYPT, CK_TRUE),
    ])
s.logout(); s.closeSession()
"#;

fn generate_keys(dir: &Path) {
    let openssl = |args: &[&str]| {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(dir);
        checked(c);
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    openssl(&[
        "pkey",
        "-in",
        "rsa.pem",
        "-pubout",
        "-outform",
        "DER",
        "-out",
        "rsa.pub.der",
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "ec.pem",
    ]);
    openssl(&[
        "pkey",
        "-in",
        "ec.pem",
        "-pubout",
        "-outform",
        "DER",
        "-out",
        "ec.pub.der",
    ]);
    openssl(&["rand", "-out", "aes.bin", "32"]);
    openssl(&["rand", "-out", "hmac.bin", "32"]);
}

fn provision(dir: &Path, i: usize) -> Member {
    let label = format!("m{i}");
    let token_dir = dir.join("tokens").join(&label);
    fs::create_dir_all(&token_dir).unwrap();
    let conf = dir.join(format!("{label}.softhsm2.conf"));
    fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            token_dir.display()
        ),
    )
    .unwrap();
    let util = |args: &[&str]| {
        let mut c = Command::new("softhsm2-util");
        c.args(args).env("SOFTHSM2_CONF", &conf);
        checked(c)
    };
    util(&[
        "--init-token",
        "--free",
        "--label",
        &label,
        "--so-pin",
        SO_PIN,
        "--pin",
        crate::ck::USER_PIN,
    ]);
    let serial = parse_serial(&util(&["--show-slots"]), &label)
        .unwrap_or_else(|| panic!("no serial for token {label}"));
    let keys = dir.join("keys");
    let write = |file: &str, ty: &str, id: &str, usage: &[&str]| {
        let mut c = Command::new("pkcs11-tool");
        c.args(["--module", SOFTHSM_LIB, "--token-label", &label, "--login"])
            .args(["--pin", crate::ck::USER_PIN, "--write-object"])
            .arg(keys.join(file))
            .args(["--type", ty, "--id", id])
            .args(usage)
            .env("SOFTHSM2_CONF", &conf);
        checked(c);
    };
    let priv_usage = ["--usage-sign", "--private", "--sensitive"];
    write("rsa.pem", "privkey", "01", &priv_usage);
    write("rsa.pub.der", "pubkey", "01", &[]);
    write("ec.pem", "privkey", "02", &priv_usage);
    write("ec.pub.der", "pubkey", "02", &[]);
    let mut py = Command::new("/usr/bin/python3");
    py.args([
        "-c",
        IMPORT_SECRETS_PY,
        SOFTHSM_LIB,
        &label,
        crate::ck::USER_PIN,
    ])
    .arg(keys.join("aes.bin"))
    .arg(keys.join("hmac.bin"))
    .env("SOFTHSM2_CONF", &conf);
    checked(py);
    Member {
        sock: dir.join(format!("{label}.sock")),
        label,
        serial,
        conf,
    }
}

fn parse_serial(out: &str, label: &str) -> Option<String> {
    let mut last = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Serial number:") {
            last = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("Label:") {
            if v.trim() == label {
                return last.filter(|s| !s.is_empty());
            }
        }
    }
    None
}
