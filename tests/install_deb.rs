//! The shipped install (issue 16, "Install and packaging"): the .deb of packaging/build-deb.sh
//! installed with dpkg into this system and used by real clients (pkcs11-tool, p11-kit,
//! p11tool), scripts/install.sh into a staging directory, and the crate version that
//! C_GetInfo and `p11ha --version` report.
//!
//! Expected values come from outside the code under test: the version from this test crate's
//! CARGO_PKG_VERSION (Cargo.toml), paths from Debian's and p11-kit's conventions, "stripped"
//! and build ids from readelf.
//!
//! The .deb test changes the system (dpkg -i, then dpkg --purge, also when it fails): it runs
//! only as root with cargo-deb installed and skips with a message otherwise. Under CI
//! (`CI=true`) a missing prerequisite fails it instead, so CI cannot pass without it.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

use support::*;

/// Debian's PKCS#11 module directory on amd64, where the .deb puts the library.
const DEB_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/libp11ha.so";
/// Everything else the .deb installs, with its mode.
const DEB_FILES: &[(&str, u32)] = &[
    (DEB_MODULE, 0o644),
    ("/usr/share/p11-kit/modules/p11ha.module", 0o644),
    ("/usr/bin/p11ha", 0o755),
    ("/usr/include/p11ha.h", 0o644),
    ("/usr/share/man/man1/p11ha.1.gz", 0o644),
    ("/usr/share/doc/p11ha/examples/Chrystoki.conf", 0o644),
    ("/usr/share/doc/p11ha/examples/crystoki.ini", 0o644),
    ("/usr/share/doc/p11ha/examples/README.md", 0o644),
];
/// A cold release build of the workspace on a loaded 2-core machine takes several minutes.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("release")
}

fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Runs a command that must succeed; its stdout.
fn ok(c: Command, timeout: Duration) -> String {
    let r = run_cmd(c, timeout);
    r.assert_ok();
    r.stdout
}

/// "M.m", the CK_VERSION a library built from this Cargo.toml reports (CK_VERSION has no
/// patch number).
fn expected_library_version() -> String {
    format!(
        "{}.{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    )
}

/// `C_GetInfo().libraryVersion` of `module` as pkcs11-tool prints it
/// (`Library  <description> (ver M.m)`).
fn library_version(module: &Path, conf: &Path) -> String {
    let mut c = Command::new("pkcs11-tool");
    c.arg("--module")
        .arg(module)
        .arg("-I")
        .env("P11HA_CONF", conf);
    let out = ok(c, TOOL_TIMEOUT);
    let line = out
        .lines()
        .find(|l| l.starts_with("Library"))
        .unwrap_or_else(|| panic!("pkcs11-tool -I printed no Library line:\n{out}"));
    line.rsplit_once("(ver ")
        .and_then(|(_, v)| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no version in {line:?}"))
        .to_string()
}

fn readelf(args: &[&str], file: &Path) -> String {
    let mut c = command("readelf", args);
    c.arg(file);
    ok(c, TOOL_TIMEOUT)
}

fn has_debug_info(file: &Path) -> bool {
    readelf(&["-S", "--wide"], file).contains(" .debug_info ")
}

/// The GNU build id: the same for a file and its stripped copy.
fn build_id(file: &Path) -> String {
    let notes = readelf(&["-n"], file);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("{} has no build id:\n{notes}", file.display()))
        .to_string()
}

fn exports_get_function_list(file: &Path) -> bool {
    readelf(&["--dyn-syms", "--wide"], file)
        .lines()
        .any(|l| l.split_whitespace().last() == Some("C_GetFunctionList"))
}

fn gunzip(file: &Path) -> String {
    let mut c = Command::new("gzip");
    c.arg("-dc").arg(file);
    ok(c, TOOL_TIMEOUT)
}

fn mode(file: &Path) -> u32 {
    fs::metadata(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// One test at a time: a `cargo build` (here or in build-deb.sh) may replace
/// target/release/libp11ha.so while another test has a client load it.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `cargo build --release`, what scripts/test.sh runs before the tests, so that what is installed
/// is built from the current sources. `cargo test` builds p11ha with other dependency features
/// (dev-dependencies turn on num-traits/std), so after it this recompiles the library once.
fn release_build() {
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        let mut c = command(env!("CARGO"), &["build", "--release", "--locked"]);
        c.current_dir(repo());
        ok(c, BUILD_TIMEOUT);
    });
}

/// The verbs `p11ha --help` lists (the indented words under "verbs:").
fn help_verbs(p11ha: &Path) -> Vec<String> {
    let help = ok(command(p11ha, &["--help"]), TOOL_TIMEOUT);
    let verbs: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "verbs:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(verbs.len() >= 10, "too few verbs in --help:\n{help}");
    verbs
}

/// The man page is the build's `p11ha --man` and names every verb of `--help`.
fn check_man_page(page_gz: &Path, p11ha: &Path) {
    let page = gunzip(page_gz);
    assert!(
        page.starts_with(".TH P11HA 1 "),
        "not a p11ha(1) page:\n{page}"
    );
    assert_eq!(page, ok(command(p11ha, &["--man"]), TOOL_TIMEOUT));
    for verb in help_verbs(p11ha) {
        // roff escapes '-' as "\-"; verbs have none.
        assert!(
            page.contains(&format!("\n.B p11ha {verb}")),
            "man page lacks verb {verb}"
        );
    }
}

fn check_version_flag(p11ha: &Path) {
    let out = ok(command(p11ha, &["--version"]), TOOL_TIMEOUT);
    assert_eq!(out, format!("p11ha {}\n", env!("CARGO_PKG_VERSION")));
}

/// C_GetInfo's libraryVersion and `p11ha --version` are the crate version of Cargo.toml.
#[test]
fn c_getinfo_and_version_flag_show_the_crate_version() {
    let _serial = serial();
    let cluster = Cluster::new(1);
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        ..ConfigOpts::default()
    });
    assert_eq!(
        library_version(&p11ha_lib(), &conf),
        expected_library_version()
    );
    check_version_flag(Path::new(env!("CARGO_BIN_EXE_p11ha")));
}

