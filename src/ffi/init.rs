//! C_Initialize beyond argument checks: read the configuration, open the HA log, start the HA
//! core and its management thread (C_Finalize stops them: `Runtime::stop`).
//!
//! The `p11ha` command runs this same library in its own process (`listgroups`, `synchronize`)
//! and first calls [`set_tool_mode`]: it then never writes the HA log (no "configured as", no
//! "management thread started" line from a command that only looks), and uses the synchronized
//! groups' journals only when asked to and only when it runs as the user that owns the journal
//! directory. So a command run as root never creates `haErrorLog.txt`, its lock or a journal
//! owned by root in the application's directories.

use crate::config;
use crate::diag::diag;
use crate::ha::Runtime;
use crate::halog::HaLog;
use cryptoki_sys::*;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, OnceLock};

/// How the `p11ha` command runs the library in its own process (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// No HA log, no journal: the read-only commands.
    NoFiles,
    /// No HA log; the journals when this process's user owns their directory, else none (with
    /// a warning saying so): commands that settle what members are owed.
    JournalIfOwner,
}

static TOOL_MODE: OnceLock<ToolMode> = OnceLock::new();

/// Called by the `p11ha` command before it initializes the library in its own process; the
/// first call wins. Applications never call it.
pub fn set_tool_mode(mode: ToolMode) {
    let _ = TOOL_MODE.set(mode);
}

/// Reads the configuration and starts the library. A bad configuration is CKR_GENERAL_ERROR
/// with one message naming file, line and key, on stderr and in the HA log when one is set.
pub(crate) fn start() -> Result<Arc<Runtime>, CK_RV> {
    let path = config::locate();
    let tool = TOOL_MODE.get().copied();
    // Nobody configured p11ha (a p11-kit consumer loading every registered module): no slots,
    // and nothing on the application's stderr unless asked for. The command says it plainly.
    if let (None, Some(none)) = (tool, config::no_configuration()) {
        diag!(Info, "{none}; serving no slots");
        let cfg = config::empty().map_err(|e| {
            diag!(Error, "internal error: the empty configuration: {e}");
            CKR_GENERAL_ERROR
        })?;
        return Ok(Arc::new(Runtime::start(cfg, HaLog::disabled())));
    }
    // One bounded read of the file, also for the HA log settings of a file it refuses.
    let mut cfg = match config::load_for_init(&path) {
        Ok(c) => c,
        Err(f) => {
            diag!(Error, "configuration error: {}", f.error);
            if let (Some(log), None) = (&f.log, tool) {
                HaLog::open_sync(log).config_error("", &f.error.to_string());
            }
            return Err(CKR_GENERAL_ERROR);
        }
    };
    for w in &cfg.warnings {
        diag!(Warn, "{w}");
    }
    if let Some(mode) = tool {
        cfg.log.path = None;
        cfg.log.enabled = false;
        if mode == ToolMode::NoFiles || !owned_by_me(cfg.journal_dir.as_deref()) {
            cfg.journal_dir = None;
        }
    }
    let log = if crate::bounded::is_inline() {
        HaLog::open_sync(&cfg.log)
    } else {
        HaLog::open(&cfg.log)
    };
    Ok(Arc::new(Runtime::start(cfg, log)))
}

/// Whether the journal directory (if any) belongs to this process's effective user; says why
/// not on stderr.
fn owned_by_me(dir: Option<&std::path::Path>) -> bool {
    let Some(dir) = dir else { return true };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() == me => true,
        Ok(m) => {
            diag!(
                Warn,
                "the journal directory {} belongs to {}, not to {} who runs this command: it runs \
                 without the journal (it does not see or settle what members that were down are \
                 owed); run it as the application's user, e.g. runuser -u {} -- p11ha ...",
                dir.display(),
                crate::safe_file::user(m.uid()),
                crate::safe_file::user(me),
                user_name(m.uid())
            );
            false
        }
        // A missing directory: nothing would be shared anyway.
        Err(_) => false,
    }
}

fn user_name(uid: u32) -> String {
    let u = crate::safe_file::user(uid);
    // `safe_file::user` gives "uid 1001 (bob)" or "uid 1001".
    match (u.find('('), u.rfind(')')) {
        (Some(a), Some(b)) if b > a => u[a + 1..b].to_string(),
        _ => uid.to_string(),
    }
}
