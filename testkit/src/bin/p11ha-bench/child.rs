//! The measuring side: `p11ha-bench --child <module> <token label>` loads one module (direct
//! SoftHSM, p11-kit-client or p11ha, selected by the environment the parent set), logs in, and
//! answers one-line commands on stdin. One contender per process: p11ha and SoftHSM keep
//! process-wide state.

use crate::stats::{cpu_ns, mono_ns, Stats};
use cryptoki_sys::*;
use p11ha_testkit::raw::Module;
use p11ha_testkit::{AES_ID, EC_ID, HMAC_ID, RSA_ID};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operations measured.
pub const OPS: &[&str] = &[
    "ecdsa", "ecdsa2", "rsa", "hmac", "aesgcm", "random", "digest", "sessinfo",
];

/// The multi-part stream of part 8: SHA-256 over `MP_PARTS` parts of `MP_PART` bytes (1 MiB).
pub const MP_PART: usize = 4096;
pub const MP_PARTS: usize = 256;

/// One thread's session, keys and buffers for one operation.
struct Worker {
    m: Arc<Module>,
    slot: CK_SLOT_ID,
    h: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    op: String,
    data: Vec<u8>,
    out: Vec<u8>,
    iv: [u8; 12],
    gcm: CK_GCM_PARAMS,
    /// The digest of the first stream ("sha256mp") or one-shot digest ("digest"): every later
    /// one must give the same.
    reference: Option<Vec<u8>>,
}

