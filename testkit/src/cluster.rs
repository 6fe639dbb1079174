//! A set of SoftHSM member tokens with identical keys ([`crate::provision`]), optionally served
//! by `p11-kit server` processes, and the p11ha configuration that groups them.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::clients::{build_c_client, run_client_env, ClientRun};
use crate::member::MemberClient;
use crate::proc::{kill_group_and_wait, live_pids_in_group, p11ha_lib, signal_group, wait_until};
pub use crate::provision::{KeyMaterial, Member};
use crate::{GROUP_LABEL, P11KIT_CLIENT_LIB, SOFTHSM_LIB};

/// Bound on a p11-kit server becoming ready (socket accepts) and on reaping a killed one.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of [`Cluster::write_config`].
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    /// Members reached directly through per-member copies of libsofthsm2.so instead of
    /// p11-kit-client + p11-kit server.
    pub direct: bool,
    /// `ProviderNNBoundedCalls = 0` for each provider (direct members only: the configuration
    /// refuses it for p11-kit-client).
    pub unbounded_calls: bool,
    pub label: String,
    /// `VirtualToken00SN`; omitted when None.
    pub group_serial: Option<String>,
    /// Member indexes listed in `VirtualToken00Members` (default: all).
    pub members: Option<Vec<usize>>,
    /// Member indexes given a `ProviderNN` (default: all).
    pub providers: Option<Vec<usize>>,
    pub ha_only: bool,
    /// `haLogPath` (default `<cluster dir>/log`); created.
    pub log_dir: Option<PathBuf>,
    pub ha_log_enabled: bool,
    pub reconn_att: i64,
    pub auto_reconnect_interval: u64,
    pub receive_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// `VirtualTokenActiveRecovery`.
    pub active_recovery: String,
    /// `HASynchronize = { <label> = 0|1; }` when Some.
    pub ha_synchronize: Option<bool>,
    /// Raw lines added inside `HAConfiguration`.
    pub extra_ha_lines: Vec<String>,
    /// Raw lines added at the end of the file.
    pub extra_lines: Vec<String>,
    /// File name inside the cluster dir.
    pub file_name: String,
}

impl Default for ConfigOpts {
    fn default() -> Self {
        ConfigOpts {
            direct: false,
            unbounded_calls: false,
            label: GROUP_LABEL.to_string(),
            group_serial: None,
            members: None,
            providers: None,
            ha_only: true,
            log_dir: None,
            ha_log_enabled: true,
            reconn_att: -1,
            auto_reconnect_interval: 1,
            receive_timeout_ms: 2000,
            connect_timeout_ms: 2000,
            active_recovery: "activeEnhanced".to_string(),
            ha_synchronize: None,
            extra_ha_lines: Vec::new(),
            extra_lines: Vec::new(),
            file_name: "Chrystoki.conf".to_string(),
        }
    }
}

/// A module a p11-kit server serves in place of SoftHSM, and its extra environment.
#[derive(Debug, Clone)]
struct ServerProvider {
    module: PathBuf,
    env: Vec<(String, OsString)>,
}

#[derive(Debug)]
struct Server {
    child: Child,
    pgid: i32,
}

/// n SoftHSM tokens m0..m(n-1) with identical keys in a short temporary directory under /tmp.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub keys: KeyMaterial,
    servers: Mutex<Vec<Option<Server>>>,
    /// Per member: the module its server serves instead of SoftHSM, with extra environment
    /// ([`Cluster::serve_through`]).
    providers: Mutex<Vec<Option<ServerProvider>>>,
    /// Every process group ever started (checked empty on drop).
    pgids: Mutex<Vec<i32>>,
    log_dir: Mutex<PathBuf>,
    /// Set by [`Cluster::keep_dir`].
    keep: AtomicBool,
}

impl Cluster {
    /// Create and provision `n` tokens; no server is started.
    pub fn new(n: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11ha-")
            .tempdir_in("/tmp")
            .expect("temp dir in /tmp");
        let (keys, members) = crate::provision::tokens(dir.path(), n);
        let log_dir = dir.path().join("log");
        Cluster {
            servers: Mutex::new((0..n).map(|_| None).collect()),
            providers: Mutex::new((0..n).map(|_| None).collect()),
            pgids: Mutex::new(Vec::new()),
            log_dir: Mutex::new(log_dir),
            keep: AtomicBool::new(false),
            dir,
            members,
            keys,
        }
    }

