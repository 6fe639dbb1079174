//! The configuration space that failover and recovery tests run over: members reached through
//! p11-kit servers or directly (a private copy of libsofthsm2.so each), with `HAOnly = 1` or 0,
//! and member death, hangs and returns that mean the same in every set-up.
//!
//! A p11-kit member dies for real: its server's process group is SIGKILLed, and a hung one is
//! SIGSTOPped. A member reached directly lives inside the application, so it cannot be killed
//! on its own: it sits behind its own copy of the fault-injection module
//! (`tests/c/fault_module.c`), which makes every call fail with CKR_DEVICE_ERROR (dead, as a
//! p11-kit member whose server is gone answers) or block (hung) until told otherwise.
//!
//! [`in_every_setup!`](crate::in_every_setup) turns a scenario `fn(Setup)` into one `#[test]`
//! per set-up, named after it, whose failure message starts with the set-up.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::clients::build_fault_module;
use crate::cluster::{Cluster, ConfigOpts};
use crate::member::MemberClient;
use crate::SOFTHSM_LIB;

/// One point of the configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Members reached directly (per-member copies of libsofthsm2.so behind the fault module)
    /// instead of through p11-kit-client and `p11-kit server`.
    pub direct: bool,
    /// `HAOnly`: 0 also lists every member's own slot next to the HA group's.
    pub ha_only: bool,
}

impl Setup {
    pub const P11KIT_HA_ONLY_1: Setup = Setup {
        direct: false,
        ha_only: true,
    };
    pub const P11KIT_HA_ONLY_0: Setup = Setup {
        direct: false,
        ha_only: false,
    };
    pub const DIRECT_HA_ONLY_1: Setup = Setup {
        direct: true,
        ha_only: true,
    };
    pub const DIRECT_HA_ONLY_0: Setup = Setup {
        direct: true,
        ha_only: false,
    };
    pub const ALL: [Setup; 4] = [
        Setup::P11KIT_HA_ONLY_1,
        Setup::P11KIT_HA_ONLY_0,
        Setup::DIRECT_HA_ONLY_1,
        Setup::DIRECT_HA_ONLY_0,
    ];
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = if self.direct {
            "direct members"
        } else {
            "p11-kit members"
        };
        write!(f, "{how}, HAOnly = {}", u8::from(self.ha_only))
    }
}

/// Runs `scenario` in `setup`; a failure panics again with the set-up in front of its message.
pub fn run_in(setup: Setup, scenario: fn(Setup)) {
    eprintln!("set-up: {setup}");
    if let Err(p) = std::panic::catch_unwind(|| scenario(setup)) {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("(panic without a message)");
        panic!("[{setup}] {msg}");
    }
}

/// For each scenario `fn name(setup: Setup)` in scope, a module `name` with one `#[test]` per
/// set-up: `p11kit_ha_only_1`, `p11kit_ha_only_0`, `direct_ha_only_1`, `direct_ha_only_0`
/// (`cargo test name` runs all four).
#[macro_export]
macro_rules! in_every_setup {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn p11kit_ha_only_1() {
                $crate::setup::run_in($crate::setup::Setup::P11KIT_HA_ONLY_1, super::$scenario)
            }
            #[test]
            fn p11kit_ha_only_0() {
                $crate::setup::run_in($crate::setup::Setup::P11KIT_HA_ONLY_0, super::$scenario)
            }
            #[test]
            fn direct_ha_only_1() {
                $crate::setup::run_in($crate::setup::Setup::DIRECT_HA_ONLY_1, super::$scenario)
            }
            #[test]
            fn direct_ha_only_0() {
                $crate::setup::run_in($crate::setup::Setup::DIRECT_HA_ONLY_0, super::$scenario)
            }
        }
    )+};
}

/// What a member's fault-module control file says: the faults a test set, and death or a hang
/// on top of them.
#[derive(Debug, Clone, Default)]
struct Faults {
    standing: String,
    dead: bool,
    hung: bool,
}

impl Faults {
    /// The control file text. The death line comes last: for a function named on several
    /// lines, the fault module applies the last return value.
    fn text(&self) -> String {
        let mut t = self.standing.clone();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        if self.hung {
            t.push_str("* hang\n");
        }
        if self.dead {
            t.push_str("* 0x30\n"); // CKR_DEVICE_ERROR
        }
        t
    }
}

/// An HA group of `n` members in one [`Setup`], with its configuration file written.
pub struct Group {
    pub setup: Setup,
    /// The configuration file (tests set `P11HA_CONF` to it).
    pub conf: PathBuf,
    label: String,
    cluster: Cluster,
    /// Per member: its fault-module control file, when the member has the module in front.
    controls: Vec<Option<PathBuf>>,
    faults: Mutex<Vec<Faults>>,
}

impl Group {
    /// `n` provisioned members in `setup`, p11-kit servers started, the configuration written
    /// from `opts` (whose `direct` and `ha_only` come from `setup`).
    pub fn new(setup: Setup, n: usize, opts: ConfigOpts) -> Group {
        Group::with_fault_module(setup, n, opts, &[])
    }

