//! Chaos: nothing takes the group down. Three members behind p11-kit servers (HAOnly = 0, the
//! default configuration); three C client
//! processes (tests/c/ha_client.c, default SIGPIPE action) of four signing threads each, one of
//! them pausing between signatures (idle connections are where SIGPIPE strikes); a seeded random
//! schedule of kills, restarts, SIGSTOP hangs and SIGCONTs, never of every member at once; then
//! every member killed, and all restarted.
//!
//! Asserted:
//! - no failed operation while a member lives. An operation is one C_SignInit + C_Sign of the
//!   client, with its start and end time (CLOCK_MONOTONIC, the clock of every process). A member
//!   *lives* while its server runs unstopped, it has done so for [`SETTLE`], and no client
//!   process has it out of service (dropped and not yet recovered, by the HA log): a member p11ha
//!   has not recovered yet cannot be asked to serve. An operation whose whole run lies where at
//!   least one member lived must not fail. The schedule keeps one living member at every moment
//!   until the all-down phase: before it kills or stops a member it waits (bounded) until
//!   another one lives;
//! - no client process dies: each exits by itself, with its summary line and C_Finalize CKR_OK;
//! - each client's threads and open fds, once the faults are over and one recovery interval has
//!   passed, are within 2 of what they were before the first fault;
//! - after the all-down phase service is back within AutoReconnectInterval + 1 s in every
//!   client, and no operation started after that fails;
//! - every HA log line is whole: one record of the catalogue, about one of our members, from one
//!   of our clients (a torn or interleaved line parses as none).
//!
//! About 30 s by default. By hand: `P11HA_CHAOS_SECONDS` (random phase, default 18) and
//! `P11HA_CHAOS_SEED` (default: from the clock); the seed is printed at the start, and the seed
//! and the schedule as run are in every failure message.

mod support;

use p11ha::bounded::IDLE_EXIT;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::Duration;
use support::*;

/// How long a member must have run unstopped before it counts as living: time for every client
/// to have sent it work, found out it had died in between, and logged the drop.
const SETTLE: f64 = 1.5;
/// Bound on waiting for a member to live again (recovery by every client takes about one
/// AutoReconnectInterval; this is a margin no loaded machine uses up).
const LIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// AutoReconnectInterval of the configuration, seconds.
const INTERVAL: u64 = 1;
/// The all-down phase.
const ALL_DOWN: Duration = Duration::from_secs(3);
/// The client processes: name and ha_client arguments beyond module, label and timeline.
const CLIENTS: [(&str, &[&str]); 3] = [
    ("busy-a", &["-n", "4"]),
    ("idle", &["-n", "4", "-i", "50"]),
    ("busy-b", &["-n", "4"]),
];

/// CLOCK_MONOTONIC in seconds, as ha_client prints it.
fn mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// splitmix64: a schedule is a function of its seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Kill(usize),
    Restart(usize),
    Stop(usize),
    Cont(usize),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Stopped,
    Killed,
}

/// Steps (pause before, action) for `members` members covering at least `seconds`. At least
/// one member is up and unstopped after every step, and no member stays down longer than 3 s
/// of schedule time.
fn schedule(seed: u64, members: usize, seconds: f64) -> Vec<(Duration, Action)> {
    let mut rng = Rng(seed);
    let mut state = vec![State::Up; members];
    let mut down_at = vec![0.0f64; members];
    let (mut t, mut steps) = (0.0, Vec::new());
    while t < seconds + 5.0 {
        let pause = 0.25 + rng.below(750) as f64 / 1000.0;
        t += pause;
        let ups = state.iter().filter(|s| **s == State::Up).count();
        let overdue = (0..members).find(|&i| state[i] != State::Up && t - down_at[i] >= 3.0);
        let action = match overdue {
            Some(i) if state[i] == State::Stopped => Action::Cont(i),
            Some(i) => Action::Restart(i),
            None => {
                let mut allowed = Vec::new();
                for (i, s) in state.iter().enumerate() {
                    match s {
                        State::Up if ups >= 2 => {
                            allowed.extend([Action::Kill(i), Action::Stop(i)]);
                        }
                        State::Up => {}
                        State::Stopped => allowed.extend([Action::Cont(i), Action::Kill(i)]),
                        State::Killed => allowed.push(Action::Restart(i)),
                    }
                }
                allowed[rng.below(allowed.len() as u64) as usize]
            }
        };
        match action {
            Action::Kill(i) => {
                if state[i] == State::Up {
                    down_at[i] = t;
                }
                state[i] = State::Killed;
            }
            Action::Stop(i) => {
                down_at[i] = t;
                state[i] = State::Stopped;
            }
            Action::Restart(i) | Action::Cont(i) => state[i] = State::Up,
        }
        steps.push((Duration::from_secs_f64(pause), action));
    }
    steps
}