/// scripts/install.sh with its defaults (PREFIX=/usr/local, module directories from p11-kit's
/// pkg-config file) into a DESTDIR: every file in place with its mode, the library stripped but
/// the build's (same build id) and loadable, the module file naming it by its final path, the
/// man page generated; --uninstall removes them all.
#[test]
fn install_script_stages_stripped_files_that_load() {
    let _serial = serial();
    release_build();
    let stage = tempfile::Builder::new()
        .prefix("p11ha-stage")
        .tempdir()
        .unwrap();
    let prefix = "/usr/local";
    let p11kit = |var: &str| {
        let r = run_cmd(
            command("pkg-config", &[&format!("--variable={var}"), "p11-kit-1"]),
            TOOL_TIMEOUT,
        );
        Some(r.stdout.trim().to_string()).filter(|s| r.success() && !s.is_empty())
    };
    let module_dir = p11kit("p11_module_path").unwrap_or(format!("{prefix}/lib/pkcs11"));
    let conf_dir =
        p11kit("p11_module_configs").unwrap_or(format!("{prefix}/share/p11-kit/modules"));

    let script = repo().join("scripts/install.sh");
    let mut c = Command::new(&script);
    c.env("DESTDIR", stage.path())
        .env("PREFIX", prefix)
        .env_remove("MODULEDIR")
        .env_remove("MODULECONFDIR");
    ok(c, TOOL_TIMEOUT);

    let staged = |p: &str| stage.path().join(p.trim_start_matches('/'));
    let lib = staged(&format!("{module_dir}/libp11ha.so"));
    let bin = staged(&format!("{prefix}/bin/p11ha"));
    let files = [
        (lib.clone(), 0o644),
        (staged(&format!("{conf_dir}/p11ha.module")), 0o644),
        (bin.clone(), 0o755),
        (staged(&format!("{prefix}/include/p11ha.h")), 0o644),
        (
            staged(&format!("{prefix}/share/man/man1/p11ha.1.gz")),
            0o644,
        ),
        (
            staged(&format!("{prefix}/share/doc/p11ha/examples/Chrystoki.conf")),
            0o644,
        ),
        (
            staged(&format!("{prefix}/share/doc/p11ha/examples/crystoki.ini")),
            0o644,
        ),
        (
            staged(&format!("{prefix}/share/doc/p11ha/examples/README.md")),
            0o644,
        ),
    ];
    for (f, want) in &files {
        assert_eq!(mode(f), *want, "mode of {}", f.display());
    }

    let built = release_dir().join("libp11ha.so");
    assert!(
        has_debug_info(&built),
        "the release build has debug info (debug = 1)"
    );
    assert!(!has_debug_info(&lib), "installed library not stripped");
    assert_eq!(build_id(&lib), build_id(&built), "not the build's library");
    assert!(exports_get_function_list(&lib), "stripped the C ABI away");
    assert!(!has_debug_info(&bin), "installed p11ha not stripped");
    assert_eq!(
        fs::read(repo().join("include/p11ha.h")).unwrap(),
        fs::read(staged(&format!("{prefix}/include/p11ha.h"))).unwrap()
    );

    let module_file = fs::read_to_string(staged(&format!("{conf_dir}/p11ha.module"))).unwrap();
    let module_lines: Vec<&str> = module_file
        .lines()
        .filter(|l| l.starts_with("module:"))
        .collect();
    assert_eq!(
        module_lines,
        [format!("module: {module_dir}/libp11ha.so")],
        "{module_file}"
    );

    check_man_page(
        &staged(&format!("{prefix}/share/man/man1/p11ha.1.gz")),
        &bin,
    );
    check_version_flag(&bin);
    let cluster = Cluster::new(1);
    let conf = cluster.write_config(&ConfigOpts {
        direct: true,
        ..ConfigOpts::default()
    });
    assert_eq!(library_version(&lib, &conf), expected_library_version());

    let mut c = Command::new(&script);
    c.arg("--uninstall")
        .env("DESTDIR", stage.path())
        .env("PREFIX", prefix);
    ok(c, TOOL_TIMEOUT);
    let left: Vec<_> = files.iter().filter(|(f, _)| f.exists()).collect();
    assert!(left.is_empty(), "--uninstall left {left:?}");
}