    /// [`Cluster::new`] and start every member's p11-kit server.
    pub fn started(n: usize) -> Self {
        let c = Cluster::new(n);
        for i in 0..n {
            c.start_server(i);
        }
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Number of member tokens.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no member (`Cluster::new(0)`).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn serials(&self) -> Vec<String> {
        self.members.iter().map(|m| m.serial.clone()).collect()
    }

    /// Start member `i`'s p11-kit server (own process group) and wait until its socket accepts.
    /// Returns the `P11_KIT_SERVER_ADDRESS` value.
    pub fn start_server(&self, i: usize) -> String {
        let m = &self.members[i];
        let mut servers = self.servers.lock().unwrap();
        assert!(servers[i].is_none(), "server of member {i} already running");
        let _ = fs::remove_file(&m.sock);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("m{i}.server.log")))
            .unwrap();
        let provider = self.providers.lock().unwrap()[i].clone();
        let module = provider
            .as_ref()
            .map_or_else(|| PathBuf::from(SOFTHSM_LIB), |p| p.module.clone());
        let mut cmd = Command::new("p11-kit");
        cmd.args(["server", "-f", "--provider"])
            .arg(&module)
            .arg("-n")
            .arg(&m.sock)
            .arg(format!("pkcs11:token={}", m.label))
            .env("SOFTHSM2_CONF", &m.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        for (k, v) in provider.iter().flat_map(|p| &p.env) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn p11-kit server");
        let pgid = child.id() as i32;
        self.pgids.lock().unwrap().push(pgid);
        // Polled finely: p11ha-bench times a member's return from the moment its socket accepts.
        let deadline = Instant::now() + SERVER_TIMEOUT;
        let mut exited = None;
        let ready = loop {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                break false;
            }
            if UnixStream::connect(&m.sock).is_ok() {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            thread::sleep(Duration::from_micros(500));
        };
        if !ready {
            signal_group(pgid, libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "p11-kit server for m{i} not ready (exited: {exited:?}); log:\n{}",
                fs::read_to_string(self.dir().join(format!("m{i}.server.log"))).unwrap_or_default()
            );
        }
        servers[i] = Some(Server { child, pgid });
        m.address()
    }

