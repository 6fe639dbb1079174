//! The rules of [`super`], tried on real files, links, FIFOs and directories.

use super::*;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_root() -> bool {
    euid() == 0
}

#[test]
fn creates_private_files_and_reopens_them() {
    let d = dir();
    let p = d.path().join("f");
    open(&p, Access::Append).unwrap().write_all(b"a").unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);
    let mut f = open(&p, Access::ReadAppend).unwrap();
    f.write_all(b"b").unwrap();
    let mut text = String::new();
    open(&p, Access::ReadWrite)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "ab");
    assert_eq!(id_at(&p).unwrap(), Some(id_of(&f).unwrap()));
    assert_eq!(id_at(&d.path().join("none")).unwrap(), None);
}

#[test]
fn symbolic_links_are_refused_and_their_targets_untouched() {
    let d = dir();
    let target = d.path().join("victim");
    std::fs::write(&target, "victim").unwrap();
    let link = d.path().join("haErrorLog.txt");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for access in [Access::Append, Access::ReadAppend, Access::ReadWrite] {
        let e = open(&link, access).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let msg = e.to_string();
        assert!(
            msg.starts_with("haErrorLog.txt is a symbolic link (owned by uid "),
            "{msg}"
        );
        assert!(
            msg.contains("never writes through a link; remove it"),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"victim");
    // A dangling link: O_CREAT must not create its target.
    let absent = d.path().join("absent");
    let dangling = d.path().join("j.journal");
    std::os::unix::fs::symlink(&absent, &dangling).unwrap();
    assert!(open(&dangling, Access::ReadAppend)
        .unwrap_err()
        .to_string()
        .contains("is a symbolic link"));
    assert!(!absent.exists());
}

#[test]
fn fifos_and_directories_are_refused_without_blocking() {
    let d = dir();
    let fifo = d.path().join("fifo");
    let c = cstring(&fifo).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    // No reader: a plain open for writing would block for ever.
    for access in [Access::Append, Access::ReadAppend] {
        let msg = open(&fifo, access).unwrap_err().to_string();
        assert!(
            msg.starts_with("fifo is a FIFO, not a regular file"),
            "{msg}"
        );
    }
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let msg = open(&sub, Access::ReadWrite).unwrap_err().to_string();
    assert!(
        msg.starts_with("sub is a directory, not a regular file"),
        "{msg}"
    );
}

#[test]
fn a_second_hard_link_is_refused() {
    let d = dir();
    let victim = d.path().join("victim");
    std::fs::write(&victim, "victim").unwrap();
    let name = d.path().join(".haErrorLog.lock");
    std::fs::hard_link(&victim, &name).unwrap();
    let msg = open(&name, Access::ReadWrite).unwrap_err().to_string();
    assert!(
        msg.starts_with(".haErrorLog.lock has 2 hard links"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
}

#[test]
fn another_users_file_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to give a file to another user");
        return;
    }
    let d = dir();
    let p = d.path().join("haErrorLog.txt");
    std::fs::write(&p, "theirs").unwrap();
    std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    let msg = open(&p, Access::Append).unwrap_err().to_string();
    assert!(
        msg.starts_with("haErrorLog.txt is owned by uid 65534"),
        "{msg}"
    );
    assert!(msg.contains("not by this process's user uid 0"), "{msg}");
    assert_eq!(std::fs::read(&p).unwrap(), b"theirs");
}

#[test]
fn directories_writable_by_others() {
    let d = dir();
    assert_eq!(check_dir(d.path()).unwrap(), None);

    let open_to_all = d.path().join("open");
    std::fs::create_dir(&open_to_all).unwrap();
    set_mode(&open_to_all, 0o777);
    let e = check_dir(&open_to_all).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert!(
        e.to_string().contains("mode 0777) and has no sticky bit"),
        "{e}"
    );

    let sticky = d.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    set_mode(&sticky, 0o1777);
    let w = check_dir(&sticky).unwrap().expect("a warning");
    assert!(
        w.starts_with(&format!(
            "{}: it is writable by every user (mode 1777; sticky bit set",
            sticky.display()
        )),
        "{w}"
    );
    assert!(is_new(&w));
    assert!(!is_new(&w), "given once only");

    let group = d.path().join("group");
    std::fs::create_dir(&group).unwrap();
    set_mode(&group, 0o770);
    let w = check_dir(&group).unwrap().expect("a warning");
    assert!(w.contains("writable by group gid "), "{w}");
    assert!(w.contains("(no sticky bit)"), "{w}");

    let missing = check_dir(&d.path().join("missing")).unwrap_err();
    assert_eq!(missing.to_string(), "directory does not exist");
    let file = d.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert_eq!(check_dir(&file).unwrap_err().to_string(), "not a directory");
}

#[test]
fn a_directory_of_another_user_is_warned_about() {
    if !is_root() {
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    let d = dir();
    let theirs = d.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    let w = check_dir(&theirs).unwrap().expect("a warning");
    assert!(w.contains("it is owned by uid 65534"), "{w}");
}

#[test]
fn reasons_come_from_the_errno() {
    let e = open(Path::new("/proc/.haErrorLog.lock"), Access::ReadWrite).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot open or create .haErrorLog.lock: /proc is on a proc file system, where \
         files cannot be created (ENOENT)"
    );
    let d = dir();
    set_mode(d.path(), 0o700);
    let rofs = create_reason(d.path(), &io::Error::from_raw_os_error(libc::EROFS));
    assert_eq!(
        rofs,
        format!("{} is on a read-only file system", d.path().display())
    );
    let denied = create_reason(d.path(), &io::Error::from_raw_os_error(libc::EACCES));
    assert!(denied.starts_with("permission denied: "), "{denied}");
    assert!(
        denied.contains(", mode 0700, and this process runs as uid "),
        "{denied}"
    );
}
