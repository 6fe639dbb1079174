//! Rotation and retention: the full current file renamed with a time stamp, and the oldest
//! rotated files beyond `haLogRetain` deleted (only regular files of ours), each with the last
//! sequence number it held, for the `AUDIT_FILE_REMOVED` records.

use super::names::{is_rotated, now_ns, stamp_text};
use super::state::State;
use super::Stream;
use crate::audit::record;
use crate::halog::writer::{rename_noreplace, rotated_files};
use crate::safe_file;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

impl Stream {
    /// Renames the full current file and applies the retention (call with the lock held).
    /// Returns the rotated files deleted with the last sequence number each held.
    pub(super) fn rotate(&mut self, st: &mut State) -> io::Result<Vec<(String, u64)>> {
        if safe_file::id_at(&self.current)? != st.file {
            st.file = None;
            st.size = 0;
            return Ok(Vec::new());
        }
        let stamp = now_ns().max(st.stamp + 1);
        let base = format!("{}.{}", self.base, stamp_text(stamp));
        let mut name = format!("{base}.txt");
        let mut n = 0;
        loop {
            match rename_noreplace(&self.current, &self.dir.join(&name)) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 999 => {
                    n += 1;
                    name = format!("{base}_{n:03}.txt");
                }
                Err(e) => return Err(e),
            }
        }
        self.file = None;
        st.file = None;
        st.size = 0;
        st.prev_file = name;
        st.stamp = stamp;
        self.store_state(st)?;
        if self.retain == 0 {
            return Ok(Vec::new());
        }
        let rotated = rotated_files(&self.dir, |n| is_rotated(&self.base, n))?;
        let excess = rotated
            .len()
            .saturating_sub(usize::try_from(self.retain).unwrap_or(usize::MAX));
        let mut removed = Vec::new();
        for name in rotated.into_iter().take(excess) {
            let path = self.dir.join(&name);
            let Some(last) = last_seq_of(&path) else {
                continue;
            };
            if is_ours(&path) && std::fs::remove_file(&path).is_ok() {
                removed.push((name, last));
            }
        }
        Ok(removed)
    }
}

fn is_ours(path: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_file() && m.uid() == me && m.nlink() == 1)
}

/// The sequence number of the last complete record of a file (read from its end).
fn last_seq_of(path: &Path) -> Option<u64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find_map(|l| record::parse(l).ok())
        .map(|r| r.seq)
}