    /// From now on member `i`'s server (every later [`Cluster::start_server`] and
    /// [`Cluster::restart`]) serves `module` with `env` added, instead of SoftHSM: e.g. the
    /// fault-injection module of `tests/c/fault_module.c` in front of SoftHSM, so that faults
    /// happen on the HSM's side of the connection.
    pub fn serve_through(&self, i: usize, module: &Path, env: &[(&str, &std::ffi::OsStr)]) {
        self.providers.lock().unwrap()[i] = Some(ServerProvider {
            module: module.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_os_string()))
                .collect(),
        });
    }

    /// Whether member `i`'s server was started and not killed.
    pub fn is_running(&self, i: usize) -> bool {
        self.servers.lock().unwrap()[i].is_some()
    }

    /// PGID (= PID of the `p11-kit server` leader) of member `i`'s running server.
    pub fn server_pgid(&self, i: usize) -> Option<i32> {
        self.servers.lock().unwrap()[i].as_ref().map(|s| s.pgid)
    }

    /// Every process group this cluster ever started (and every one given to
    /// [`Cluster::track_group`]).
    pub fn started_pgids(&self) -> Vec<i32> {
        self.pgids.lock().unwrap().clone()
    }

    /// Kill process group `pgid` (one the caller started, e.g. a measuring child) when the
    /// cluster is dropped, if it still has live processes then.
    pub fn track_group(&self, pgid: i32) {
        self.pgids.lock().unwrap().push(pgid);
    }

    /// Keep the directory (tokens, configurations, server logs) when the cluster is dropped;
    /// the processes are killed all the same.
    pub fn keep_dir(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }

    /// SIGKILL member `i`'s whole process group (server and its per-connection p11-kit-remote
    /// children) and wait until it is gone. The stale socket file stays, as after a crash.
    pub fn kill(&self, i: usize) {
        let srv = self.servers.lock().unwrap()[i].take();
        if let Some(mut s) = srv {
            reap(&mut s);
        }
    }

    /// Start member `i`'s server again on the same socket path (killing it first if running).
    pub fn restart(&self, i: usize) -> String {
        self.kill(i);
        self.start_server(i)
    }

    /// SIGSTOP member `i`'s process group: a hung member.
    pub fn stop(&self, i: usize) {
        let pgid = self.server_pgid(i).expect("member not running");
        signal_group(pgid, libc::SIGSTOP);
    }

    /// SIGCONT member `i`'s process group.
    pub fn cont(&self, i: usize) {
        let pgid = self.server_pgid(i).expect("member not running");
        signal_group(pgid, libc::SIGCONT);
    }

    /// A private copy of libsofthsm2.so for member `i` (a distinct path, hence an independent
    /// SoftHSM instance when several are loaded into one process).
    pub fn softhsm_copy(&self, i: usize) -> PathBuf {
        let libdir = self.dir().join("lib");
        fs::create_dir_all(&libdir).unwrap();
        let p = libdir.join(format!("softhsm-m{i}.so"));
        if !p.exists() {
            let tmp = libdir.join(format!(".softhsm-m{i}.so.tmp"));
            fs::copy(SOFTHSM_LIB, &tmp).unwrap();
            fs::rename(&tmp, &p).unwrap();
        }
        p
    }

    /// Write a Luna-style Chrystoki.conf for p11ha; returns its path (tests set P11HA_CONF).
    pub fn write_config(&self, o: &ConfigOpts) -> PathBuf {
        let all: Vec<usize> = (0..self.len()).collect();
        let members = o.members.clone().unwrap_or_else(|| all.clone());
        let providers = o.providers.clone().unwrap_or(all);
        let log_dir = o.log_dir.clone().unwrap_or_else(|| self.dir().join("log"));
        fs::create_dir_all(&log_dir).unwrap();
        *self.log_dir.lock().unwrap() = log_dir.clone();

        let mut s = String::new();
        let serials: Vec<&str> = members
            .iter()
            .map(|&i| self.members[i].serial.as_str())
            .collect();
        writeln!(s, "VirtualToken = {{").unwrap();
        writeln!(s, "   VirtualToken00Label = {};", o.label).unwrap();
        if let Some(sn) = &o.group_serial {
            writeln!(s, "   VirtualToken00SN = {sn};").unwrap();
        }
        writeln!(s, "   VirtualToken00Members = {};", serials.join(", ")).unwrap();
        writeln!(s, "   VirtualTokenActiveRecovery = {};", o.active_recovery).unwrap();
        writeln!(s, "}}").unwrap();
        if let Some(sync) = o.ha_synchronize {
            writeln!(
                s,
                "HASynchronize = {{\n   {} = {};\n}}",
                o.label,
                u8::from(sync)
            )
            .unwrap();
        }
        writeln!(s, "HAConfiguration = {{").unwrap();
        writeln!(s, "   HAOnly = {};", u8::from(o.ha_only)).unwrap();
        writeln!(s, "   haLogPath = {};", log_dir.display()).unwrap();
        let status = if o.ha_log_enabled {
            "enabled"
        } else {
            "disabled"
        };
        writeln!(s, "   haLogStatus = {status};").unwrap();
        writeln!(s, "   reconnAtt = {};", o.reconn_att).unwrap();
        writeln!(
            s,
            "   AutoReconnectInterval = {};",
            o.auto_reconnect_interval
        )
        .unwrap();
        writeln!(s, "   ReceiveTimeout = {};", o.receive_timeout_ms).unwrap();
        writeln!(s, "   ConnectTimeout = {};", o.connect_timeout_ms).unwrap();
        for l in &o.extra_ha_lines {
            writeln!(s, "   {l}").unwrap();
        }
        writeln!(s, "}}").unwrap();
        writeln!(s, "HAProviders = {{").unwrap();
        for (n, &i) in providers.iter().enumerate() {
            let m = &self.members[i];
            let (lib, env) = if o.direct {
                let lib = self.softhsm_copy(i);
                (lib, format!("SOFTHSM2_CONF={}", m.conf.display()))
            } else {
                (
                    PathBuf::from(P11KIT_CLIENT_LIB),
                    format!("P11_KIT_SERVER_ADDRESS={}", m.address()),
                )
            };
            writeln!(s, "   Provider{n:02}Library = {};", lib.display()).unwrap();
            writeln!(s, "   Provider{n:02}Env = {env};").unwrap();
            if o.unbounded_calls {
                writeln!(s, "   Provider{n:02}BoundedCalls = 0;").unwrap();
            }
        }
        writeln!(s, "}}").unwrap();
        for l in &o.extra_lines {
            writeln!(s, "{l}").unwrap();
        }
        let path = self.dir().join(&o.file_name);
        fs::write(&path, s).unwrap();
        path
    }

    /// HA log directory of the last written config (default `<dir>/log`).
    pub fn log_dir(&self) -> PathBuf {
        self.log_dir.lock().unwrap().clone()
    }

    /// `<log dir>/haErrorLog.txt`.
    pub fn ha_log_path(&self) -> PathBuf {
        self.log_dir().join("haErrorLog.txt")
    }

    /// Lines of the HA log (empty when it does not exist yet).
    pub fn ha_log_lines(&self) -> Vec<String> {
        fs::read_to_string(self.ha_log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait (bounded) until an HA log line contains `needle`; returns that line.
    pub fn wait_ha_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_until(timeout, || {
            found = self.ha_log_lines().into_iter().find(|l| l.contains(needle));
            found.is_some()
        });
        found
    }

    /// Direct (non-HA) client of member `i` through p11-kit-client (its server must run).
    pub fn client(&self, i: usize) -> MemberClient {
        let m = &self.members[i];
        MemberClient::via_p11kit(&m.address(), &m.label)
            .unwrap_or_else(|e| panic!("p11-kit client for m{i}: {e}"))
    }

    /// Direct (non-HA) client of member `i` through its own copy of libsofthsm2.so, bypassing
    /// the server. (SoftHSM's file store tolerates the server using the same token.)
    pub fn direct_client(&self, i: usize) -> MemberClient {
        let m = &self.members[i];
        MemberClient::via_softhsm(&self.softhsm_copy(i), &m.conf, &m.label)
            .unwrap_or_else(|e| panic!("SoftHSM client for m{i}: {e}"))
    }

    /// Verify an RSA SHA256-RSA-PKCS signature with member `i`'s public key (via its server
    /// when running, else directly).
    pub fn verify_rsa_on(&self, i: usize, data: &[u8], sig: &[u8]) -> bool {
        let c = if self.is_running(i) {
            self.client(i)
        } else {
            self.direct_client(i)
        };
        c.verify_rsa(data, sig)
    }
}

