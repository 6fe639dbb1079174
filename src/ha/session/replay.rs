//! Multi-part operations that outlive their member: what p11ha keeps of an operation's input
//! (up to `MultipartReplayLimit` bytes) so that, when the member serving it fails, the same
//! operation can be initialized on another member and fed the same parts again.
//!
//! Digest, sign and verify updates hand nothing back, so a replay always yields what the dead
//! member would have. Encrypt and decrypt updates have already handed output to the
//! application: the replay must give the same bytes, which p11ha checks; where it does not (a
//! mechanism that is not deterministic), the operation fails as it did before replay existed.

use super::{ActiveOp, Session};
use crate::provider::{Data, OpKind, Output};
use cryptoki_sys::*;
use zeroize::Zeroizing;

/// What an operation has been fed, for a replay.
#[derive(Default)]
pub(super) struct Kept {
    parts: Vec<Data>,
    bytes: usize,
    /// Output already handed to the application (encrypt/decrypt updates). Zeroized: it is
    /// plaintext for a decryption.
    out: Zeroizing<Vec<u8>>,
    /// Why a replay is no longer possible, once it is not.
    lost: Option<&'static str>,
}

impl Kept {
    /// Records a part the member consumed (and the output it gave for it).
    pub(super) fn record(&mut self, part: &Data, out: Option<&[u8]>, limit: usize) {
        if self.lost.is_some() {
            return;
        }
        self.bytes = self.bytes.saturating_add(part.len());
        if self.bytes > limit {
            self.lost = Some("its input passed MultipartReplayLimit");
            self.parts.clear();
            self.out.clear();
            return;
        }
        self.parts.push(part.clone());
        self.out.extend_from_slice(out.unwrap_or_default());
    }

    /// A part whose fate on the member is unknown (its call failed): it may or may not have
    /// been consumed, so no replay can be trusted.
    pub(super) fn unknown(&mut self) {
        self.lost
            .get_or_insert("a part's call failed on the member");
    }

    /// No replay from here on, for `why`.
    pub(super) fn give_up(&mut self, why: &'static str) {
        self.lost.get_or_insert(why);
        self.parts.clear();
        self.out.clear();
    }
}

/// Whether updates of this kind hand output to the application.
fn has_output(kind: OpKind) -> bool {
    matches!(kind, OpKind::Encrypt | OpKind::Decrypt)
}

/// The capacity for one replayed update: what a block mode can hand back for `n` input bytes.
fn replay_capacity(n: usize) -> CK_ULONG {
    (n + 256) as CK_ULONG
}

impl Session {
    /// Feeds the kept parts of `op` (just initialized on a new member) to its new member.
    /// `Err(Some(fault))`: the new member failed (the caller tries the next one); `Err(None)`:
    /// no replay is possible, the reason logged.
    pub(super) fn replay(&self, op: &ActiveOp) -> Result<(), Option<crate::provider::Fault>> {
        let kept = &op.kept;
        if let Some(why) = kept.lost {
            self.log_replay(op, why);
            return Err(None);
        }
        let output = has_output(op.kind);
        let mut got: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(kept.out.len()));
        for part in &kept.parts {
            let cap = output.then(|| replay_capacity(part.len()));
            let out: Output = op
                .inst
                .op_update(op.kind, op.session, part.clone(), cap, None)
                .map_err(Some)?;
            if out.rv != CKR_OK {
                self.log_replay(op, "the new member refused a replayed part");
                return Err(None);
            }
            got.extend_from_slice(out.data.as_deref().unwrap_or_default());
        }
        if output && got[..] != kept.out[..] {
            self.log_replay(op, "the replay's output differs from what was returned");
            return Err(None);
        }
        Ok(())
    }

    pub(super) fn log_replay(&self, op: &ActiveOp, why: &str) {
        self.group.log.multipart_not_replayed(
            &self.group.serial,
            &self.group.member(op.idx).serial,
            why,
        );
    }

    /// Records what an update call consumed, for a later replay.
    pub(super) fn keep_part(
        &self,
        op: &mut ActiveOp,
        part: &Data,
        out: Option<&Output>,
        cap: Option<CK_ULONG>,
    ) {
        let limit = self.group.replay_limit;
        match out {
            // A length query or a buffer too small: the member did not take the part.
            Some(o) if o.rv == CKR_BUFFER_TOO_SMALL || (has_output(op.kind) && cap.is_none()) => {}
            Some(o) if o.rv == CKR_OK => {
                if limit == 0 {
                    op.kept.lost.get_or_insert("MultipartReplayLimit is 0");
                } else {
                    op.kept.record(part, o.data.as_deref(), limit);
                }
            }
            _ => op.kept.unknown(),
        }
    }
}

/// Why a failed member's operation cannot be initialized on another member: it was fed, and
/// not everything it was fed is kept.
pub(super) fn not_movable(op: &ActiveOp) -> Option<&'static str> {
    op.kept.lost.filter(|_| op.fed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Input;

    #[test]
    fn parts_are_kept_up_to_the_limit_and_then_dropped() {
        let mut k = Kept::default();
        k.record(&Input::new(vec![1; 6]), None, 10);
        assert_eq!(k.parts.len(), 1);
        assert!(k.lost.is_none());
        k.record(&Input::new(vec![2; 6]), None, 10);
        assert!(k.lost.is_some(), "12 bytes kept under a limit of 10");
        assert!(k.parts.is_empty(), "parts past the limit are released");
        k.record(&Input::new(vec![3; 1]), None, 10);
        assert!(
            k.parts.is_empty(),
            "nothing is kept once the limit was passed"
        );
    }

    #[test]
    fn outputs_are_concatenated_for_the_check() {
        let mut k = Kept::default();
        k.record(&Input::new(vec![0; 16]), Some(&[1, 2]), 100);
        k.record(&Input::new(vec![0; 16]), Some(&[3]), 100);
        assert_eq!(&k.out[..], &[1, 2, 3]);
    }

    #[test]
    fn a_part_of_unknown_fate_ends_replay() {
        let mut k = Kept::default();
        k.record(&Input::new(vec![0; 4]), None, 100);
        k.unknown();
        assert!(k.lost.is_some());
    }
}