/// Follows the HA log and keeps, per member, whether it lives (see the file docs) and the
/// periods in which it lived.
struct Watch {
    log: PathBuf,
    offset: u64,
    partial: String,
    lines: Vec<String>,
    serials: Vec<String>,
    pids: Vec<u32>,
    /// (client pid, member): out of service in that client (dropped, not yet recovered).
    dropped: HashMap<(u32, usize), bool>,
    /// Per member: since when its server runs unstopped.
    up_since: Vec<Option<f64>>,
    /// Per member: since when it lives.
    living: Vec<Option<f64>>,
    /// Closed living periods of every member.
    periods: Vec<(f64, f64)>,
}

impl Watch {
    fn new(log: PathBuf, serials: Vec<String>, pids: Vec<u32>, t0: f64) -> Watch {
        let n = serials.len();
        Watch {
            log,
            offset: 0,
            partial: String::new(),
            lines: Vec::new(),
            serials,
            pids,
            dropped: HashMap::new(),
            // Up long before the test's time 0, and living from it.
            up_since: vec![Some(t0 - SETTLE); n],
            living: vec![Some(t0); n],
            periods: Vec::new(),
        }
    }

    /// Reads new HA log lines and brings the living state up to `now`.
    fn poll(&mut self, now: f64) {
        let mut buf = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            if f.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = f.read_to_string(&mut buf);
            }
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&buf);
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            let line = line.trim_end_matches('\n').to_string();
            self.note(&line);
            self.lines.push(line);
        }
        for i in 0..self.serials.len() {
            let out = self
                .pids
                .iter()
                .any(|&p| self.dropped.get(&(p, i)) == Some(&true));
            match (self.living[i], self.up_since[i]) {
                (Some(since), _) if out => {
                    self.periods.push((since, now));
                    self.living[i] = None;
                }
                (None, Some(up)) if !out && now - up >= SETTLE => self.living[i] = Some(now),
                _ => {}
            }
        }
    }

    fn note(&mut self, line: &str) {
        let Some(pid) = line
            .split_once(" : [")
            .and_then(|(_, r)| r.split_once(']'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            return;
        };
        for (i, s) in self.serials.iter().enumerate() {
            let out = if line.ends_with(&format!("has dropped member: {s}"))
                || line.contains(&format!("unable to reach member: {s}."))
            {
                true
            } else if line.ends_with(&format!("succeeded for member: {s}")) {
                false
            } else {
                continue;
            };
            self.dropped.insert((pid, i), out);
        }
    }

    fn lives(&self, i: usize) -> bool {
        self.living[i].is_some()
    }

    /// Per member: up or not, living or not, and the clients that have it out of service.
    fn describe(&self, t0: f64) -> String {
        let mut s = String::new();
        for (i, serial) in self.serials.iter().enumerate() {
            let out: Vec<u32> = self
                .pids
                .iter()
                .copied()
                .filter(|&p| self.dropped.get(&(p, i)) == Some(&true))
                .collect();
            let _ = writeln!(
                s,
                "  m{i} ({serial}): up since {:?}, living since {:?}, out of service in clients {out:?}",
                self.up_since[i].map(|t| t - t0),
                self.living[i].map(|t| t - t0)
            );
        }
        s
    }

    /// Member `i` is being killed or stopped now.
    fn going_down(&mut self, i: usize, now: f64) {
        if let Some(since) = self.living[i].take() {
            self.periods.push((since, now));
        }
        self.up_since[i] = None;
    }

    fn came_up(&mut self, i: usize, now: f64) {
        self.up_since[i] = Some(now);
    }

    /// Periods in which at least one member lived, merged, up to `now`.
    fn coverage(&self, now: f64) -> Vec<(f64, f64)> {
        let mut all = self.periods.clone();
        all.extend(self.living.iter().flatten().map(|&s| (s, now)));
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut merged: Vec<(f64, f64)> = Vec::new();
        for (a, b) in all {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        merged
    }
}

/// One client process (its own process group), output in files.
struct Client {
    name: &'static str,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Client {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
}

/// Threads and open file descriptors of a live process.
fn resources(pid: u32) -> Option<(usize, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((threads, fds))
}

/// Every thread of `pid` by name, with its user-space stack when gdb is there (Debian's gdb),
/// else its kernel wait channel.
fn stacks(pid: u32) -> String {
    let gdb = std::process::Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-nx",
            "-ex",
            "thread apply all bt 12",
        ])
        .stdin(Stdio::null())
        .output();
    if let Ok(out) = gdb {
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Thread ") {
            return text
                .lines()
                .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    let mut s = String::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = task.path();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
        let wchan = fs::read_to_string(p.join("wchan")).unwrap_or_default();
        let _ = writeln!(s, "  {} {} {wchan}", p.display(), comm.trim());
    }
    s
}

