//! Where a verb gets a PIN: its `-password` option, else an environment variable, else a prompt
//! on the terminal without echo (as lunacm asks). Never printed, never written.

use super::{bad, CliError};
use std::io::{BufRead, Write};
use zeroize::Zeroizing;

/// The PIN from `given`, else `$var`, else asked on the controlling terminal.
pub fn pin(
    verb: &str,
    given: Option<&str>,
    var: &str,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    if let Some(p) = given {
        return Ok(Zeroizing::new(p.as_bytes().to_vec()));
    }
    if let Ok(p) = std::env::var(var) {
        return Ok(Zeroizing::new(p.into_bytes()));
    }
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return Err(bad(format!(
            "{verb}: {what} is needed: give -password, set {var}, or run on a terminal to be asked"
        )));
    }
    prompt(&format!("Enter {what}: ")).map_err(|e| {
        bad(format!(
            "{verb}: could not read {what} from the terminal: {e}"
        ))
    })
}

/// Reads one line from the terminal with echo off; echo is restored even on error.
fn prompt(text: &str) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")?;
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for an open terminal.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: a valid termios for this fd.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut w = &tty;
    let mut line = Zeroizing::new(Vec::new());
    let read = w
        .write_all(text.as_bytes())
        .and_then(|_| std::io::BufReader::new(&tty).read_until(b'\n', &mut line));
    // SAFETY: restores what tcgetattr read.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(line)
}
