//! Following a log live (`p11ha audit follow`, `p11ha halog -follow`), across rotations: the
//! file is read from where it ended; when its name comes to refer to another file (rotated away,
//! a new one created), the old one is read to its end first, then the new one from its start.
//! Only whole lines are handed on.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How often the file is looked at: a new record shows within this (plus a read).
pub const POLL: Duration = Duration::from_millis(100);

struct Open {
    file: File,
    id: (u64, u64),
    partial: Vec<u8>,
}

impl Open {
    fn at(path: &Path, from_end: bool) -> Option<Open> {
        let mut file = File::open(path).ok()?;
        let m = file.metadata().ok()?;
        if from_end {
            use std::io::Seek;
            file.seek(io::SeekFrom::End(0)).ok()?;
        }
        Some(Open {
            file,
            id: (m.dev(), m.ino()),
            partial: Vec::new(),
        })
    }

    /// Hands on every whole line read so far; false when `out` asked to stop.
    fn drain(&mut self, out: &mut dyn FnMut(&str) -> bool) -> io::Result<bool> {
        let mut buf = Vec::new();
        self.file.read_to_end(&mut buf)?;
        self.partial.extend_from_slice(&buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            if !out(String::from_utf8_lossy(&line[..i]).as_ref()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Follows `dir/name`, starting at its end (or at the start of the file that appears there),
/// until `out` returns false.
pub fn follow(dir: &Path, name: &str, out: &mut dyn FnMut(&str) -> bool) -> io::Result<()> {
    let path = dir.join(name);
    let mut cur = Open::at(&path, true);
    loop {
        if let Some(o) = cur.as_mut() {
            if !o.drain(out)? {
                return Ok(());
            }
        }
        let now = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        if now.is_some() && now != cur.as_ref().map(|o| o.id) {
            // Rotated: what the old file got since the last read was handed on above.
            if let Some(mut o) = cur.take() {
                if !o.drain(out)? {
                    return Ok(());
                }
            }
            cur = Open::at(&path, false);
            continue;
        }
        std::thread::sleep(POLL);
    }
}