/// Why the .deb test cannot run here, if it cannot.
fn deb_prerequisites() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (dpkg -i needs root)".into());
    }
    if !run_cmd(command(env!("CARGO"), &["deb", "--version"]), TOOL_TIMEOUT).success() {
        return Some(
            "cargo-deb is not installed (scripts/install-deps.sh installs it: cargo install cargo-deb --locked)"
                .into(),
        );
    }
    let status = run_cmd(
        command("dpkg-query", &["-W", "-f=${Status}", "p11ha"]),
        TOOL_TIMEOUT,
    );
    if status.stdout.contains("installed") && !status.stdout.contains("not-installed") {
        return Some(format!(
            "a p11ha package is on this system already ({}): not replacing it",
            status.stdout.trim()
        ));
    }
    if Path::new(DEB_MODULE).exists() {
        return Some(format!(
            "{DEB_MODULE} exists and is no package's: not overwriting it"
        ));
    }
    None
}

/// Purges the package when dropped, so a failed assertion does not leave it installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let r = run_cmd(command("dpkg", &["--purge", "p11ha"]), TOOL_TIMEOUT);
        if !r.success() {
            eprintln!("install_deb: dpkg --purge p11ha failed:\n{}", r.describe());
        }
    }
}

/// `p11-kit list-modules`: the lines of the module block named `name` (its header line first).
fn p11kit_module_block(out: &str, name: &str) -> Vec<String> {
    out.lines()
        .skip_while(|l| !l.starts_with(&format!("{name}: ")))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
        .map(|(_, l)| l.trim().to_string())
        .collect()
}

fn with_conf(mut c: Command, conf: &Path) -> Command {
    c.env("P11HA_CONF", conf);
    c
}

