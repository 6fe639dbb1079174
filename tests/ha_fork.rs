//! fork(): the parent keeps working, and the child works once it calls C_Initialize itself.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

#[test]
fn a_forked_child_works_after_its_own_initialize() {
    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts::default());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fork.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(p11ha_lib())
        .arg(GROUP_LABEL)
        .env("P11HA_CONF", &conf);
    let run = run_cmd(cmd, Duration::from_secs(60));
    assert!(run.success(), "{}", run.describe());
    assert!(run.stdout.contains("child signed"), "{}", run.describe());
    assert!(
        run.stdout.contains("parent signed after fork"),
        "{}",
        run.describe()
    );
}
