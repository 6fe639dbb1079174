//! Bad configurations make C_Initialize fail with CKR_GENERAL_ERROR and one message naming
//! file, line and key, on stderr and in the HA log. Checked through a real client (pkcs11-tool)
//! so the library runs in a process of its own.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::*;

const GOOD_PROVIDER: &str = "HAProviders = {\n  Provider00Library = /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so;\n}\n";

/// Runs `pkcs11-tool -L` on libp11ha.so with `conf`; returns (success, stderr).
fn list_with(conf: &Path) -> (bool, String) {
    let mut cmd = Command::new("pkcs11-tool");
    cmd.arg("--module")
        .arg(p11ha_lib())
        .arg("-L")
        .env("P11HA_CONF", conf);
    let run = run_cmd(cmd, Duration::from_secs(30));
    (run.success(), format!("{}{}", run.stderr, run.stdout))
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Asserts C_Initialize failed with CKR_GENERAL_ERROR and the message names `file:line: key`.
fn assert_rejected(conf: &Path, line: usize, key: &str, what: &str) -> String {
    let (ok, out) = list_with(conf);
    assert!(!ok, "{what}: accepted\n{out}");
    assert!(
        out.contains("CKR_GENERAL_ERROR") || out.contains("0x5"),
        "{what}: not CKR_GENERAL_ERROR\n{out}"
    );
    let place = format!(
        "p11ha: configuration error: {}:{line}: {key}:",
        conf.display()
    );
    assert!(out.contains(&place), "{what}: expected '{place}' in\n{out}");
    out
}

#[test]
fn each_bad_configuration_is_named_by_file_line_and_key() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();

    let f = write(d, "dup.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111, 222, 111;\n}}\n{GOOD_PROVIDER}"
    ));
    assert_rejected(&f, 3, "VirtualToken00Members", "member listed twice");

    let f = write(d, "sync.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHASynchronize = {{\n  nosuchgroup = 1;\n}}\n{GOOD_PROVIDER}"
    ));
    assert_rejected(&f, 6, "nosuchgroup", "unknown group in HASynchronize");

    let f = write(d, "lib.conf",
        "VirtualToken = {\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}\nHAProviders = {\n  Provider00Library = /nonexistent/libnothing.so;\n}\n");
    assert_rejected(&f, 6, "Provider00Library", "missing provider library");

    // A bad logLen with a usable haLogPath: the error reaches the HA log too.
    let logdir = d.join("log");
    std::fs::create_dir(&logdir).unwrap();
    let f = write(d, "loglen.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHAConfiguration = {{\n  haLogPath = {};\n  logLen = lots;\n}}\n{GOOD_PROVIDER}",
        logdir.display()
    ));
    assert_rejected(&f, 7, "logLen", "non-numeric logLen");
    let log = std::fs::read_to_string(logdir.join("haErrorLog.txt")).unwrap_or_default();
    assert!(
        log.contains("configuration error") && log.contains("logLen"),
        "HA log: {log}"
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let f = write(
        dir.path(),
        "syntax.conf",
        "VirtualToken = {\n  VirtualToken00Label = g;\n  VirtualToken00Members 111;\n}\n",
    );
    let (ok, out) = list_with(&f);
    assert!(!ok, "accepted:\n{out}");
    let place = format!("p11ha: configuration error: {}:3", f.display());
    assert!(out.contains(&place), "expected '{place}' in\n{out}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (ok, out) = list_with(Path::new("/nonexistent/Chrystoki.conf"));
    assert!(!ok);
    assert!(
        out.contains("p11ha: configuration error: /nonexistent/Chrystoki.conf: cannot read"),
        "{out}"
    );
}

#[test]
fn a_misspelled_key_is_a_warning_not_an_error() {
    let dir = tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap();
    let f = write(dir.path(), "typo.conf", &format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\nHAConfiguration = {{\n  reconAtt = 3;\n}}\n{GOOD_PROVIDER}"
    ));
    let (ok, out) = list_with(&f);
    assert!(ok, "a warning must not fail C_Initialize:\n{out}");
    assert!(
        out.contains("p11ha: warning:") && out.contains("reconAtt") && out.contains("reconnAtt"),
        "{out}"
    );
}