impl Cluster {
    /// The HA virtual token through `libp11ha.so` ([`p11ha_lib`]) with `P11HA_CONF=conf`,
    /// loaded in-process (token label [`GROUP_LABEL`] unless the config says otherwise).
    pub fn ha_client(&self, conf: &Path, label: &str) -> cryptoki::error::Result<MemberClient> {
        let conf = conf.to_str().expect("utf-8 path");
        MemberClient::open(&p11ha_lib(), label, &[("P11HA_CONF", Some(conf))])
    }

    /// Run the real-client script `name` against `libp11ha.so` with `P11HA_CONF=conf`.
    pub fn run_client_ha(&self, name: &str, conf: &Path, label: &str) -> ClientRun {
        run_client_env(
            name,
            &p11ha_lib(),
            label,
            &[("P11HA_CONF", conf.as_os_str())],
        )
    }

    /// Build the C client into this cluster's directory (see [`build_c_client`]).
    pub fn build_c_client(&self) -> PathBuf {
        build_c_client(self.dir())
    }
}

fn reap(s: &mut Server) {
    let gone = kill_group_and_wait(s.pgid, SERVER_TIMEOUT);
    let _ = s.child.wait();
    if !gone {
        eprintln!(
            "warning: process group {} still has live processes {:?}",
            s.pgid,
            live_pids_in_group(s.pgid)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut servers = match self.servers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for s in servers.iter_mut() {
            if let Some(mut srv) = s.take() {
                reap(&mut srv);
            }
        }
        let pgids = match self.pgids.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        for pg in pgids {
            if !live_pids_in_group(pg).is_empty() {
                kill_group_and_wait(pg, SERVER_TIMEOUT);
            }
        }
        // TempDir removes the directory, unless asked not to.
        self.dir.disable_cleanup(self.keep.load(Ordering::Relaxed));
    }
}
