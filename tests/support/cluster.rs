//! A set of SoftHSM member tokens with identical keys, optionally served by `p11-kit server`
//! processes, and the p11ha configuration that groups them.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::clients::{build_c_client, checked, run_client_env, ClientRun};
use super::member::MemberClient;
use super::proc::{kill_group_and_wait, live_pids_in_group, p11ha_lib, signal_group, wait_until};
use super::{GROUP_LABEL, P11KIT_CLIENT_LIB, SOFTHSM_LIB, SO_PIN, USER_PIN};

/// Bound on a p11-kit server becoming ready (socket accepts) and on reaping a killed one.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Key material generated once per cluster and imported into every member.
#[derive(Debug, Clone)]
pub struct KeyMaterial {
    pub dir: PathBuf,
    /// RSA-2048 private key, PKCS#8 PEM.
    pub rsa_pem: PathBuf,
    /// RSA public key, SubjectPublicKeyInfo PEM / DER.
    pub rsa_pub_pem: PathBuf,
    pub rsa_pub_der: PathBuf,
    /// Self-signed certificate (CN=p11ha-test) for the RSA key, DER.
    pub rsa_cert_der: PathBuf,
    /// EC P-256 private key, PKCS#8 PEM.
    pub ec_pem: PathBuf,
    pub ec_pub_pem: PathBuf,
    pub ec_pub_der: PathBuf,
    /// AES-256 key and HMAC key (32 random bytes each).
    pub aes: Vec<u8>,
    pub hmac: Vec<u8>,
}

impl KeyMaterial {
    fn generate(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n);
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
        openssl(&["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub.pem"]);
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
            "req",
            "-new",
            "-x509",
            "-key",
            "rsa.pem",
            "-subj",
            "/CN=p11ha-test",
            "-days",
            "3650",
            "-outform",
            "DER",
            "-out",
            "rsa.crt.der",
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
        openssl(&["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub.pem"]);
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
        let random = |n: usize| {
            let mut b = vec![0u8; n];
            fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut b)
                .unwrap();
            b
        };
        let (aes, hmac) = (random(32), random(32));
        fs::write(p("aes.bin"), &aes).unwrap();
        fs::write(p("hmac.bin"), &hmac).unwrap();
        KeyMaterial {
            dir: dir.to_path_buf(),
            rsa_pem: p("rsa.pem"),
            rsa_pub_pem: p("rsa.pub.pem"),
            rsa_pub_der: p("rsa.pub.der"),
            rsa_cert_der: p("rsa.crt.der"),
            ec_pem: p("ec.pem"),
            ec_pub_pem: p("ec.pub.pem"),
            ec_pub_der: p("ec.pub.der"),
            aes,
            hmac,
        }
    }
}

/// One member token.
#[derive(Debug)]
pub struct Member {
    pub index: usize,
    /// Token label, `m<index>`.
    pub label: String,
    /// Token serial (16 hex characters): how p11ha identifies the member.
    pub serial: String,
    /// SoftHSM slot ID of the token (last 8 hex digits of the serial).
    pub slot_id: u64,
    pub token_dir: PathBuf,
    /// This member's softhsm2.conf (set as SOFTHSM2_CONF for anything opening it).
    pub conf: PathBuf,
    /// Socket of its p11-kit server.
    pub sock: PathBuf,
}

impl Member {
    /// `P11_KIT_SERVER_ADDRESS` value for this member's server.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.sock.display())
    }
}

/// Options of [`Cluster::write_config`].
#[derive(Debug, Clone)]
pub struct ConfigOpts {
    /// Members reached directly through per-member copies of libsofthsm2.so instead of
    /// p11-kit-client + p11-kit server.
    pub direct: bool,
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
    /// Every process group ever started (checked empty on drop).
    pgids: Mutex<Vec<i32>>,
    log_dir: Mutex<PathBuf>,
}

