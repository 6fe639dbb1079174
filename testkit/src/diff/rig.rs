//! The two sides in one process: p11ha over n SoftHSM members, and SoftHSM itself on one more
//! token made from the same key material, all restored to the same starting state before each
//! replay.
//!
//! The tokens are provisioned once ([`Cluster::new`]); their files are then kept as a pristine
//! copy and put back before every replay with both modules finalized, so a replay (the
//! shrinker makes many) costs a C_Initialize, not a provisioning.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cryptoki_sys::*;

use super::side::Side;
use crate::raw::Module;
use crate::{
    live_pids_in_group, p11ha_lib, wait_until, with_env_lock, Cluster, ConfigOpts, GROUP_LABEL,
    P11KIT_CLIENT_LIB, SO_PIN,
};

/// The configurations p11ha is compared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Members reached directly (a copy of libsofthsm2.so each), HASynchronize off.
    Direct,
    /// Members reached directly, HASynchronize on (cloning keys provisioned).
    Sync,
    /// Members behind p11-kit servers; SoftHSM too is reached through p11-kit-client.
    P11Kit,
    /// [`Setup::Direct`] with `ProviderNNBoundedCalls = 0`: member calls run on the
    /// application's thread, and an Init is not carried to the next call (no travelling Init),
    /// so a member's error surfaces at another moment. Direct members only: the configuration
    /// refuses unbounded calls through p11-kit-client.
    DirectUnbounded,
    /// [`Setup::Sync`] with `ProviderNNBoundedCalls = 0`.
    SyncUnbounded,
    /// The tester's own check: a second SoftHSM token where p11ha would be. Any difference
    /// (beyond the two tokens' names and clocks) is the tester's error.
    SelfCheck,
}

impl Setup {
    pub const ALL: [Setup; 5] = [
        Setup::Direct,
        Setup::Sync,
        Setup::P11Kit,
        Setup::DirectUnbounded,
        Setup::SyncUnbounded,
    ];

    /// The name allow-list entries use.
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Sync => "sync",
            Setup::P11Kit => "p11kit",
            Setup::DirectUnbounded => "direct-unbounded",
            Setup::SyncUnbounded => "sync-unbounded",
            Setup::SelfCheck => "self-check",
        }
    }

    /// `HASynchronize` on.
    pub fn sync(self) -> bool {
        matches!(self, Setup::Sync | Setup::SyncUnbounded)
    }

    /// `ProviderNNBoundedCalls = 0` for every member.
    pub fn unbounded(self) -> bool {
        matches!(self, Setup::DirectUnbounded | Setup::SyncUnbounded)
    }

    /// Tokens on the p11ha side.
    pub fn members(self) -> usize {
        match self {
            Setup::Direct | Setup::DirectUnbounded => 3,
            Setup::Sync | Setup::SyncUnbounded | Setup::P11Kit => 2,
            Setup::SelfCheck => 1,
        }
    }
}

pub struct Rig {
    pub setup: Setup,
    cluster: Cluster,
    pristine: PathBuf,
    ha: Loaded,
    reference: Loaded,
    /// False once the process is exiting: see [`Rig::drop_at_exit`].
    finalize_on_drop: bool,
}