    /// [`Group::new`] where the p11-kit members in `faulty` also have the fault module in front
    /// of SoftHSM, inside their server (faults on the HSM's side of the connection; the server
    /// is still killed and stopped for real). Direct members always have it.
    pub fn with_fault_module(setup: Setup, n: usize, opts: ConfigOpts, faulty: &[usize]) -> Group {
        let cluster = Cluster::new(n);
        let fault = build_fault_module(cluster.dir());
        let controls: Vec<Option<PathBuf>> = (0..n)
            .map(|i| {
                (setup.direct || faulty.contains(&i)).then(|| {
                    let c = cluster.dir().join(format!("m{i}.faults"));
                    fs::write(&c, "").unwrap();
                    c
                })
            })
            .collect();
        if !setup.direct {
            for (i, control) in controls.iter().enumerate() {
                if let Some(c) = control {
                    cluster.serve_through(
                        i,
                        &fault,
                        &[
                            ("FAULT_MODULE", OsStr::new(SOFTHSM_LIB)),
                            ("FAULT_CONTROL", c.as_os_str()),
                        ],
                    );
                }
                cluster.start_server(i);
            }
        }
        let opts = ConfigOpts {
            direct: setup.direct,
            ha_only: setup.ha_only,
            ..opts
        };
        let conf = cluster.write_config(&opts);
        if setup.direct {
            route_through_fault_module(&cluster, &conf, &opts, &fault, &controls);
        }
        Group {
            setup,
            conf,
            label: opts.label.clone(),
            faults: Mutex::new(vec![Faults::default(); n]),
            cluster,
            controls,
        }
    }

    /// The HA group through libp11ha.so, loaded in-process with `P11HA_CONF` = [`Group::conf`].
    pub fn ha(&self) -> cryptoki::error::Result<MemberClient> {
        self.cluster.ha_client(&self.conf, &self.label)
    }

    /// Member `i` dies: its server is killed, or (direct) every call fails with
    /// CKR_DEVICE_ERROR.
    pub fn die(&self, i: usize) {
        if self.setup.direct {
            self.change(i, |f| f.dead = true);
        } else {
            self.cluster.kill(i);
        }
    }

    /// Member `i` comes back after [`Group::die`]: a new server on the same socket, or
    /// (direct) its calls reach SoftHSM again.
    pub fn revive(&self, i: usize) {
        if self.setup.direct {
            self.change(i, |f| {
                f.dead = false;
                f.hung = false;
            });
        } else {
            self.cluster.start_server(i);
        }
    }

    /// Member `i` hangs: its server is SIGSTOPped, or (direct) every call blocks.
    pub fn hang(&self, i: usize) {
        if self.setup.direct {
            self.change(i, |f| f.hung = true);
        } else {
            self.cluster.stop(i);
        }
    }

    /// Member `i` answers again after [`Group::hang`] (SIGCONT, or the blocked calls go on).
    pub fn resume(&self, i: usize) {
        if self.setup.direct {
            self.change(i, |f| f.hung = false);
        } else {
            self.cluster.cont(i);
        }
    }

    /// Replace the faults set on member `i` (lines of `tests/c/fault_module.c`'s control file,
    /// e.g. `"C_SignInit 0xE0\n"`); death and hangs stay as they are. The member must have the
    /// fault module ([`Group::with_fault_module`], or any direct member).
    pub fn set_faults(&self, i: usize, lines: &str) {
        self.change(i, |f| f.standing = lines.to_string());
    }

    fn change(&self, i: usize, edit: impl FnOnce(&mut Faults)) {
        let control = self.controls[i]
            .as_ref()
            .unwrap_or_else(|| panic!("member {i} has no fault module ({})", self.setup));
        let mut faults = self.faults.lock().unwrap();
        edit(&mut faults[i]);
        // Renamed into place: the module reads the file at every call and must never see half
        // of it.
        let tmp = control.with_extension("tmp");
        fs::write(&tmp, faults[i].text()).unwrap();
        fs::rename(&tmp, control).unwrap();
    }
}

impl Deref for Group {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

/// Rewrites the direct members' providers in `conf` (as [`Cluster::write_config`] wrote them)
/// to load their own copy of the fault module, which forwards to their copy of SoftHSM.
fn route_through_fault_module(
    cluster: &Cluster,
    conf: &Path,
    opts: &ConfigOpts,
    fault: &Path,
    controls: &[Option<PathBuf>],
) {
    let all: Vec<usize> = (0..cluster.len()).collect();
    let providers = opts.providers.clone().unwrap_or(all);
    let mut text = fs::read_to_string(conf).unwrap();
    for (n, &i) in providers.iter().enumerate() {
        let m = &cluster.members[i];
        let softhsm = cluster.softhsm_copy(i);
        let from = format!(
            "Provider{n:02}Library = {};\n   Provider{n:02}Env = SOFTHSM2_CONF={};",
            softhsm.display(),
            m.conf.display()
        );
        assert!(text.contains(&from), "no provider {n} for m{i} in:\n{text}");
        let copy = softhsm.with_file_name(format!("fault-m{i}.so"));
        fs::copy(fault, &copy).unwrap();
        let control = controls[i]
            .as_ref()
            .expect("direct members have a control file");
        let to = format!(
            "Provider{n:02}Library = {};\n   Provider{n:02}Env = FAULT_MODULE={}, SOFTHSM2_CONF={}, FAULT_CONTROL={};",
            copy.display(),
            softhsm.display(),
            m.conf.display(),
            control.display()
        );
        text = text.replace(&from, &to);
    }
    fs::write(conf, text).unwrap();
}
