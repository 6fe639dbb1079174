//! C_Initialize beyond argument checks: read the configuration, open the HA log, start the HA
//! core and its management thread (C_Finalize stops them: `Runtime::stop`).

use crate::config;
use crate::diag::diag;
use crate::ha::Runtime;
use crate::halog::HaLog;
use cryptoki_sys::*;
use std::sync::Arc;

/// Reads the configuration and starts the library. A bad configuration is CKR_GENERAL_ERROR
/// with one message naming file, line and key, on stderr and in the HA log when one is set.
pub(crate) fn start() -> Result<Arc<Runtime>, CK_RV> {
    let path = config::locate();
    // One bounded read of the file, also for the HA log settings of a file it refuses.
    let cfg = match config::load_for_init(&path) {
        Ok(c) => c,
        Err(f) => {
            diag!(Error, "configuration error: {}", f.error);
            if let Some(log) = &f.log {
                HaLog::open_sync(log).config_error("", &f.error.to_string());
            }
            return Err(CKR_GENERAL_ERROR);
        }
    };
    for w in &cfg.warnings {
        diag!(Warn, "{w}");
    }
    let log = if crate::bounded::is_inline() {
        HaLog::open_sync(&cfg.log)
    } else {
        HaLog::open(&cfg.log)
    };
    Ok(Arc::new(Runtime::start(cfg, log)))
}