impl Worker {
    fn new(m: &Arc<Module>, slot: CK_SLOT_ID, op: &str) -> Result<Box<Worker>, String> {
        let h = m.open_session(slot)?;
        let (class, id, dlen, olen) = match op {
            "ecdsa" | "ecdsa2" => (CKO_PRIVATE_KEY, EC_ID, 32, 72),
            "rsa" => (CKO_PRIVATE_KEY, RSA_ID, 32, 256),
            "hmac" => (CKO_SECRET_KEY, HMAC_ID, 64, 32),
            "aesgcm" => (CKO_SECRET_KEY, AES_ID, 1024, 1024 + 16),
            "random" => (0, 0, 0, 32),
            "digest" => (0, 0, 64, 32),
            "sessinfo" | "openclose" => (0, 0, 0, 0),
            "sha256mp" => (0, 0, MP_PART, 32),
            _ => return Err(format!("unknown op {op}")),
        };
        let key = if id == 0 { 0 } else { m.find(h, class, id)? };
        let mut w = Box::new(Worker {
            m: m.clone(),
            slot,
            h,
            key,
            op: op.to_string(),
            data: (0..dlen).map(|i| i as u8).collect(),
            out: vec![0; olen],
            iv: [7; 12],
            gcm: CK_GCM_PARAMS {
                pIv: std::ptr::null_mut(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: std::ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            },
            reference: None,
        });
        // The box does not move: the IV pointer stays valid.
        w.gcm.pIv = w.iv.as_mut_ptr();
        Ok(w)
    }

    /// CKR_OK when the output is the first one's (kept then), CKR_GENERAL_ERROR otherwise.
    fn same_as_reference(&mut self) -> CK_RV {
        match &self.reference {
            None => {
                self.reference = Some(self.out.clone());
                CKR_OK
            }
            Some(r) if *r == self.out => CKR_OK,
            Some(_) => CKR_GENERAL_ERROR,
        }
    }

    fn once(&mut self) -> CK_RV {
        let m = &*self.m;
        match self.op.as_str() {
            "ecdsa2" => {
                let mut mech = CK_MECHANISM {
                    mechanism: CKM_ECDSA,
                    pParameter: std::ptr::null_mut(),
                    ulParameterLen: 0,
                };
                m.sign_two_call(self.h, &mut mech, self.key, &mut self.data, &mut self.out)
            }
            "ecdsa" | "rsa" | "hmac" => {
                let mech = match self.op.as_str() {
                    "ecdsa" => CKM_ECDSA,
                    "rsa" => CKM_SHA256_RSA_PKCS,
                    _ => CKM_SHA256_HMAC,
                };
                let mut mech = CK_MECHANISM {
                    mechanism: mech,
                    pParameter: std::ptr::null_mut(),
                    ulParameterLen: 0,
                };
                m.sign(self.h, &mut mech, self.key, &mut self.data, &mut self.out)
            }
            "aesgcm" => {
                let mut mech = CK_MECHANISM {
                    mechanism: CKM_AES_GCM,
                    pParameter: &mut self.gcm as *mut _ as *mut _,
                    ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
                };
                m.encrypt(self.h, &mut mech, self.key, &mut self.data, &mut self.out)
            }
            "random" => m.random(self.h, &mut self.out),
            "sha256mp" => self.digest_stream(),
            "digest" => self.digest_once(),
            // Part 10: with the audit trail on, two records (C_OpenSession, C_CloseSession).
            "openclose" => match m.open_session(self.slot) {
                Ok(h) => {
                    m.close_session(h);
                    CKR_OK
                }
                Err(_) => CKR_GENERAL_ERROR,
            },
            _ => m.session_info(self.h),
        }
    }

    /// One-shot SHA-256 over 64 bytes (C_DigestInit + C_Digest); a length other than 32 or a
    /// digest unlike the first one is a failure (CKR_GENERAL_ERROR).
    fn digest_once(&mut self) -> CK_RV {
        let fl = self.m.functions();
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut len = self.out.len() as CK_ULONG;
        // SAFETY: the function list of a loaded module; buffers live for each call.
        unsafe {
            let rv = (fl.C_DigestInit.unwrap())(self.h, &mut mech);
            if rv != CKR_OK {
                return rv;
            }
            let rv = (fl.C_Digest.unwrap())(
                self.h,
                self.data.as_mut_ptr(),
                self.data.len() as CK_ULONG,
                self.out.as_mut_ptr(),
                &mut len,
            );
            if rv != CKR_OK {
                return rv;
            }
        }
        if len != 32 {
            return CKR_GENERAL_ERROR;
        }
        self.same_as_reference()
    }

    /// One multi-part SHA-256 over 1 MiB; a digest unlike the first stream's is a failure
    /// (CKR_GENERAL_ERROR): a replayed stream must give what an uninterrupted one gives.
    fn digest_stream(&mut self) -> CK_RV {
        let fl = self.m.functions();
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: the function list of a loaded module; buffers live for each call.
        unsafe {
            let rv = (fl.C_DigestInit.unwrap())(self.h, &mut mech);
            if rv != CKR_OK {
                return rv;
            }
            for i in 0..MP_PARTS {
                self.data[0] = i as u8;
                let rv = (fl.C_DigestUpdate.unwrap())(
                    self.h,
                    self.data.as_mut_ptr(),
                    self.data.len() as CK_ULONG,
                );
                if rv != CKR_OK {
                    return rv;
                }
            }
            let mut len = self.out.len() as CK_ULONG;
            let rv = (fl.C_DigestFinal.unwrap())(self.h, self.out.as_mut_ptr(), &mut len);
            if rv != CKR_OK {
                return rv;
            }
            self.out.truncate(len as usize);
        }
        self.same_as_reference()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.m.close_session(self.h);
    }
}

// SAFETY: the raw pointers in `gcm` point into the worker's own box.
unsafe impl Send for Worker {}

/// One finished operation: start (CLOCK_MONOTONIC ns), latency (ns), success.
#[derive(Clone, Copy)]
pub struct Rec {
    pub start: u64,
    pub lat: u64,
    pub ok: bool,
}

/// Runs `op` on `threads` threads for `dur`; with `record`, every operation is kept.
fn run(
    m: &Arc<Module>,
    slot: CK_SLOT_ID,
    op: &str,
    threads: usize,
    dur: Duration,
    record: bool,
) -> Result<(Vec<Rec>, Vec<u32>, u64, u64), String> {
    let workers: Vec<Box<Worker>> = (0..threads)
        .map(|_| Worker::new(m, slot, op))
        .collect::<Result<_, _>>()?;
    let go = Arc::new(std::sync::Barrier::new(threads));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let hs: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            let (go, stop) = (go.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lats: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut recs = Vec::new();
                let mut fails = 0u64;
                go.wait();
                let end = Instant::now() + dur;
                loop {
                    let s = Instant::now();
                    if s >= end || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let rv = w.once();
                    let lat = s.elapsed();
                    let ok = rv == CKR_OK;
                    if !ok {
                        fails += 1;
                    }
                    lats.push(u32::try_from(lat.as_nanos()).unwrap_or(u32::MAX));
                    if record {
                        let start = mono_ns() - lat.as_nanos() as u64;
                        recs.push(Rec {
                            start,
                            lat: lat.as_nanos() as u64,
                            ok,
                        });
                    }
                }
                drop(w);
                (lats, recs, fails)
            })
        })
        .collect();
    let mut lats = Vec::new();
    let mut recs = Vec::new();
    let mut fails = 0;
    for h in hs {
        let (l, r, f) = h.join().map_err(|_| "worker panicked")?;
        lats.extend(l);
        recs.extend(r);
        fails += f;
    }
    let elapsed = t0.elapsed().as_nanos() as u64;
    Ok((recs, lats, fails, elapsed))
}

fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Watches the member with `serial`: returns (first time seen dead, first time alive again
/// after that, first time it had an operation in flight after that), CLOCK_MONOTONIC ns.
fn watch_member(m: &Module, slot: CK_SLOT_ID, serial: &str, stop: &AtomicBool) -> [u64; 3] {
    let mut t = [0u64; 3];
    let Some(status) = m.status() else {
        return t;
    };
    while !stop.load(Ordering::Relaxed) {
        let Some(ms) = status.member(slot, serial) else {
            break;
        };
        let now = mono_ns();
        if t[0] == 0 {
            if !ms.alive {
                t[0] = now;
            }
        } else if t[1] == 0 {
            if ms.alive {
                t[1] = now;
            }
        } else if ms.in_flight > 0 {
            t[2] = now;
            break;
        }
        std::thread::yield_now();
    }
    t
}

pub fn main(module: &str, label: &str) {
    if let Err(e) = serve(module, label) {
        println!("error {e}");
    }
}

fn serve(module: &str, label: &str) -> Result<(), String> {
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "{s}");
        let _ = o.flush();
    };
    let rss0 = vm_rss_kb();
    let t0 = Instant::now();
    let m = Module::load(module)?;
    m.initialize()?;
    say(format!("init {}", t0.elapsed().as_nanos()));
    let m = Arc::new(m);
    let slot = m.find_slot(label)?;
    let login = m.open_session(slot)?;
    m.login(login)?;
    say(format!("ready {rss0}"));
    let mut last: Vec<Rec> = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let a: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 { a.get(i).and_then(|s| s.parse().ok()).unwrap_or(0) };
        match a.first().copied() {
            // run <op> <threads> <ms>: throughput and latency.
            Some("run") => {
                let cpu0 = cpu_ns();
                let (_, mut lats, fails, el) = run(
                    &m,
                    slot,
                    a[1],
                    num(2) as usize,
                    Duration::from_millis(num(3)),
                    false,
                )?;
                let s = Stats {
                    cpu: cpu_ns() - cpu0,
                    ..Stats::of(&mut lats, fails, el)
                };
                say(format!("res {}", s.encode()));
            }
            // load <op> <threads> <ms>: keep every operation for a later `window`.
            Some("load") => {
                let (recs, lats, fails, _) = run(
                    &m,
                    slot,
                    a[1],
                    num(2) as usize,
                    Duration::from_millis(num(3)),
                    true,
                )?;
                last = recs;
                say(format!("loaded {} {fails}", lats.len()));
            }
            // window <from> <to>: stats of the recorded ops overlapping [from, to].
            Some("window") => {
                let (from, to) = (num(1), num(2));
                let sel: Vec<&Rec> = last
                    .iter()
                    .filter(|r| r.start <= to && r.start + r.lat >= from)
                    .collect();
                let mut lats: Vec<u32> = sel
                    .iter()
                    .map(|r| r.lat.min(u32::MAX as u64) as u32)
                    .collect();
                let fails = sel.iter().filter(|r| !r.ok).count() as u64;
                let s = Stats::of(&mut lats, fails, to.saturating_sub(from));
                say(format!("res {}", s.encode()));
            }
            // recover <member serial> <ms>: signing load while watching the member's state.
            Some("recover") => {
                let serial = a[1].to_string();
                let stop = Arc::new(AtomicBool::new(false));
                let watcher = {
                    let (m, stop) = (m.clone(), stop.clone());
                    std::thread::spawn(move || watch_member(&m, slot, &serial, &stop))
                };
                say("loading".into());
                let (_, lats, fails, _) =
                    run(&m, slot, "ecdsa", 4, Duration::from_millis(num(2)), false)?;
                stop.store(true, Ordering::Relaxed);
                let t = watcher.join().map_err(|_| "watcher panicked")?;
                say(format!(
                    "recovered {} {} {} {} {fails}",
                    t[0],
                    t[1],
                    t[2],
                    lats.len()
                ));
            }
            // create <prefix> <n>: n token data objects `<prefix>-<i>`, one after the other;
            // answers made, failed, ns, the first failure's CK_RV, CPU ns meanwhile.
            Some("create") => {
                let h = m.open_session(slot)?;
                let (mut ok, mut fails, mut first_rv) = (0u64, 0u64, CKR_OK);
                let cpu0 = cpu_ns();
                let t = Instant::now();
                for i in 0..num(2) {
                    let label = format!("{}-{i}", a[1]);
                    let value = format!("value of {label}");
                    let rv = m.create_data(h, label.as_bytes(), value.as_bytes());
                    if rv == CKR_OK {
                        ok += 1;
                    } else {
                        if fails == 0 {
                            first_rv = rv;
                        }
                        fails += 1;
                    }
                }
                let ns = t.elapsed().as_nanos();
                let cpu = cpu_ns() - cpu0;
                m.close_session(h);
                say(format!("created {ok} {fails} {ns} {first_rv:#x} {cpu}"));
            }
            // count: data objects visible.
            Some("count") => {
                let h = m.open_session(slot)?;
                let n = m.data_objects(h).map(|v| v.len());
                m.close_session(h);
                say(format!("count {}", n?));
            }
            // destroy: every data object visible.
            Some("destroy") => {
                let h = m.open_session(slot)?;
                let t = Instant::now();
                let objs = m.data_objects(h);
                let fails = objs
                    .iter()
                    .flatten()
                    .filter(|&&o| m.destroy(h, o) != CKR_OK)
                    .count();
                let ns = t.elapsed().as_nanos();
                m.close_session(h);
                let n = objs?.len();
                say(format!("destroyed {} {fails} {ns}", n - fails));
            }
            Some("destroys" | "census") => say(crate::destroys::child(&m, slot, &a)?),
            Some("rss") => say(format!("rss {}", vm_rss_kb())),
            // idle <ms>: no calls for that long; the CPU time the process used meanwhile.
            Some("idle") => {
                let cpu0 = cpu_ns();
                std::thread::sleep(Duration::from_millis(num(1)));
                say(format!("idle {}", cpu_ns() - cpu0));
            }
            Some("quit") | None => break,
            Some(other) => say(format!("error unknown command {other}")),
        }
    }
    m.close_session(login);
    m.finalize();
    Ok(())
}