// ------------------------------------------------------------------------------------------------
// Refused at C_Initialize by a plain C application (tests/c/init_probe.c): configurations that
// used to hang, exhaust memory, or pass with CKR_OK (issue 10, item 7).

/// `tests/c/init_probe.c`, compiled once per test process into cargo's target tmp directory.
fn probe_exe() -> &'static Path {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/init_probe.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Built under a name of this process, then renamed: a concurrent run never executes a
        // half-written file, and one binary is left behind, not one per run.
        let tmp = dir.join(format!("init_probe-{}", std::process::id()));
        let mut cc = Command::new("cc");
        cc.args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"])
            .arg("-I/usr/include/p11-kit-1")
            .arg(&src)
            .arg("-o")
            .arg(&tmp)
            .arg("-ldl");
        support::clients::checked(cc);
        let exe = dir.join("init_probe");
        std::fs::rename(&tmp, &exe).unwrap();
        exe
    })
}

/// Runs the probe on libp11ha.so with `conf` (`P11HA_CONF`), `args` after the module path.
fn probe(conf: &Path, args: &[&str]) -> ClientRun {
    let mut cmd = Command::new(probe_exe());
    cmd.arg(p11ha_lib())
        .args(args)
        .env("P11HA_CONF", conf)
        .env_remove("ChrystokiConfigurationPath");
    run_cmd(cmd, Duration::from_secs(30))
}

