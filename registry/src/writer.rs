//! The single writer of entries: it assigns sequence numbers, applies each
//! entry's transaction, flushes once per group and only then acknowledges.
//!
//! Publishers queue checked entries on a bounded channel; the writer drains
//! what is queued (up to a group size), so under load one flush covers many
//! entries (group commit) and no acknowledgement ever precedes durability.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::db::{Db, Inserted, Prepared};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The verdict on one queued entry, once durable.
pub type Verdict = Result<Inserted>;

enum Command {
    Publish { entries: Vec<Prepared>, reply: oneshot::Sender<Vec<Verdict>> },
    Stop,
}

pub struct Writer {
    tx: mpsc::Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread; `queue` bounds the messages waiting for it.
    pub fn start(db: Db, group_entries: usize, queue: usize, metrics: Arc<Metrics>) -> Result<Self> {
        let next_seq = db.next_seq()?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let state = State { db, next_seq, group_entries: group_entries.max(1), metrics };
        let thread = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || state.run(rx))
            .map_err(|e| Error::io("starting the writer thread", e))?;
        Ok(Writer { tx, thread: Mutex::new(Some(thread)) })
    }

    /// Queues entries (waiting while the queue is full); the receiver yields
    /// one verdict per entry, in order, once the stored ones are durable.
    pub async fn submit(&self, entries: Vec<Prepared>) -> Result<oneshot::Receiver<Vec<Verdict>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Publish { entries, reply }).await.map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Stops taking entries, lets the writer finish and flush what is queued,
    /// and waits for it.
    pub async fn close(&self) -> Result<()> {
        // Fails only when the writer is already gone.
        let _ = self.tx.send(Command::Stop).await;
        let thread = self.thread.lock().map_err(|_| Error::Internal("writer handle poisoned".into()))?.take();
        if let Some(thread) = thread {
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
        }
        Ok(())
    }
}

struct State {
    db: Db,
    next_seq: u64,
    group_entries: usize,
    metrics: Arc<Metrics>,
}

impl State {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::new();
            let mut queued = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Publish { entries, reply } => {
                        queued += entries.len();
                        group.push((entries, reply));
                    }
                    // Refuse new work; what is already queued still drains below.
                    Command::Stop => rx.close(),
                }
                if queued < self.group_entries {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(group);
        }
        if let Err(e) = self.db.store().flush() {
            warn!(error = %e, "final flush failed");
        }
        debug!("writer stopped");
    }

    fn commit(&mut self, group: Vec<(Vec<Prepared>, oneshot::Sender<Vec<Verdict>>)>) {
        let mut verdicts: Vec<Vec<Verdict>> = Vec::with_capacity(group.len());
        let (mut stored, mut already) = (0u64, 0u64);
        for (entries, _) in &group {
            let mut out = Vec::with_capacity(entries.len());
            for entry in entries {
                let verdict = self.db.insert_entry(self.next_seq, entry);
                match verdict {
                    Ok(Inserted::Stored) => {
                        self.next_seq += 1;
                        stored += 1;
                    }
                    Ok(Inserted::AlreadyStored) => already += 1,
                    _ => {}
                }
                out.push(verdict);
            }
            verdicts.push(out);
        }
        // ALREADY_STORED is an acknowledgement too: after a failed flush the
        // entry is applied but maybe not durable, so it is flushed as well.
        if stored + already > 0
            && let Err(e) = self.db.store().flush()
        {
            // Applied but maybe not durable: never acknowledge those as stored.
            // A retry finds them and answers ALREADY_STORED once they are.
            warn!(error = %e, "flush failed; failing the group's acknowledgements");
            let reason = e.to_string();
            for v in verdicts.iter_mut().flatten() {
                if matches!(v, Ok(Inserted::Stored | Inserted::AlreadyStored)) {
                    *v = Err(Error::Store(format!("flush: {reason}")));
                }
            }
            stored = 0;
        }
        self.metrics.entries_stored(stored);
        debug!(messages = group.len(), stored, "group committed");
        for ((_, reply), verdict) in group.into_iter().zip(verdicts) {
            // A publisher that went away still had its entries stored.
            let _ = reply.send(verdict);
        }
    }
}