/// A client's timeline: failed operations (thread, start, end, rv) and first successes after
/// failures (thread, start, end).
#[derive(Default)]
struct Timeline {
    failed: Vec<(u32, f64, f64, String)>,
    back: Vec<(u32, f64, f64)>,
}

fn timeline(stdout: &str) -> Timeline {
    let mut t = Timeline::default();
    for l in stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        match (
            f.first(),
            f.get(1).and_then(|v| v.parse().ok()),
            num(2),
            num(3),
        ) {
            (Some(&"F"), Some(th), Some(a), Some(b)) => {
                t.failed
                    .push((th, a, b, f.get(4).unwrap_or(&"?").to_string()))
            }
            (Some(&"S"), Some(th), Some(a), Some(b)) => t.back.push((th, a, b)),
            _ => {}
        }
    }
    t
}

/// The HA log catalogue (seed 003's messages, as p11ha writes them after the prefix `<ctime> :
/// [pid] HA group: <group serial> `). `{m}`: a member serial, `{n}`: a number, `{rv}`: a CK_RV
/// as `0x00000030 : CKR_DEVICE_ERROR`.
const CATALOGUE: &[&str] = &[
    "configured as a \"PASSWORD Based\" virtual device",
    "configured as a \"PED Based\" virtual device",
    "has dropped member: {m}",
    "unable to reach member: {m}. Manual Recover or Auto Recovery will be able to recover this member",
    "can not login to member: {m}, autorecovery will be disabled. Code: {rv}",
    "member: {m} deactivated",
    "recovery attempt {n} member {m} is now activated and will be reintroduce back into the HA group.",
    "member: {m} revoked",
    "all members gone offline.",
    "management thread started",
    "management thread terminated",
    "detected new member member: {m}",
    "recovery attempt {n} succeeded for member: {m}",
    "recovery attempt {n} reintroducing {n} token objects to recovered token {m}",
    "recovery attempt {n} failed for member: {m}. Code: {rv}.",
    "exceeded maximum number of autorecovery attempts for member: {m}. Autorecovery will be disabled",
    "member {m} is not activated and is excluded from the HA group",
];

