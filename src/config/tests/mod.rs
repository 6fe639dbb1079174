//! Unit tests for the configuration module, and the fixtures they share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

mod refusals;
mod syntax;
mod values;

/// Seed 003 (Luna "HA Logging" page), copied verbatim with its `// comments`.
const SEED_003: &str = r#"VirtualToken = {
VirtualToken00Label = haGroup1; // The label of the HA group.
VirtualToken00SN = 11234840370164; // The pseudo serial number of the HA group.
VirtualToken00Members = 1234840370164, 1234924189183; // The serial number of the members.
VirtualTokenActiveRecovery = activeEnhanced; // The recovery mode.
}
HASynchronize = {
haGroup1 = 1; // Enable automatic synchronization of objects.
}
HAConfiguration = {
HAOnly = 1; // Enable listing HA groups only via PKCS#11 library.
haLogPath = /tmp/halog; // Base path of the HA log file; i.e., “/tmp/halog/haErrorLog.txt”.
haLogStatus = enabled; // Enable HA log.
logLen = 100000000; // Maximum size of HA log file in bytes.
failover_on_deactivation = 1; // if a partition becomes deactivated then the client will immediately 
                              // failover and resume its operation on the other HA partitions. This 
                              // is currently an alpha feature
reconnAtt = 120; // Number of recovery attempts.
}
HARecovery = {
haGroup1 = 1; // Deprecated in this release as auto recovery will cover the use case. When cryptoki 
              // loads into memory it reads the number and if the number changes (gets incremented) 
              // then cryptoki interprets this as a manual recovery attempt.
}
"#;

/// The one-line form of REFERENCE §1.
const REFERENCE_ONE_LINE: &str = r#"VirtualToken = {
  VirtualToken00Label = haGroup1;
  VirtualToken00SN = 11234840370164;
  VirtualToken00Members = 1234840370164, 1234924189183;
  VirtualTokenActiveRecovery = activeEnhanced;
}
HASynchronize = { haGroup1 = 1; }
HAConfiguration = { HAOnly = 1; haLogPath = /tmp/halog; haLogStatus = enabled; logLen = 100000000;
                    failover_on_deactivation = 1; reconnAtt = 120; AutoReconnectInterval = 60; }
HARecovery = { haGroup1 = 1; }
"#;

/// A real PKCS#11 module: provider libraries are loaded at validation (`module_check`).
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Fixture {
    dir: tempfile::TempDir,
    lib: String,
}

fn fixture() -> Fixture {
    assert!(Path::new(MODULE).is_file(), "{MODULE} is needed (softhsm2)");
    Fixture {
        lib: MODULE.to_string(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    /// An existing directory under the fixture's tempdir.
    fn subdir(&self, name: &str) -> String {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.to_str().unwrap().to_string()
    }
}

const CONF: &str = "/etc/Chrystoki.conf";

fn parse(text: &str) -> Result<HaConfig, ConfigError> {
    parse_str(text, Path::new(CONF))
}

/// `text` plus a one-provider HAProviders section pointing at an existing file.
fn with_provider(text: &str, f: &Fixture) -> String {
    format!(
        "{text}\nHAProviders = {{ Provider00Library = {}; }}\n",
        f.lib
    )
}

fn ok(text: &str) -> HaConfig {
    let f = fixture();
    match parse(&with_provider(text, &f)) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err(text: &str) -> ConfigError {
    let f = fixture();
    match parse(&with_provider(text, &f)) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_err(e: &ConfigError, line: usize, key: &str, needle: &str) {
    assert_eq!(e.file, PathBuf::from(CONF), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert!(
        e.message.contains(needle),
        "message {:?} lacks {needle:?}",
        e.message
    );
}

const GROUP: &str = "VirtualToken = {\n\
    VirtualToken00Label = g1;\n\
    VirtualToken00Members = 111, 222;\n\
}\n";
