//! Bringing the state up to date with what the files hold, under the lock: records of a writer
//! that died before storing its state are chained (never numbered again), a record cut short is
//! ended, and a lost state file is rebuilt from the newest file.

use super::names::stream_files;
use super::state::State;
use super::{header_point, Stream};
use crate::audit::record;
use crate::diag::diag;
use crate::safe_file::{self, Access};
use std::io::{self, Read, Seek, SeekFrom, Write};

impl Stream {
    /// The state, brought up to date with what the files hold (call with the lock held).
    pub(super) fn load_state(&mut self) -> io::Result<State> {
        let text = self.read_state_text().unwrap_or_default();
        let mut st = match State::parse(&text) {
            Some(st) => st,
            None => self.rebuild(!text.is_empty())?,
        };
        match safe_file::id_at(&self.current)? {
            None => {
                st.file = None;
                st.size = 0;
            }
            Some(id) => {
                let len = std::fs::symlink_metadata(&self.current)?.len();
                if st.file != Some(id) {
                    // A file the state does not describe: written by a writer that died before
                    // storing the state. What it holds continues the chain.
                    st.file = Some(id);
                    st.size = 0;
                }
                if len > st.size {
                    self.replay(&mut st)?;
                } else if len < st.size {
                    // Cut short by someone: the chain goes on from the state (verify reports).
                    st.size = len;
                }
            }
        }
        Ok(st)
    }

    /// Chains the records the current file holds beyond `st.size`; ends a record cut short
    /// with a newline so the next one starts on its own line.
    fn replay(&mut self, st: &mut State) -> io::Result<()> {
        let mut f = safe_file::open(&self.current, Access::ReadAppend)?;
        f.seek(SeekFrom::Start(st.size))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&tail[..complete]).lines() {
            match record::parse(line) {
                Ok(r) if r.seq == st.next => st.chain(&r),
                _ => {}
            }
        }
        if complete < tail.len() {
            f.write_all(b"\n")?;
        }
        st.size = f.metadata()?.len();
        Ok(())
    }

    /// A state from the newest file, when the state file is missing or unreadable: sequence
    /// numbers must never start over while records exist.
    fn rebuild(&mut self, unreadable: bool) -> io::Result<State> {
        let mut st = State::genesis();
        let files = stream_files(&self.dir, &self.serial)?;
        let Some(newest) = files.last() else {
            return Ok(st);
        };
        if unreadable {
            diag!(
                Warn,
                "audit trail {}: the state file was unreadable; rebuilt from {}",
                self.dir.display(),
                newest.display()
            );
        }
        let bytes = std::fs::read(newest)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut records = text.lines().filter_map(|l| record::parse(l).ok());
        if let Some(first) = records.next() {
            if let Some(p) = header_point(&first) {
                st.h = p.h;
                st.mac = p.mac;
                st.last_seq = p.seq;
            }
            st.next = first.seq;
            st.chain(&first);
            for r in records {
                if r.seq == st.next {
                    st.chain(&r);
                }
            }
        }
        if newest == &self.current {
            st.file = safe_file::id_at(newest)?;
            // A record cut short at the end is for load_state's replay to end.
            st.size = bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i as u64 + 1);
        } else {
            st.prev_file = newest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        Ok(st)
    }
}
