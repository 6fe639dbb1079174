//! The chain that ties every record to all before it.
//!
//! For record n with body `b_n` (the line up to `|mac=`), the previous record's MAC field `m_{n-1}`
//! (`-` or 64 hex digits, as written) and the previous chain value `h_{n-1}`:
//!
//! ```text
//! h_n   = SHA-256( h_{n-1} ‖ m_{n-1} ‖ "\n" ‖ b_n )        h_{-1} = 32 zero bytes, m_{-1} = "-"
//! mac_n = HMAC-SHA256( audit key, h_n )                   computed by a member (CKM_SHA256_HMAC)
//! ```
//!
//! So a record's MAC covers the previous record's MAC and the record itself, and through `h` every
//! record before it: a record written without a MAC of its own (no member up, no login, or one
//! of a backlog, see [`sealed_positions`]) is sealed by the next record that has one. The hash is
//! computed on the host (it needs no key); only the MAC needs a member, so records can always be
//! written, and only their sealing waits for a member.

use sha2::{Digest, Sha256};

/// `h` before the first record of a stream.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain value of a record (see the module docs).
pub fn next(h_prev: &[u8; 32], mac_prev: &str, body: &str) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(h_prev);
    d.update(mac_prev.as_bytes());
    d.update(b"\n");
    d.update(body.as_bytes());
    d.finalize().into()
}

/// Under a backlog, one record in this many gets a MAC of its own (each costs a member call).
pub const MAX_RUN: usize = 16;

/// Which of `n` records written together get a MAC of their own: every one while the writer
/// keeps up (`n <= MAX_RUN`); under a backlog every `MAX_RUN`-th and the last, the others are
/// sealed by the next MAC after them.
pub fn sealed_positions(n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| n <= MAX_RUN || i + 1 == n || (i + 1) % MAX_RUN == 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_value_is_sha256_of_its_inputs() {
        // Independent value: printf '\0%.0s' {1..32}; printf -- '-\nbody' | sha256sum
        let h = next(&GENESIS, "-", "body");
        let mut input = vec![0u8; 32];
        input.extend_from_slice(b"-\nbody");
        let expected: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(h, expected);
        assert_ne!(next(&GENESIS, "-", "bodY"), h);
        assert_ne!(next(&h, "-", "body"), h);
    }

    #[test]
    fn a_backlog_is_sealed_every_max_run_records() {
        assert!(sealed_positions(3).iter().all(|&s| s));
        let p = sealed_positions(40);
        let sealed: Vec<usize> = (0..40).filter(|&i| p[i]).collect();
        assert_eq!(sealed, vec![15, 31, 39]);
    }
}
