//! Reading the configuration file without hanging or filling memory: only a regular file (a
//! symlink to one is fine) of at most [`MAX_FILE_LEN`] bytes. A FIFO would block C_Initialize
//! until a writer appears and `/dev/zero` never ends, so neither is opened for reading as a file.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::ConfigError;

/// Largest configuration file read (1 MiB; a full Luna file is a few kB).
pub const MAX_FILE_LEN: u64 = 1 << 20;

fn error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read the configuration file: {message}"),
    }
}

/// What a file that is not a regular file is, for the message.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

fn check_regular(path: &Path, meta: &Metadata) -> Result<(), ConfigError> {
    if !meta.is_file() {
        return Err(error(
            path,
            format!(
                "it is {}: expected a regular file (a symlink to one is fine)",
                kind(meta)
            ),
        ));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(too_long(path, &format!("{} bytes", meta.len())));
    }
    Ok(())
}

fn too_long(path: &Path, size: &str) -> ConfigError {
    error(
        path,
        format!("it is {size} long: a configuration file is at most {MAX_FILE_LEN} bytes (1 MiB)"),
    )
}

/// The bytes of `path`, once.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    // Checked before opening, so a FIFO or a device is never opened at all ...
    let meta = std::fs::metadata(path).map_err(|e| error(path, e.to_string()))?;
    check_regular(path, &meta)?;
    // ... and again on what was opened, in case the path was replaced in between. O_NONBLOCK:
    // opening a FIFO swapped in meanwhile returns at once instead of waiting for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| error(path, e.to_string()))?;
    let meta = file.metadata().map_err(|e| error(path, e.to_string()))?;
    check_regular(path, &meta)?;
    read_bounded(path, file, meta.len())
}

fn read_bounded(path: &Path, file: File, len: u64) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than allowed: a file that grows while it is read is still refused.
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| error(path, e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(too_long(path, &format!("more than {MAX_FILE_LEN} bytes")));
    }
    Ok(bytes)
}
