//! The writer of entries: it writes each queued entry (many at once: on S3
//! every write is a round trip), flushes once per group and only then
//! acknowledges.
//!
//! Publishers queue checked entries on a bounded channel; the writer drains
//! what is queued (up to a group size), so under load one flush covers many
//! entries (group commit) and no acknowledgement ever precedes durability.
//! Nothing here is shared between replicas: each registry process has its
//! own writer, and the store's create-if-absent settles who stored an entry.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, stream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::db::{Db, Inserted, Prepared};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The verdict on one queued entry, once durable.
pub type Verdict = Result<Inserted>;

/// Entries of a group written concurrently.
const WRITES_IN_FLIGHT: usize = 32;

enum Command {
    Publish { entries: Vec<Prepared>, reply: oneshot::Sender<Vec<Verdict>> },
    Stop,
}

pub struct Writer {
    tx: mpsc::Sender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer task (on the current tokio runtime); `queue` bounds
    /// the messages waiting for it.
    pub fn start(db: Db, group_entries: usize, queue: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let state = State { db, group_entries: group_entries.max(1), metrics };
        let task = tokio::spawn(state.run(rx));
        Writer { tx, task: Mutex::new(Some(task)) }
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
        let task = self.task.lock().map_err(|_| Error::Internal("writer handle poisoned".into()))?.take();
        if let Some(task) = task {
            task.await?;
        }
        Ok(())
    }
}

struct State {
    db: Db,
    group_entries: usize,
    metrics: Arc<Metrics>,
}

type Group = Vec<(Vec<Prepared>, oneshot::Sender<Vec<Verdict>>)>;

impl State {
    async fn run(self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.recv().await {
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
            self.commit(group).await;
        }
        if let Err(e) = self.db.flush().await {
            warn!(error = %e, "final flush failed");
        }
        debug!("writer stopped");
    }

    async fn commit(&self, group: Group) {
        let db = &self.db;
        // Owned (cheap: the encoded entries are shared bytes), so the writes' futures borrow nothing of `group`.
        let entries: Vec<Prepared> = group.iter().flat_map(|(entries, _)| entries.iter().cloned()).collect();
        // An entry queued twice is written the second time only after the
        // first, so the first is the one acknowledged STORED.
        let mut seen = HashSet::new();
        let (firsts, repeats): (Vec<_>, Vec<_>) =
            entries.into_iter().enumerate().partition(|(_, entry)| seen.insert(entry.id));
        let mut all: Vec<Option<Verdict>> =
            std::iter::repeat_with(|| None).take(firsts.len() + repeats.len()).collect();
        for wave in [firsts, repeats] {
            let verdicts: Vec<(usize, Verdict)> = stream::iter(wave)
                .map(|(i, entry)| {
                    let db = db.clone();
                    async move { (i, db.insert_entry(&entry).await) }
                })
                .buffer_unordered(WRITES_IN_FLIGHT)
                .collect()
                .await;
            for (i, verdict) in verdicts {
                all[i] = Some(verdict);
            }
        }
        let mut all: Vec<Verdict> = all
            .into_iter()
            .map(|v| v.unwrap_or_else(|| Err(Error::Internal("no verdict for an entry".into()))))
            .collect();
        let mut stored = all.iter().filter(|v| matches!(v, Ok(Inserted::Stored))).count() as u64;
        let acknowledged = all.iter().filter(|v| matches!(v, Ok(Inserted::Stored | Inserted::AlreadyStored))).count();
        // ALREADY_STORED is an acknowledgement too: after a failed flush the
        // entry is written but maybe not durable, so it is flushed as well.
        if acknowledged > 0
            && let Err(e) = db.flush().await
        {
            // Written but maybe not durable: never acknowledge those as stored.
            // A retry finds them and answers ALREADY_STORED once they are.
            warn!(error = %e, "flush failed; failing the group's acknowledgements");
            for v in &mut all {
                if matches!(v, Ok(Inserted::Stored | Inserted::AlreadyStored)) {
                    *v = Err(Error::Internal(format!("flushing the group: {e}")));
                }
            }
            stored = 0;
        }
        self.metrics.entries_stored(stored);
        debug!(messages = group.len(), stored, "group committed");
        let mut verdicts = all.into_iter();
        for (entries, reply) in group {
            let mine: Vec<Verdict> = verdicts.by_ref().take(entries.len()).collect();
            // A publisher that went away still had its entries stored.
            let _ = reply.send(mine);
        }
    }
}