/// C_Initialize returned CKR_GENERAL_ERROR, in bounded time, and stderr has `message`.
#[track_caller]
fn assert_refused(run: &ClientRun, message: &str) {
    assert!(
        !run.timed_out,
        "C_Initialize did not return:\n{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("C_Initialize rv=0x5\n"),
        "expected CKR_GENERAL_ERROR:\n{}",
        run.describe()
    );
    assert!(
        run.stderr.contains(message),
        "stderr lacks {message:?}:\n{}",
        run.describe()
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("p11ha-cfg")
        .tempdir_in("/tmp")
        .unwrap()
}

fn group_with(provider_library: &Path) -> String {
    format!(
        "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\n\
         HAProviders = {{\n  Provider00Library = {};\n}}\n",
        provider_library.display()
    )
}

#[test]
fn a_fifo_as_configuration_does_not_block_c_initialize() {
    let dir = tempdir();
    let fifo = dir.path().join("Chrystoki.conf");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let run = probe(&fifo, &[]);
    assert_refused(
        &run,
        &format!(
            "p11ha: configuration error: {}: cannot read the configuration file: it is a FIFO",
            fifo.display()
        ),
    );
}

#[test]
fn endless_devices_as_configuration_are_refused_not_read() {
    // Under a 2 GiB address-space limit, reading them would abort the process quickly instead
    // of taking the machine's memory.
    for dev in ["/dev/zero", "/dev/urandom"] {
        let run = probe(Path::new(dev), &["0", "2048"]);
        assert_refused(
            &run,
            &format!("p11ha: configuration error: {dev}: cannot read the configuration file: it is a character device"),
        );
    }
}

#[test]
fn a_library_that_is_no_pkcs11_module_is_not_a_provider() {
    let dir = tempdir();
    let text = write(dir.path(), "module.so", "just text\n");
    for (library, why) in [
        (text.as_path(), "cannot load it as a shared library"),
        (
            Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1"),
            "it does not export C_GetFunctionList: it is not a PKCS#11 module",
        ),
    ] {
        let conf = write(dir.path(), "Chrystoki.conf", &group_with(library));
        let run = probe(&conf, &[]);
        assert_refused(
            &run,
            &format!(
                "p11ha: configuration error: {}:6: Provider00Library: \"{}\" cannot be a member \
                 module: {why}",
                conf.display(),
                library.display()
            ),
        );
    }
}

#[test]
fn p11ha_is_not_its_own_provider_by_any_path() {
    let dir = tempdir();
    let lib = p11ha_lib();
    let link = dir.path().join("libmember.so");
    std::os::unix::fs::symlink(&lib, &link).unwrap();
    let copy = dir.path().join("libcopy.so");
    std::fs::copy(&lib, &copy).unwrap();
    for library in [lib.as_path(), &link, &copy] {
        let conf = write(dir.path(), "Chrystoki.conf", &group_with(library));
        // Before the check, C_Initialize returned CKR_OK and the library finalized itself from
        // inside a second later.
        let run = probe(&conf, &["1500"]);
        assert_refused(
            &run,
            &format!(
                "{}:6: Provider00Library: \"{}\" cannot be a member module: it is p11ha itself",
                conf.display(),
                library.display()
            ),
        );
    }
}

#[test]
fn a_huge_label_is_echoed_bounded_on_stderr_and_in_the_ha_log() {
    let dir = tempdir();
    let logdir = dir.path().join("log");
    std::fs::create_dir(&logdir).unwrap();
    let label = "L".repeat(900_000);
    let conf = write(
        dir.path(),
        "Chrystoki.conf",
        &format!(
            "HAConfiguration = {{ haLogPath = {}; }}\nVirtualToken = {{\n  VirtualToken00Label = \
             {label};\n  VirtualToken00Members = 111;\n}}\n{GOOD_PROVIDER}",
            logdir.display()
        ),
    );
    let run = probe(&conf, &[]);
    assert_refused(&run, ":3: VirtualToken00Label: label \"LLLL");
    assert!(
        run.stderr
            .contains("…\" (900000 bytes) is 900000 bytes long"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.len() < 2000,
        "stderr is {} bytes",
        run.stderr.len()
    );
    let log = std::fs::read_to_string(logdir.join("haErrorLog.txt")).unwrap();
    assert!(log.contains("(900000 bytes)"), "{log}");
    assert!(log.len() < 2000, "HA log is {} bytes", log.len());
}

#[test]
fn a_nul_or_invalid_utf8_in_a_label_is_refused() {
    let dir = tempdir();
    let provider = GOOD_PROVIDER.as_bytes();
    for (label, why) in [
        (
            &b"ab\0cd"[..],
            "holds the control or invisible character U+0000 at character 3",
        ),
        (&b"caf\xe9"[..], "is not valid UTF-8"),
    ] {
        let mut text = b"VirtualToken = {\n  VirtualToken00Label = ".to_vec();
        text.extend_from_slice(label);
        text.extend_from_slice(b";\n  VirtualToken00Members = 111;\n}\n");
        text.extend_from_slice(provider);
        let conf = dir.path().join("Chrystoki.conf");
        std::fs::write(&conf, text).unwrap();
        let run = probe(&conf, &[]);
        assert_refused(
            &run,
            &format!("{}:2: VirtualToken00Label: the value ", conf.display()),
        );
        assert!(run.stderr.contains(why), "{}", run.describe());
        assert!(!run.stderr.contains('\0'), "{}", run.describe());
    }
}

#[test]
fn a_file_without_configuration_is_refused_or_warned_about() {
    let dir = tempdir();
    for text in ["", "// nothing but a comment\n"] {
        let conf = write(dir.path(), "Chrystoki.conf", text);
        let run = probe(&conf, &[]);
        assert_refused(
            &run,
            &format!(
                "p11ha: configuration error: {}: the file holds no configuration",
                conf.display()
            ),
        );
    }
    // A Luna file without p11ha's sections loads, serves nothing, and says so.
    let conf = write(
        dir.path(),
        "Chrystoki.conf",
        "Chrystoki2 = {\n   LibUNIX64 = /usr/safenet/lunaclient/lib/libCryptoki2_64.so;\n}\n",
    );
    let run = probe(&conf, &[]);
    assert!(run.success(), "{}", run.describe());
    assert!(run.stdout.contains("slots=0\n"), "{}", run.describe());
    assert!(
        run.stderr.contains(&format!(
            "p11ha: warning: {}: no HA group and no provider are configured",
            conf.display()
        )),
        "{}",
        run.describe()
    );
}

#[test]
fn log_directories_that_cannot_work_are_refused() {
    let dir = tempdir();
    for (path, why) in [
        (
            "/proc",
            "\"/proc\" is on procfs, where no file can be created",
        ),
        ("halog", "expected an absolute directory path"),
    ] {
        let conf = write(
            dir.path(),
            "Chrystoki.conf",
            &format!(
                "VirtualToken = {{\n  VirtualToken00Label = g;\n  VirtualToken00Members = 111;\n}}\n\
                 HAConfiguration = {{\n  haLogPath = {path};\n}}\n{GOOD_PROVIDER}"
            ),
        );
        let run = probe(&conf, &[]);
        assert_refused(&run, &format!("{}:6: haLogPath: {why}", conf.display()));
    }
}

/// Runs the probe with no `P11HA_CONF`: `ChrystokiConfigurationPath` is `dir` (unset when
/// `None`), and `P11HA_DEBUG` is `debug` (unset when `None`).
fn probe_unconfigured(dir: Option<&Path>, debug: Option<&str>) -> ClientRun {
    let mut cmd = Command::new(probe_exe());
    cmd.arg(p11ha_lib())
        .env_remove("P11HA_CONF")
        .env_remove("P11HA_DEBUG")
        .env_remove("ChrystokiConfigurationPath");
    if let Some(d) = dir {
        cmd.env("ChrystokiConfigurationPath", d);
    }
    if let Some(level) = debug {
        cmd.env("P11HA_DEBUG", level);
    }
    run_cmd(cmd, Duration::from_secs(30))
}

const NO_SLOTS: &str =
    "C_Initialize rv=0x0\nslots=0\nlater C_GetSlotList rv=0x0\nC_Finalize rv=0x0\n";

/// Issue 16: installed and registered with p11-kit, p11ha is loaded by every p11-kit consumer
/// (p11-kit list-modules, p11tool, pkcs11-tool through p11-kit-proxy) whether or not anyone
/// configured it. With no configuration file anywhere it looks, it is a module with no slots
/// that says nothing, unless P11HA_DEBUG asks; a file that is there but broken still fails.
#[test]
fn no_configuration_at_all_is_a_silent_module_with_no_slots() {
    let dir = tempdir();
    let run = probe_unconfigured(Some(dir.path()), None);
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        (NO_SLOTS, ""),
        "{}",
        run.describe()
    );

    // Neither variable set: the default place, when this machine has no file there.
    if Path::new("/etc/Chrystoki.conf").exists() {
        eprintln!("skipped the unset-variables case: /etc/Chrystoki.conf exists on this machine");
    } else {
        let run = probe_unconfigured(None, None);
        assert_eq!(
            (run.stdout.as_str(), run.stderr.as_str()),
            (NO_SLOTS, ""),
            "{}",
            run.describe()
        );
    }

    let run = probe_unconfigured(Some(dir.path()), Some("info"));
    assert_eq!(run.stdout, NO_SLOTS, "{}", run.describe());
    assert_eq!(
        run.stderr,
        format!(
            "p11ha: no configuration found: {}/Chrystoki.conf does not exist \
             (ChrystokiConfigurationPath is {}, P11HA_CONF is not set). Write one (an annotated \
             example: config/Chrystoki.conf in the sources, /usr/share/doc/p11ha/examples/ when \
             installed; `p11ha addprovider` starts one) or set P11HA_CONF to its path; serving \
             no slots\n",
            dir.path().display(),
            dir.path().display()
        )
    );

    // There but broken: refused, loudly, as before.
    let conf = write(dir.path(), "Chrystoki.conf", "VirtualToken = {\n");
    let run = probe_unconfigured(Some(dir.path()), None);
    assert_refused(
        &run,
        &format!("p11ha: configuration error: {}:", conf.display()),
    );
    // A dangling link is a file someone meant to be there.
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.conf"), &conf).unwrap();
    let run = probe_unconfigured(Some(dir.path()), None);
    assert_refused(
        &run,
        &format!(
            "p11ha: configuration error: {}: cannot read the configuration file",
            conf.display()
        ),
    );
    // P11HA_CONF names a file: that one missing is an error too.
    let run = probe(&dir.path().join("missing.conf"), &[]);
    assert_refused(&run, "cannot read the configuration file");
}
