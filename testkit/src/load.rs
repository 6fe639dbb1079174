//! A signing load for failover tests: threads signing with the group's RSA key until stopped,
//! counting signatures as they happen, so that tests wait for counts rather than sleep.

use crate::member::MemberClient;
use crate::RSA_ID;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectClass;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What one signing thread did: signatures made, failures' messages, slowest call.
type Tally = (usize, Vec<String>, Duration);

/// Threads signing until [`SigningLoad::stop`] (or drop: also when an assertion fails first).
pub struct SigningLoad {
    stop: Arc<AtomicBool>,
    signed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Tally>>,
}

impl SigningLoad {
    /// `threads` threads, each with its own session, signing distinct short messages.
    pub fn start(ha: &Arc<MemberClient>, threads: usize) -> SigningLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let signed = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|t| {
                let (ha, stop, signed) = (ha.clone(), stop.clone(), signed.clone());
                thread::spawn(move || {
                    let s = ha.session().expect("session");
                    let key = ha.find(&s, ObjectClass::PRIVATE_KEY, RSA_ID).expect("key");
                    let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let t0 = Instant::now();
                        match s.sign(&Mechanism::Sha256RsaPkcs, key, &[t as u8, n as u8]) {
                            Ok(_) => {
                                ok += 1;
                                signed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failed.push(e.to_string()),
                        }
                        slowest = slowest.max(t0.elapsed());
                    }
                    (ok, failed, slowest)
                })
            })
            .collect();
        SigningLoad {
            stop,
            signed,
            threads,
        }
    }

    /// Signatures made so far, by every thread.
    pub fn signed(&self) -> usize {
        self.signed.load(Ordering::Relaxed)
    }

    /// Asks the threads to stop after their current signature.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Threads that have not returned yet.
    pub fn running(&self) -> usize {
        self.threads.iter().filter(|h| !h.is_finished()).count()
    }

    /// Stops the load and waits for every thread: (signatures, failures, slowest call).
    pub fn collect(mut self) -> Tally {
        self.stop();
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|h| h.join().expect("signing thread"))
            .fold((0, vec![], Duration::ZERO), |mut acc, (ok, f, s)| {
                acc.0 += ok;
                acc.1.extend(f);
                acc.2 = acc.2.max(s);
                acc
            })
    }
}

impl Drop for SigningLoad {
    fn drop(&mut self) {
        self.stop();
    }
}