impl Cluster {
    /// Create and provision `n` tokens; no server is started.
    pub fn new(n: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("p11ha-")
            .tempdir_in("/tmp")
            .expect("temp dir in /tmp");
        let keys = KeyMaterial::generate(&dir.path().join("keys"));
        let members: Vec<Member> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let (d, k) = (dir.path(), &keys);
                    s.spawn(move || provision(d, i, k))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("provisioning"))
                .collect()
        });
        let log_dir = dir.path().join("log");
        Cluster {
            servers: Mutex::new((0..n).map(|_| None).collect()),
            pgids: Mutex::new(Vec::new()),
            log_dir: Mutex::new(log_dir),
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

    pub fn len(&self) -> usize {
        self.members.len()
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
        let mut cmd = Command::new("p11-kit");
        cmd.args(["server", "-f", "--provider", SOFTHSM_LIB, "-n"])
            .arg(&m.sock)
            .arg(format!("pkcs11:token={}", m.label))
            .env("SOFTHSM2_CONF", &m.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn p11-kit server");
        let pgid = child.id() as i32;
        self.pgids.lock().unwrap().push(pgid);
        let mut exited = None;
        let ready = wait_until(SERVER_TIMEOUT, || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            UnixStream::connect(&m.sock).is_ok()
        });
        if !ready || exited.is_some() {
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

    /// Whether member `i`'s server was started and not killed.
    pub fn is_running(&self, i: usize) -> bool {
        self.servers.lock().unwrap()[i].is_some()
    }

    /// PGID (= PID of the `p11-kit server` leader) of member `i`'s running server.
    pub fn server_pgid(&self, i: usize) -> Option<i32> {
        self.servers.lock().unwrap()[i].as_ref().map(|s| s.pgid)
    }

    /// Every process group this cluster ever started.
    pub fn started_pgids(&self) -> Vec<i32> {
        self.pgids.lock().unwrap().clone()
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
        // TempDir removes the directory.
    }
}

/// Python/PyKCS11 snippet importing the AES and HMAC secret keys (pkcs11-tool 0.23 cannot
/// write CKK_GENERIC_SECRET objects). argv: module label pin aes.bin hmac.bin
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

/// Create, initialize and fill token `m<i>`.
fn provision(dir: &Path, i: usize, keys: &KeyMaterial) -> Member {
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
        USER_PIN,
    ]);
    let serial = parse_serial(&util(&["--show-slots"]), &label)
        .unwrap_or_else(|| panic!("no serial for token {label}"));
    let slot_id = u64::from_str_radix(&serial[serial.len().saturating_sub(8)..], 16).unwrap();

    let write = |file: &Path, ty: &str, id: &str, usage: &[&str]| {
        let mut c = Command::new("pkcs11-tool");
        c.args([
            "--module",
            SOFTHSM_LIB,
            "--token-label",
            &label,
            "--login",
            "--pin",
            USER_PIN,
        ])
        .arg("--write-object")
        .arg(file)
        .args(["--type", ty, "--id", id, "--label"])
        .arg(match id {
            "01" => "rsa",
            _ => "ec",
        })
        .args(usage)
        .env("SOFTHSM2_CONF", &conf);
        checked(c);
    };
    let priv_usage = [
        "--usage-sign",
        "--usage-decrypt",
        "--private",
        "--sensitive",
    ];
    write(&keys.rsa_pem, "privkey", "01", &priv_usage);
    write(&keys.rsa_pub_der, "pubkey", "01", &[]);
    write(&keys.rsa_cert_der, "cert", "01", &[]);
    write(&keys.ec_pem, "privkey", "02", &priv_usage);
    write(&keys.ec_pub_der, "pubkey", "02", &[]);

    let mut py = Command::new("/usr/bin/python3");
    py.args(["-c", IMPORT_SECRETS_PY, SOFTHSM_LIB, &label, USER_PIN])
        .arg(keys.dir.join("aes.bin"))
        .arg(keys.dir.join("hmac.bin"))
        .env("SOFTHSM2_CONF", &conf);
    checked(py);

    Member {
        index: i,
        sock: dir.join(format!("{label}.sock")),
        label,
        serial,
        slot_id,
        token_dir,
        conf,
    }
}

/// Serial of the token labelled `label` in `softhsm2-util --show-slots` output.
fn parse_serial(out: &str, label: &str) -> Option<String> {
    let mut last_serial = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Serial number:") {
            last_serial = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("Label:") {
            if v.trim() == label {
                return last_serial.filter(|s| !s.is_empty());
            }
        }
    }
    None
}
