//! The architecture, checked from the source: no two files of src/ import each other, and the
//! leaf modules (configuration, return codes, mechanisms, bounded calls, file safety,
//! diagnostics, the HA log) import nothing of the HA core, the C ABI or the CLI; the HA log
//! nothing of the audit trail either. A `crate::` or `super::` path anywhere in a file counts as
//! an import of the file it names (tests inside a file, after `#[cfg(test)] mod tests`, do not
//! count).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Module path ("ha::session::route") → source text (without its unit tests).
fn modules() -> BTreeMap<String, (String, bool)> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, (String, bool)>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix("src").unwrap().with_extension("");
                let mut m = rel.to_string_lossy().replace('/', "::");
                let is_mod = m.ends_with("::mod") || m == "lib";
                if let Some(s) = m.strip_suffix("::mod") {
                    m = s.to_string();
                }
                let text = fs::read_to_string(&p).unwrap();
                let text = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap()
                    .to_string();
                out.insert(m, (text, is_mod));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The files a module's paths name: `crate::a::b::Item` is the longest module prefix of it.
fn imports(m: &str, text: &str, all: &BTreeMap<String, (String, bool)>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("crate::") || rest.starts_with("super::"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        i += end.max(1);
        let (mut base, mut parts): (Vec<&str>, &[&str]) = if path[0] == "crate" {
            (Vec::new(), &path[1..])
        } else {
            (m.split("::").collect(), &path[..])
        };
        while parts.first() == Some(&"super") {
            base.pop();
            parts = &parts[1..];
        }
        for k in (1..=parts.len()).rev() {
            let cand = base
                .iter()
                .chain(&parts[..k])
                .copied()
                .collect::<Vec<_>>()
                .join("::");
            if all.contains_key(&cand) {
                // A module and its own submodules (re-exports, `mod x;`) are one unit here.
                let nested =
                    cand.starts_with(&format!("{m}::")) || m.starts_with(&format!("{cand}::"));
                if cand != m && !nested {
                    found.insert(cand);
                }
                break;
            }
        }
    }
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let all = modules();
    all.iter()
        .map(|(m, (text, _))| (m.clone(), imports(m, text, &all)))
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    let g = graph();
    assert!(
        g.len() > 50,
        "found only {} modules: run from the crate root",
        g.len()
    );
    assert!(
        g["ha::session::route"].contains("ha::group"),
        "the scanner misses imports: {:?}",
        g["ha::session::route"]
    );
    let cycles: Vec<(String, String)> = g
        .iter()
        .flat_map(|(a, out)| {
            out.iter()
                .filter(|b| a < *b && g.get(*b).is_some_and(|o| o.contains(a)))
                .map(|b| (a.clone(), b.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "files that import each other: {cycles:?}"
    );
}

#[test]
fn leaf_modules_import_nothing_of_the_ha_core_the_c_abi_or_the_cli() {
    let g = graph();
    let leaves = [
        "config",
        "rv",
        "mechanism",
        "bounded",
        "safe_file",
        "diag",
        "confedit",
        "halog",
    ];
    let above = ["ha", "ffi", "cli", "provider"];
    let mut leaks = Vec::new();
    for (m, out) in &g {
        if !leaves
            .iter()
            .any(|l| m == l || m.starts_with(&format!("{l}::")))
        {
            continue;
        }
        for t in out {
            if above
                .iter()
                .any(|a| t == a || t.starts_with(&format!("{a}::")))
            {
                leaks.push(format!("{m} -> {t}"));
            }
        }
    }
    assert!(leaks.is_empty(), "leaf modules reaching up: {leaks:?}");
}

#[test]
fn the_ha_log_imports_nothing_of_the_audit_trail() {
    // The audit trail writes HA log events and shares its syslog copy: the HA log sits below it.
    let g = graph();
    let leaks: Vec<String> = g
        .iter()
        .filter(|(m, _)| *m == "halog" || m.starts_with("halog::"))
        .flat_map(|(m, out)| {
            out.iter()
                .filter(|t| *t == "audit" || t.starts_with("audit::"))
                .map(move |t| format!("{m} -> {t}"))
        })
        .collect();
    assert!(leaks.is_empty(), "the HA log reaching up: {leaks:?}");
}
