//! Generates include/p11ha.h (p11ha's C status API) from src/ffi with cbindgen.
//!
//! The header is committed; CI rebuilds and fails if it drifts (`git diff --exit-code include/`).
//! The file is written only when its content changes, so cargo does not rebuild in a loop, and a
//! cbindgen failure is a `cargo:warning`, never a failed build.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=P11HA_REQUIRE_HEADER");
    // CI sets P11HA_REQUIRE_HEADER=1: there a header that cannot be regenerated is an error, so
    // the drift check cannot pass on a stale file.
    let strict = std::env::var_os("P11HA_REQUIRE_HEADER").is_some_and(|v| v == "1");

    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    match generate(&dir) {
        Ok(header) => {
            if let Err(e) = write_if_changed(&dir.join("include/p11ha.h"), &header) {
                problem(strict, &format!("include/p11ha.h not written: {e}"));
            }
        }
        Err(e) => problem(
            strict,
            &format!("include/p11ha.h not regenerated (cbindgen): {e}"),
        ),
    }
}

fn problem(strict: bool, msg: &str) {
    if strict {
        panic!("{msg} (P11HA_REQUIRE_HEADER=1)");
    }
    println!("cargo:warning={msg}");
}

/// The header text, or why cbindgen could not make it (errors and panics alike).
fn generate(dir: &Path) -> Result<Vec<u8>, String> {
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml"))?;
    // Only the C ABI layer: src/ffi/mod.rs and the modules it declares.
    let src = dir.join("src/ffi/mod.rs");
    std::panic::catch_unwind(move || {
        let bindings = cbindgen::Builder::new()
            .with_config(config)
            .with_src(src)
            .generate()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        bindings.write(&mut out);
        Ok(out)
    })
    .unwrap_or_else(|p| {
        Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()))
    })
}

fn write_if_changed(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("include/"))?;
    let tmp = path.with_extension("h.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}