/// Whether `text` is `template` with its placeholders filled in.
fn fits(template: &str, text: &str, serials: &[String]) -> bool {
    let Some(pos) = template.find('{') else {
        return template == text;
    };
    let Some(rest) = text.strip_prefix(&template[..pos]) else {
        return false;
    };
    let close = pos + template[pos..].find('}').unwrap();
    let (hole, after) = (&template[pos..=close], &template[close + 1..]);
    let candidates: Vec<usize> = match hole {
        "{m}" => serials
            .iter()
            .filter(|s| rest.starts_with(s.as_str()))
            .map(|s| s.len())
            .collect(),
        "{n}" => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            (1..=digits).collect()
        }
        "{rv}" => {
            let ok = rest.len() > 13
                && rest.starts_with("0x")
                && rest[2..10].bytes().all(|b| b.is_ascii_hexdigit())
                && rest[10..].starts_with(" : ");
            let name = if ok {
                rest[13..]
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'+')
                    .count()
            } else {
                0
            };
            (name > 0).then_some(13 + name).into_iter().collect()
        }
        _ => panic!("unknown placeholder {hole}"),
    };
    candidates
        .into_iter()
        .any(|len| fits(after, &rest[len..], serials))
}

/// Why an HA log line is not one whole record from one of `pids` about `group`'s members
/// (None: it is).
fn torn(line: &str, group: &str, serials: &[String], pids: &[u32]) -> Option<String> {
    if line.len() < 24
        || chrono::NaiveDateTime::parse_from_str(&line[..24], "%a %b %e %H:%M:%S %Y").is_err()
    {
        return Some("no ctime stamp".into());
    }
    let Some((pid, rest)) = line[24..]
        .strip_prefix(" : [")
        .and_then(|r| r.split_once("] "))
    else {
        return Some("no ' : [pid] '".into());
    };
    match pid.parse::<u32>() {
        Ok(p) if pids.contains(&p) => {}
        _ => return Some(format!("pid {pid} is none of the clients {pids:?}")),
    }
    if let Some(n) = rest
        .strip_prefix("HA log: ")
        .and_then(|r| r.strip_suffix(" records dropped (queue full)"))
    {
        return (n.parse::<u64>().is_err()).then(|| "bad dropped-records line".into());
    }
    let Some(event) = rest
        .strip_prefix("HA group: ")
        .and_then(|r| r.strip_prefix(group))
        .and_then(|r| r.strip_prefix(' '))
    else {
        return Some(format!("no 'HA group: {group} '"));
    };
    (!CATALOGUE.iter().any(|t| fits(t, event, serials)))
        .then(|| format!("'{event}' is no record of the catalogue"))
}

/// Everything a failure message needs.
struct Report {
    seed: u64,
    t0: f64,
    clients: String,
    ran: Vec<(f64, String)>,
}

impl Report {
    fn schedule(&self) -> String {
        let mut s = format!(
            "seed {} (rerun: P11HA_CHAOS_SEED={})\nclients: {}\nschedule as run:\n",
            self.seed, self.seed, self.clients
        );
        for (t, what) in &self.ran {
            let _ = writeln!(s, "  {:7.3} s  {what}", t - self.t0);
        }
        s
    }
}