/// packaging/build-deb.sh builds the .deb; dpkg -i installs it; with a Chrystoki.conf of two
/// SoftHSM members (each behind a p11-kit server) pkcs11-tool lists the HA token and signs
/// through the installed module (openssl verifies), p11-kit list-modules shows the p11ha
/// module and its token, p11tool --list-tokens shows the token; the debug symbols are in the
/// -dbgsym package under the installed library's build id; dpkg --purge removes every file.
#[test]
fn deb_installs_and_serves_real_clients() {
    let _serial = serial();
    if let Some(why) = deb_prerequisites() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("install_deb: CI must run the .deb test, but {why}");
        }
        eprintln!("install_deb: SKIPPED: {why}");
        return;
    }
    let mut c = Command::new(repo().join("packaging/build-deb.sh"));
    c.arg("--fast");
    ok(c, BUILD_TIMEOUT);
    let version = env!("CARGO_PKG_VERSION");
    let debian = release_dir().parent().unwrap().join("debian");
    let deb = debian.join(format!("p11ha_{version}-1_amd64.deb"));
    let ddeb = debian.join(format!("p11ha-dbgsym_{version}-1_amd64.ddeb"));
    let built = release_dir().join("libp11ha.so");
    let id = build_id(&built);
    let dbgsym = ok(
        command("dpkg-deb", &["-c", ddeb.to_str().unwrap()]),
        TOOL_TIMEOUT,
    );
    let debug_file = format!("./usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    assert!(
        dbgsym.contains(&debug_file),
        "{} lacks {debug_file}:\n{dbgsym}",
        ddeb.display()
    );

    let cluster = Cluster::started(2);
    let conf = cluster.write_config(&ConfigOpts::default());

    let installed = Installed;
    ok(
        command("dpkg", &["-i", deb.to_str().unwrap()]),
        TOOL_TIMEOUT,
    );
    for (f, want) in DEB_FILES {
        assert_eq!(mode(Path::new(f)), *want, "mode of {f}");
    }
    let module = Path::new(DEB_MODULE);
    assert!(!has_debug_info(module), "packaged library not stripped");
    assert_eq!(build_id(module), id, "not the build's library");
    assert!(exports_get_function_list(module));
    assert!(
        !has_debug_info(Path::new("/usr/bin/p11ha")),
        "packaged p11ha not stripped"
    );
    check_version_flag(Path::new("/usr/bin/p11ha"));
    check_man_page(
        Path::new("/usr/share/man/man1/p11ha.1.gz"),
        Path::new("/usr/bin/p11ha"),
    );
    assert_eq!(library_version(module, &conf), expected_library_version());

    // pkcs11-tool -L, -O, a SHA256-RSA-PKCS signature verified by openssl.
    run_client_env(
        "pkcs11-tool",
        module,
        GROUP_LABEL,
        &[("P11HA_CONF", conf.as_os_str())],
    )
    .assert_ok();

    // p11-kit finds the module through /usr/share/p11-kit/modules/p11ha.module.
    let list = ok(
        with_conf(command("p11-kit", &["list-modules"]), &conf),
        TOOL_TIMEOUT,
    );
    let block = p11kit_module_block(&list, "p11ha");
    assert_eq!(
        block.first().map(String::as_str),
        Some("p11ha: libp11ha.so"),
        "p11-kit list-modules does not show p11ha:\n{list}"
    );
    assert!(
        block.iter().any(|l| l == &format!("token: {GROUP_LABEL}")),
        "p11-kit shows no HA token under p11ha:\n{list}"
    );
    let tokens = ok(
        with_conf(command("p11tool", &["--list-tokens"]), &conf),
        TOOL_TIMEOUT,
    );
    assert!(
        tokens
            .lines()
            .any(|l| l.trim() == format!("Label: {GROUP_LABEL}")),
        "p11tool --list-tokens does not show the HA token:\n{tokens}"
    );

    drop(installed);
    let status = run_cmd(
        command("dpkg-query", &["-W", "-f=${Status}", "p11ha"]),
        TOOL_TIMEOUT,
    );
    assert!(
        !status.success() || status.stdout.contains("not-installed"),
        "still installed after purge: {}",
        status.stdout
    );
    let left: Vec<_> = DEB_FILES
        .iter()
        .filter(|(f, _)| Path::new(f).exists())
        .collect();
    assert!(left.is_empty(), "dpkg --purge left {left:?}");
    let list = ok(
        with_conf(command("p11-kit", &["list-modules"]), &conf),
        TOOL_TIMEOUT,
    );
    assert!(
        p11kit_module_block(&list, "p11ha").is_empty(),
        "p11-kit still lists p11ha after purge:\n{list}"
    );
}

/// Guards the helper above against a format change of p11-kit's output going unnoticed.
#[test]
fn p11kit_block_parser_reads_one_module() {
    let out = "a: a.so\n    token: x\np11ha: libp11ha.so\n    library-version: 0.1\n    token: hagroup\n        serial-number: 1\nb: b.so\n    token: y\n";
    assert_eq!(
        p11kit_module_block(out, "p11ha"),
        [
            "p11ha: libp11ha.so",
            "library-version: 0.1",
            "token: hagroup",
            "serial-number: 1"
        ]
    );
    assert!(p11kit_module_block(out, "c").is_empty());
}
