//! Where records go once formatted: the [`Sink`] that writes a batch to the file (and to stdout
//! and syslog when configured), the bounded queue in front of it and its background writer
//! thread, and the synchronous path for applications that forbid threads.

use super::event::Clean;
use super::syslog;
use super::writer::LogFile;
use crate::diag::diag;
use chrono::Local;
use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The line the writer adds after records were dropped: `why` is `queue full`, or why they
/// could not be written (the lock held by another process for too long, a refused file).
fn dropped_line(count: u64, why: &str) -> String {
    format!(
        "{} : [{}] HA log: {count} records dropped ({})\n",
        Local::now().format("%a %b %e %H:%M:%S %Y"),
        std::process::id(),
        Clean(why)
    )
}

pub(super) enum Msg {
    Record(String),
    Flush(Sender<()>),
}

/// Writes lines to the file (and stdout when configured); shared by the writer thread and the
/// synchronous path.
pub(super) struct Sink {
    pub(super) file: LogFile,
    pub(super) to_stdout: bool,
    /// `haLogToSyslog`: the syslog socket every line is also sent to.
    pub(super) syslog: Option<std::path::PathBuf>,
    /// A write error was reported on stderr already (report the first one only).
    pub(super) error_reported: bool,
    /// Records that could not be written since the last write that succeeded, and why: the next
    /// write that succeeds starts with one line saying so.
    pub(super) lost: u64,
    pub(super) lost_why: String,
}

impl Sink {
    pub(super) fn write(&mut self, batch: &[String]) {
        if batch.is_empty() {
            return;
        }
        let result = if self.lost > 0 {
            let mut all = Vec::with_capacity(batch.len() + 1);
            all.push(dropped_line(self.lost, &self.lost_why));
            all.extend_from_slice(batch);
            self.file.append(&all)
        } else {
            self.file.append(batch)
        };
        match result {
            Ok(()) => self.lost = 0,
            Err(e) => {
                self.lost += batch.len() as u64;
                self.lost_why = e.to_string();
                if !self.error_reported {
                    self.error_reported = true;
                    diag!(
                        Error,
                        "HA log write failed: {}: {e}; records are dropped and counted",
                        self.file.dir().display()
                    );
                }
            }
        }
        if let Some(socket) = &self.syslog {
            syslog::send(syslog::Source::HaLog, socket, batch);
        }
        if self.to_stdout {
            let mut all = String::with_capacity(batch.iter().map(String::len).sum());
            batch.iter().for_each(|l| all.push_str(l));
            let _ = std::io::stdout().lock().write_all(all.as_bytes());
        }
    }

    pub(super) fn sync(&mut self) {
        let _ = self.file.sync();
        if self.to_stdout {
            let _ = std::io::stdout().lock().flush();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The file never got the count: say it where it can still be seen.
        if self.lost > 0 {
            diag!(
                Warn,
                "HA log {}: {} records dropped ({})",
                self.file.dir().display(),
                self.lost,
                self.lost_why
            );
        }
    }
}

pub(super) struct Inner {
    pub(super) sink: Arc<Mutex<Sink>>,
    /// `None` = synchronous mode.
    pub(super) queue: Option<Queue>,
}

pub(super) struct Queue {
    pub(super) tx: Sender<Msg>,
    pub(super) rx: Receiver<Msg>,
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) started: AtomicBool,
    /// The background thread, started with the first record.
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
    /// The thread could not be started: write synchronously.
    pub(super) no_thread: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: disconnect the queue (the writer drains what is left, then its
        // `recv` fails) and wait for the writer.
        if let Some(q) = self.queue.as_mut() {
            if let Some(handle) = q.thread.lock().take() {
                q.tx = crossbeam_channel::bounded(0).0;
                let _ = handle.join();
            }
        }
    }
}

fn writer_thread(rx: Receiver<Msg>, sink: Arc<Mutex<Sink>>, dropped: Arc<AtomicU64>) {
    let mut batch: Vec<String> = Vec::new();
    let mut acks: Vec<Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Take everything queued so far (bounded, so a flood cannot starve flush waiters).
        while let Some(msg) = next {
            match msg {
                Msg::Record(line) => batch.push(line),
                Msg::Flush(ack) => acks.push(ack),
            }
            next = if batch.len() < 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(dropped_line(lost, "queue full"));
        }
        let mut sink = sink.lock();
        sink.write(&batch);
        batch.clear();
        if !acks.is_empty() {
            sink.sync();
            drop(sink);
            acks.drain(..).for_each(|ack| {
                let _ = ack.send(());
            });
        }
    }
}

/// Writes what is queued on the caller's thread (no writer thread could be started).
pub(super) fn drain_sync(q: &Queue, sink: &mut Sink) {
    let mut batch = Vec::new();
    while let Ok(msg) = q.rx.try_recv() {
        if let Msg::Record(line) = msg {
            batch.push(line);
        }
    }
    let lost = q.dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        batch.push(dropped_line(lost, "queue full"));
    }
    sink.write(&batch);
}

pub(super) fn start_writer(inner: &Inner, q: &Queue) {
    let mut thread = q.thread.lock();
    if q.started.load(Ordering::Acquire) {
        return;
    }
    let rx = q.rx.clone();
    let sink = inner.sink.clone();
    let dropped = q.dropped.clone();
    match std::thread::Builder::new()
        .name("p11ha-halog".into())
        .spawn(move || writer_thread(rx, sink, dropped))
    {
        Ok(handle) => *thread = Some(handle),
        Err(_) => q.no_thread.store(true, Ordering::Release),
    }
    q.started.store(true, Ordering::Release);
}