#[test]
fn nothing_takes_the_group_down() {
    let seconds: f64 = std::env::var("P11HA_CHAOS_SECONDS")
        .ok()
        .map(|v| v.parse().expect("P11HA_CHAOS_SECONDS: seconds"))
        .unwrap_or(18.0);
    let seed: u64 = std::env::var("P11HA_CHAOS_SEED")
        .ok()
        .map(|v| v.parse().expect("P11HA_CHAOS_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos: seed {seed}, {seconds} s of faults");

    let cluster = Cluster::started(3);
    // HAOnly = 0: Luna's and p11ha's default, where every member's own slot shares its
    // module instance with the group's member.
    let conf = cluster.write_config(&ConfigOpts {
        ha_only: false,
        auto_reconnect_interval: INTERVAL,
        reconn_att: -1,
        ..Default::default()
    });
    let exe = cluster.build_c_client();
    let stop_file = cluster.dir().join("clients.stop");
    let serials = cluster.serials();
    let n = serials.len();

    // Long enough for every phase; the stop file ends the clients when the test is done.
    let max_run = format!("{}", seconds as u64 + 90);
    let mut clients: Vec<Client> = CLIENTS
        .iter()
        .map(|(name, args)| {
            let out = cluster.dir().join(format!("{name}.out"));
            let err = cluster.dir().join(format!("{name}.err"));
            let mut cmd = c_client_cmd(&exe, &p11ha_lib(), GROUP_LABEL, args);
            cmd.args(["-l", "-q", "-d", &max_run, "-S"])
                .arg(&stop_file)
                .env("P11HA_CONF", &conf)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&out).unwrap())
                .stderr(fs::File::create(&err).unwrap())
                .process_group(0);
            let child = cmd.spawn().expect("spawn ha_client");
            // Killed with the cluster if the test fails before they end.
            cluster.track_group(child.id() as i32);
            Client {
                name,
                child,
                out,
                err,
            }
        })
        .collect();
    let ready = wait_until(Duration::from_secs(30), || {
        clients.iter().all(|c| c.stdout().starts_with("READY"))
    });
    assert!(
        ready,
        "clients not ready:\n{}",
        clients
            .iter()
            .map(|c| format!("{}: {}{}", c.name, c.stdout(), c.stderr()))
            .collect::<String>()
    );
    let pids: Vec<u32> = clients.iter().map(Client::pid).collect();

    // Warm-up under load, then the baseline of every client's threads and fds.
    thread::sleep(Duration::from_millis(1500));
    let before: Vec<(usize, usize)> = pids
        .iter()
        .map(|&p| resources(p).expect("client alive"))
        .collect();
    let mut peak = before.clone();

    let t0 = mono();
    let mut watch = Watch::new(cluster.ha_log_path(), serials.clone(), pids.clone(), t0);
    let mut report = Report {
        seed,
        t0,
        clients: clients
            .iter()
            .map(|c| format!("{} pid {}", c.name, c.pid()))
            .collect::<Vec<_>>()
            .join(", "),
        ran: Vec::new(),
    };
    // Waits `d` while following the log and sampling the clients' resources.
    let mut idle = |watch: &mut Watch, d: Duration| {
        let end = mono() + d.as_secs_f64();
        loop {
            watch.poll(mono());
            for (k, &p) in pids.iter().enumerate() {
                if let Some((t, f)) = resources(p) {
                    peak[k] = (peak[k].0.max(t), peak[k].1.max(f));
                }
            }
            if mono() >= end {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    // Waits until `cond` holds of the watch, at most LIVE_TIMEOUT.
    let wait_for = |watch: &mut Watch, cond: &dyn Fn(&Watch) -> bool| -> bool {
        let end = mono() + LIVE_TIMEOUT.as_secs_f64();
        loop {
            watch.poll(mono());
            if cond(watch) {
                return true;
            }
            if mono() >= end {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    let fail = |report: &Report, watch: &Watch, what: String| -> ! {
        let tail = watch.lines.len().saturating_sub(40);
        panic!(
            "{what}\n{}members (times in s from the first fault):\n{}HA log (last 40 lines):\n{}",
            report.schedule(),
            watch.describe(report.t0),
            watch.lines[tail..].join("\n")
        );
    };

    // The random phase.
    let mut state = vec![State::Up; n];
    for (pause, action) in schedule(seed, n, seconds) {
        if mono() - t0 >= seconds {
            break;
        }
        idle(&mut watch, pause);
        if let Action::Kill(i) | Action::Stop(i) = action {
            if state[i] == State::Up
                && !wait_for(&mut watch, &|w| (0..n).any(|j| j != i && w.lives(j)))
            {
                fail(
                    &report,
                    &watch,
                    format!(
                        "before {action:?}: no other member lived again within {LIVE_TIMEOUT:?}"
                    ),
                );
            }
        }
        let now = mono();
        match action {
            Action::Kill(i) => {
                watch.going_down(i, now);
                cluster.kill(i);
                state[i] = State::Killed;
            }
            Action::Stop(i) => {
                watch.going_down(i, now);
                cluster.stop(i);
                state[i] = State::Stopped;
            }
            Action::Restart(i) => {
                cluster.start_server(i);
                watch.came_up(i, mono());
                state[i] = State::Up;
            }
            Action::Cont(i) => {
                cluster.cont(i);
                watch.came_up(i, mono());
                state[i] = State::Up;
            }
        }
        report.ran.push((now, format!("{action:?}")));
    }

    // Every member back, and living, before all go down together.
    for (i, s) in state.iter_mut().enumerate() {
        match *s {
            State::Up => continue,
            State::Stopped => cluster.cont(i),
            State::Killed => {
                cluster.start_server(i);
            }
        }
        watch.came_up(i, mono());
        report.ran.push((mono(), format!("back: m{i}")));
        *s = State::Up;
    }
    if !wait_for(&mut watch, &|w| (0..n).all(|i| w.lives(i))) {
        fail(
            &report,
            &watch,
            format!("not every member lived again within {LIVE_TIMEOUT:?} after the random phase"),
        );
    }

    // All down, then all back.
    report.ran.push((mono(), "all down".into()));
    for i in 0..n {
        watch.going_down(i, mono());
        cluster.kill(i);
    }
    idle(&mut watch, ALL_DOWN);
    for i in 0..n {
        cluster.start_server(i);
        watch.came_up(i, mono());
    }
    let back_at = mono();
    report.ran.push((back_at, "all back".into()));
    if !wait_for(&mut watch, &|w| (0..n).all(|i| w.lives(i))) {
        fail(
            &report,
            &watch,
            format!(
                "not every member lived again within {LIVE_TIMEOUT:?} after the all-down phase"
            ),
        );
    }
    // The faults are over: the clients' resources come back to what they were. Workers that
    // hung while a member was stopped exit once idle for IDLE_EXIT; a thread or descriptor
    // still there after that is a leak.
    idle(&mut watch, Duration::from_secs(INTERVAL));
    let mut after: Vec<Option<(usize, usize)>> = Vec::new();
    let settle = IDLE_EXIT + Duration::from_secs(5);
    wait_until(settle, || {
        after = pids.iter().map(|&p| resources(p)).collect();
        after.iter().zip(&before).all(|(a, (th0, fd0))| {
            a.is_some_and(|(th, fd)| th.abs_diff(*th0) <= 2 && fd.abs_diff(*fd0) <= 2)
        })
    });
    let end = mono();
    // Where the extra threads are, while they are still there: the failure names them.
    let stacks: Vec<Option<String>> = pids
        .iter()
        .zip(&after)
        .zip(&before)
        .map(|((&p, a), (th0, fd0))| match a {
            Some((th, fd)) if th.abs_diff(*th0) > 2 || fd.abs_diff(*fd0) > 2 => Some(stacks(p)),
            _ => None,
        })
        .collect();

    fs::write(&stop_file, "").unwrap();
    let exited = wait_until(Duration::from_secs(30), || {
        clients
            .iter_mut()
            .all(|c| c.child.try_wait().ok().flatten().is_some())
    });
    watch.poll(mono());
    let coverage = watch.coverage(end);

    // Judge.
    let mut problems = Vec::new();
    let mut summary = String::new();
    let bound = (INTERVAL + 1) as f64;
    for (k, c) in clients.iter_mut().enumerate() {
        let (out, err) = (c.stdout(), c.stderr());
        let status = c.child.try_wait().ok().flatten();
        let t = timeline(&out);
        let counted: Vec<_> = t
            .failed
            .iter()
            .filter(|(_, a, b, _)| coverage.iter().any(|&(x, y)| x <= *a && *b <= y))
            .collect();
        let late: Vec<_> = t
            .failed
            .iter()
            .filter(|(_, a, _, _)| *a > back_at + bound)
            .collect();
        let back = t
            .back
            .iter()
            .filter(|(_, _, b)| *b >= back_at)
            .map(|(_, _, b)| b - back_at)
            .fold(f64::INFINITY, f64::min);
        let summary_line = out
            .lines()
            .find(|l| l.starts_with("ok="))
            .unwrap_or("(none)");
        let _ = writeln!(
            summary,
            "{} (pid {}): {summary_line}; exit {status:?}; {} failed operations, {} while a \
             member lived; service back {back:.3} s after the all-down phase; threads/fds before \
             {:?}, peak {:?}, after {:?}",
            c.name,
            c.pid(),
            t.failed.len(),
            counted.len(),
            before[k],
            peak[k],
            after[k]
        );
        if !counted.is_empty() {
            problems.push(format!(
                "{}: {} operations failed while a member lived, first: {:?}",
                c.name,
                counted.len(),
                &counted[..counted.len().min(5)]
                    .iter()
                    .map(|(th, a, b, rv)| format!(
                        "thread {th} {:.3}..{:.3} s {rv}",
                        a - t0,
                        b - t0
                    ))
                    .collect::<Vec<_>>()
            ));
        }
        if !late.is_empty() {
            problems.push(format!(
                "{}: {} operations started more than {bound} s after the all-down phase failed",
                c.name,
                late.len()
            ));
        }
        if back > bound {
            problems.push(format!(
                "{}: service back only {back:.3} s after the members returned (bound {bound} s)",
                c.name
            ));
        }
        let died = match status {
            Some(st) => st
                .signal()
                .map(|s| format!("killed by signal {s}"))
                .or_else(|| {
                    (!matches!(st.code(), Some(0 | 1)))
                        .then(|| format!("exit code {:?}", st.code()))
                }),
            None => Some("still running after the stop file".into()),
        };
        if let Some(d) = died {
            problems.push(format!("{}: {d}\nstderr:\n{err}", c.name));
        } else if !summary_line.contains("finalize=0x0") {
            problems.push(format!("{}: no clean C_Finalize: {summary_line}", c.name));
        }
        if err.contains("panicked at") || err.contains("internal error") {
            problems.push(format!("{}: a panic on stderr:\n{err}", c.name));
        }
        match after[k] {
            Some((th, fd)) => {
                let (th0, fd0) = before[k];
                if th.abs_diff(th0) > 2 || fd.abs_diff(fd0) > 2 {
                    problems.push(format!(
                        "{}: threads/fds {th0}/{fd0} before the faults, {th}/{fd} {settle:?} after \
                         them (bound ±2)",
                        c.name
                    ));
                    if let Some(st) = &stacks[k] {
                        problems.push(format!("{}: its threads then:\n{st}", c.name));
                    }
                }
            }
            None => problems.push(format!("{}: gone before the faults were over", c.name)),
        }
    }
    if !exited {
        problems.push("a client did not end within 30 s of the stop file".into());
    }
    // The group serial is p11ha's default (none is configured): the first record's, and then
    // every record's.
    let group = watch
        .lines
        .iter()
        .find_map(|l| l.split_once("HA group: ")?.1.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let torn_lines: Vec<String> = watch
        .lines
        .iter()
        .filter_map(|l| torn(l, &group, &serials, &pids).map(|why| format!("{why}: {l:?}")))
        .collect();
    if !torn_lines.is_empty() {
        problems.push(format!(
            "{} HA log lines not whole, first: {:#?}",
            torn_lines.len(),
            &torn_lines[..torn_lines.len().min(5)]
        ));
    }
    eprintln!(
        "chaos: seed {seed}, {} actions, {} HA log lines\n{summary}",
        report.ran.len(),
        watch.lines.len()
    );
    if !problems.is_empty() {
        fail(
            &report,
            &watch,
            format!("{}\n{summary}", problems.join("\n")),
        );
    }
}
