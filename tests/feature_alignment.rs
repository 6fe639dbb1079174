//! `cargo build --release` and then `cargo test --release` must not compile p11ha twice.
//!
//! With resolver 2 the features a dev-dependency turns on in a shared crate count only when
//! tests are built, so a dev-dependency that asks for more (proptest asks for num-traits/std,
//! getrandom/std) changes that crate, then p11ha, the test kit and every test binary, each time
//! the two commands alternate. testkit/Cargo.toml names those features as its own; this test
//! fails when a dependency update brings such a difference back, and names the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each package of the graph (name and version) with the feature sets it is built with (more
/// than one when it is both a build-dependency and a normal one).
fn features(edges: &str) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--prefix", "none"])
        .args(["-e", edges, "-f", "{p}|{f}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -e {edges}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(out.stdout).expect("utf-8").lines() {
        let line = line.trim_end().trim_end_matches("(*)").trim_end();
        let Some((package, feats)) = line.split_once('|') else {
            continue;
        };
        // The path of a workspace member is part of {p}; the features follow the last '|'.
        map.entry(package.trim().to_string())
            .or_default()
            .insert(feats.trim().to_string());
    }
    map
}

#[test]
fn dev_dependencies_turn_on_no_feature_of_a_crate_the_release_build_uses() {
    let build = features("normal,build");
    let test = features("normal,build,dev");
    let differing: Vec<String> = build
        .iter()
        .filter_map(|(package, built)| {
            let tested = test.get(package)?;
            (tested != built).then(|| format!("{package}: build {built:?}, test {tested:?}"))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "cargo test would recompile these crates (and p11ha with them) after cargo build; \
         name the test's features in testkit/Cargo.toml:\n{}",
        differing.join("\n")
    );
}