/// One side's module, with the environment it reads in C_GetFunctionList / C_Initialize and
/// the label of the token under test.
struct Loaded {
    module: Module,
    env: (&'static str, String),
    label: String,
}

impl Loaded {
    fn load(lib: &Path, env: (&'static str, String), label: &str) -> Result<Loaded, String> {
        let vars = [(env.0, Some(env.1.as_str()))];
        let module = with_env_lock(&vars, || Module::load(lib.to_str().unwrap_or_default()))?;
        Ok(Loaded {
            module,
            env,
            label: label.to_string(),
        })
    }

    fn initialize(&self) -> Result<(), String> {
        let vars = [(self.env.0, Some(self.env.1.as_str()))];
        with_env_lock(&vars, || self.module.initialize())
    }

    /// The slot of the token, looked for a few times (a fresh C_Initialize can miss a token
    /// for a moment, see REFERENCE.md).
    fn slot(&self) -> Result<CK_SLOT_ID, String> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.module.find_slot(&self.label) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }
}

impl Rig {
    /// Provisions the tokens and loads both modules (uninitialized). `cli` is the `p11ha`
    /// binary (cloning keys for [`Setup::sync`] set-ups).
    pub fn new(setup: Setup, cli: &Path) -> Result<Rig, String> {
        let n = setup.members();
        let cluster = if setup == Setup::P11Kit {
            Cluster::started(n + 1)
        } else {
            Cluster::new(n + 1)
        };
        let conf = cluster.write_config(&ConfigOpts {
            direct: setup != Setup::P11Kit,
            ha_synchronize: Some(setup.sync()),
            unbounded_calls: setup.unbounded(),
            members: Some((0..n).collect()),
            providers: Some((0..n).collect()),
            ..Default::default()
        });
        let bounded_off = fs::read_to_string(&conf)
            .map_err(|e| format!("{}: {e}", conf.display()))?
            .contains("BoundedCalls = 0");
        if bounded_off != setup.unbounded() {
            return Err(format!(
                "{}: ProviderNNBoundedCalls = 0 is {} the configuration",
                conf.display(),
                if bounded_off { "in" } else { "missing from" }
            ));
        }
        if setup.sync() {
            let out = Command::new(cli)
                .args(["synchronize", "-group", GROUP_LABEL, "-init-cloning-key"])
                .env("P11HA_CONF", &conf)
                .env("P11HA_SO_PIN", SO_PIN)
                .output()
                .map_err(|e| format!("{}: {e}", cli.display()))?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            if !text.contains(&format!("Cloning key created on {n} members")) {
                return Err(format!("cloning keys not provisioned: {text}"));
            }
        }
        let pristine = cluster.dir().join("pristine");
        copy_dir(&cluster.dir().join("tokens"), &pristine)?;

        let softhsm = |i: usize| -> Result<Loaded, String> {
            let m = &cluster.members[i];
            match setup {
                Setup::P11Kit => Loaded::load(
                    Path::new(P11KIT_CLIENT_LIB),
                    ("P11_KIT_SERVER_ADDRESS", m.address()),
                    &m.label,
                ),
                _ => Loaded::load(
                    &cluster.softhsm_copy(i),
                    ("SOFTHSM2_CONF", m.conf.display().to_string()),
                    &m.label,
                ),
            }
        };
        let reference = softhsm(n)?;
        let ha = match setup {
            Setup::SelfCheck => softhsm(0)?,
            _ => Loaded::load(
                &p11ha_lib(),
                ("P11HA_CONF", conf.display().to_string()),
                GROUP_LABEL,
            )?,
        };
        Ok(Rig {
            setup,
            cluster,
            pristine,
            ha,
            reference,
            finalize_on_drop: true,
        })
    }

    /// Both sides from the same fresh start: (SoftHSM, p11ha).
    pub fn fresh(&mut self) -> Result<(Side, Side), String> {
        self.ha.module.finalize();
        self.reference.module.finalize();
        if self.setup == Setup::P11Kit {
            // Each connection's p11-kit-remote child must be gone before its token's files change.
            for i in 0..self.cluster.len() {
                let pgid = self.cluster.server_pgid(i).ok_or("server not running")?;
                if !wait_until(Duration::from_secs(10), || {
                    live_pids_in_group(pgid).len() <= 1
                }) {
                    return Err(format!("m{i}'s p11-kit connections did not close"));
                }
            }
        }
        let tokens = self.cluster.dir().join("tokens");
        for i in 0..self.cluster.len() {
            let name = format!("m{i}");
            let _ = fs::remove_dir_all(tokens.join(&name));
            copy_dir(&self.pristine.join(&name), &tokens.join(&name))?;
        }
        // Changes owed to members that were down: none may carry over from the last replay.
        if let Ok(dir) = fs::read_dir(self.cluster.log_dir()) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().contains("journal") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        self.reference.initialize()?;
        self.ha.initialize()?;
        let reference_slot = self.reference.slot()?;
        let ha_slot = self.ha.slot()?;
        if let Some(status) = self.ha.module.status() {
            // Every member must serve from the first call, or p11ha would be compared degraded.
            let n = self.setup.members();
            let mut states = Vec::new();
            let up = wait_until(Duration::from_secs(10), || {
                states = status.members(ha_slot).unwrap_or_default();
                states.len() == n && states.iter().all(|m| m.alive)
            });
            if !up {
                return Err(format!("members not all up: {states:?}"));
            }
        }
        Ok((
            Side::new("softhsm", self.reference.module.functions(), reference_slot),
            Side::new("p11ha", self.ha.module.functions(), ha_slot),
        ))
    }

    /// Keep the tokens, configuration and logs when the rig is dropped.
    pub fn keep_dir(&self) -> PathBuf {
        self.cluster.keep_dir();
        self.cluster.dir().to_path_buf()
    }
}

impl Rig {
    /// Drops the rig from an exit handler: servers stopped, files removed, no C_Finalize.
    /// Member modules p11ha loaded in its first C_Initialize registered their own exit
    /// handlers after the caller's, so by now SoftHSM's globals are destroyed and its
    /// C_Finalize would crash.
    pub fn drop_at_exit(mut self) {
        self.finalize_on_drop = false;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.finalize_on_drop {
            // Before the cluster goes: p11ha's threads and connections stop with C_Finalize.
            self.ha.module.finalize();
            self.reference.module.finalize();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let dst = to.join(e.file_name());
        if e.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            fs::copy(e.path(), &dst).map_err(|err| format!("{}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}
