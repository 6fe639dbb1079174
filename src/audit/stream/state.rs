//! The stream's state file: what it holds, written and read back, and how a record read back
//! from a file moves it on.

use crate::audit::chain::{self, GENESIS};
use crate::audit::event::{escape_into, hex32, parse_hex32, unescape, ChainPoint};
use crate::audit::record::{self, UNSEALED};

/// What the state file holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct State {
    /// The last restart number given to a writer.
    pub(super) restart: u32,
    pub(super) next: u64,
    pub(super) last_seq: Option<u64>,
    pub(super) h: [u8; 32],
    pub(super) mac: String,
    /// The current file this state describes, and how much of it.
    pub(super) file: Option<(u64, u64)>,
    pub(super) size: u64,
    /// The last rotated file's name (named by the next file's header).
    pub(super) prev_file: String,
    /// The last rotation stamp (ns).
    pub(super) stamp: u128,
    /// Records a writer could not write before its process ended ([`Stream::note_lost`](super::Stream::note_lost)), and
    /// why: the next record written says so.
    pub(super) lost: u64,
    pub(super) lost_why: String,
}

const STATE_MAGIC: &str = "p11ha-audit-state 1";

impl State {
    pub(super) fn genesis() -> State {
        State {
            restart: 0,
            next: 0,
            last_seq: None,
            h: GENESIS,
            mac: UNSEALED.to_string(),
            file: None,
            size: 0,
            prev_file: String::new(),
            stamp: 0,
            lost: 0,
            lost_why: String::new(),
        }
    }

    pub(super) fn text(&self) -> String {
        let mut why = String::new();
        escape_into(self.lost_why.as_bytes(), &mut why);
        format!(
            "{STATE_MAGIC}\nrestart {}\nnext {}\nlast_seq {}\nh {}\nmac {}\nfile {}\nsize {}\n\
             prev_file {}\nstamp {}\nlost {} {}\n",
            self.restart,
            self.next,
            self.last_seq.map_or("-".into(), |s| s.to_string()),
            hex32(&self.h),
            self.mac,
            self.file.map_or("-".into(), |(d, i)| format!("{d}:{i}")),
            self.size,
            if self.prev_file.is_empty() {
                "-"
            } else {
                &self.prev_file
            },
            self.stamp,
            self.lost,
            if why.is_empty() { "-" } else { &why }
        )
    }

    pub(super) fn parse(text: &str) -> Option<State> {
        let mut lines = text.lines();
        if lines.next()? != STATE_MAGIC {
            return None;
        }
        let mut st = State::genesis();
        let mut seen = 0;
        for l in lines {
            let (k, v) = l.split_once(' ')?;
            seen += 1;
            match k {
                "restart" => st.restart = v.parse().ok()?,
                "next" => st.next = v.parse().ok()?,
                "last_seq" => {
                    st.last_seq = if v == "-" {
                        None
                    } else {
                        Some(v.parse().ok()?)
                    }
                }
                "h" => st.h = parse_hex32(v)?,
                "mac" => {
                    (v == UNSEALED || parse_hex32(v).is_some()).then_some(())?;
                    st.mac = v.to_string();
                }
                "file" => {
                    st.file = if v == "-" {
                        None
                    } else {
                        let (d, i) = v.split_once(':')?;
                        Some((d.parse().ok()?, i.parse().ok()?))
                    }
                }
                "size" => st.size = v.parse().ok()?,
                "prev_file" => st.prev_file = if v == "-" { String::new() } else { v.into() },
                "stamp" => st.stamp = v.parse().ok()?,
                "lost" => {
                    let (n, why) = v.split_once(' ')?;
                    st.lost = n.parse().ok()?;
                    st.lost_why = match why {
                        "-" => String::new(),
                        w => String::from_utf8_lossy(&unescape(w)).into_owned(),
                    };
                }
                _ => return None,
            }
        }
        // 9 lines: written before `lost` existed.
        (seen == 9 || seen == 10).then_some(st)
    }

    /// Takes one record read back from a file into account.
    pub(super) fn chain(&mut self, r: &record::Record) {
        self.h = chain::next(&self.h, &self.mac, &r.body);
        self.mac = r.mac_text.clone();
        self.last_seq = Some(r.seq);
        self.next = r.seq + 1;
        self.restart = self.restart.max(r.restart);
    }

    pub(super) fn point(&self) -> ChainPoint {
        ChainPoint {
            seq: self.last_seq,
            h: self.h,
            mac: self.mac.clone(),
        }
    }
}
