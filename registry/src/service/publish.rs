//! The publish path: messages checked at the edge (a few at a time), handed
//! to the writer in order, acknowledged in order once durable.

use std::sync::Arc;

use ambishare_db::Bytes;
use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{DisplayName, EntryId, OwnerId};
use futures::{StreamExt, stream};
use tokio::sync::oneshot;
use tonic::{Status, Streaming};
use tracing::{Instrument, Span, info};

use super::{BoxStream, PUBLISH_IN_FLIGHT, PUBLISH_PIPELINE, RegistryApi, parse};
use crate::db::{Inserted, Prepared, StoredEntry};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::writer::Verdict;

/// One publish message after its entries were checked.
pub(super) struct Checked {
    pub(super) slots: Vec<Slot>,
    pub(super) prepared: Vec<Prepared>,
}

pub(super) enum Slot {
    /// Refused at the edge; its acknowledgement is ready.
    Refused(rpb::PublishAck),
    /// Handed to the writer.
    Queued(EntryId),
}

/// One publish message waiting for the writer.
pub(super) struct Pending {
    pub(super) slots: Vec<Slot>,
    pub(super) reply: Option<oneshot::Receiver<Vec<Verdict>>>,
    pub(super) metrics: Arc<Metrics>,
}

impl Pending {
    pub(super) async fn acks(self) -> Result<Vec<rpb::PublishAck>> {
        let verdicts = match self.reply {
            Some(rx) => rx.await.map_err(|_| Error::Internal("the writer stopped without answering".into()))?,
            None => Vec::new(),
        };
        let mut verdicts = verdicts.into_iter();
        let acks = self
            .slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Refused(ack) => ack,
                Slot::Queued(id) => match verdicts.next() {
                    Some(Ok(Inserted::Stored)) => ack(&self.metrics, id.to_string(), rpb::PublishOutcome::Stored),
                    Some(Ok(Inserted::AlreadyStored)) => {
                        ack(&self.metrics, id.to_string(), rpb::PublishOutcome::AlreadyStored)
                    }
                    Some(Ok(Inserted::Refused(e)) | Err(e)) => refused(&self.metrics, id.to_string(), e),
                    None => refused(&self.metrics, id.to_string(), Error::Internal("no verdict for an entry".into())),
                },
            })
            .collect();
        Ok(acks)
    }
}

pub(super) fn ack(metrics: &Metrics, entry_id: String, outcome: rpb::PublishOutcome) -> rpb::PublishAck {
    metrics.ack(if outcome == rpb::PublishOutcome::Stored { "stored" } else { "already_stored" });
    rpb::PublishAck { entry_id, outcome: outcome as i32, code: 0, message: String::new() }
}

pub(super) fn refused(metrics: &Metrics, entry_id: String, e: Error) -> rpb::PublishAck {
    metrics.ack("rejected");
    // The same mapping (and logging) as a failed request.
    let status = Status::from(e);
    rpb::PublishAck {
        entry_id,
        outcome: rpb::PublishOutcome::Rejected as i32,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

impl RegistryApi {
    pub(super) async fn check_message(&self, message: rpb::PublishRequest) -> Result<Checked> {
        let n = message.entries.len();
        let max = self.inner.limits.max_entries_per_message;
        if n > max {
            return Err(Error::TooLarge(format!("{n} entries in one message; at most {max} are allowed")));
        }
        if n == 0 {
            return Ok(Checked { slots: Vec::new(), prepared: Vec::new() });
        }
        let lookups = self.inner.lookups(&message.entries).await?;
        self.blocking(move |inner| Ok(inner.check_entries(message.entries, &lookups))).await
    }

    pub(super) async fn submit(&self, checked: Checked) -> Result<Pending> {
        let reply =
            if checked.prepared.is_empty() { None } else { Some(self.inner.writer.submit(checked.prepared).await?) };
        Ok(Pending { slots: checked.slots, reply, metrics: self.inner.metrics.clone() })
    }

    // Imports from another registry's store (`migrate`): each record passes
    // the checks a request carrying it would.

    /// Stores an owner record after checking that its key hashes to its id
    /// and its name is valid. True when it was new here.
    pub(crate) async fn import_owner(&self, owner: &rpb::Owner) -> Result<bool> {
        let id: OwnerId = parse(&owner.owner_id)?;
        let key = PublicKey::from_bytes(&owner.public_key)?;
        if key.owner_id() != id {
            return Err(Error::BadSignature(format!("owner {id}: the public key does not hash to the owner id")));
        }
        if !owner.display_name.is_empty() {
            owner.display_name.parse::<DisplayName>()?;
        }
        let stored = self.inner.db.put_owner(&id, owner).await?;
        if stored.public_key != owner.public_key {
            return Err(Error::AlreadyExists(format!("owner id {id} is taken by another key")));
        }
        Ok(stored == *owner)
    }

    /// Checks stored entries as a publish message's, and each record against
    /// the canonical encoding those checks produce (the exact bytes are what
    /// owners signed and readers get), then hands them to the writer; their
    /// acknowledgements, in order.
    pub(crate) async fn import_entries(&self, entries: Vec<StoredEntry>) -> Result<Vec<rpb::PublishAck>> {
        let (messages, records): (Vec<pb::Entry>, Vec<Bytes>) =
            entries.into_iter().map(|s| (s.entry, s.record)).unzip();
        let checked = self.check_message(rpb::PublishRequest { entries: messages }).await?;
        // Queued slots and prepared entries are in the order of the input.
        let mut prepared = checked.prepared.into_iter();
        let mut kept = Checked { slots: Vec::with_capacity(checked.slots.len()), prepared: Vec::new() };
        for (slot, record) in checked.slots.into_iter().zip(records) {
            let Slot::Queued(id) = slot else {
                kept.slots.push(slot);
                continue;
            };
            let entry = prepared.next().ok_or_else(|| Error::Internal("a queued entry without its check".into()))?;
            if entry.encoded == record {
                kept.slots.push(Slot::Queued(id));
                kept.prepared.push(entry);
            } else {
                let e = Error::Invalid("the stored record is not its entry's canonical encoding".into());
                kept.slots.push(Slot::Refused(refused(&self.inner.metrics, id.to_string(), e)));
            }
        }
        self.submit(kept).await?.acks().await
    }

    /// The acknowledgements of a publish stream, one per entry in order; a
    /// failed stream ends with its status.
    pub(super) fn publish_acks(&self, inbound: Streaming<rpb::PublishRequest>) -> BoxStream<rpb::PublishAck> {
        let span = Span::current();
        let (check, submit) = (self.clone(), self.clone());
        // Messages are checked a few at a time, handed to the writer in
        // order, and acknowledged in order once durable; a failed stream
        // ends with its status.
        let acks = inbound
            .map(move |message| {
                let api = check.clone();
                async move {
                    let message = message
                        .inspect_err(|s| info!(code = ?s.code(), error = %s.message(), "publish stream failed"))?;
                    api.check_message(message).await.map_err(Status::from)
                }
                .instrument(span.clone())
            })
            .buffered(PUBLISH_PIPELINE)
            .then(move |checked| {
                let api = submit.clone();
                async move { api.submit(checked?).await.map_err(Status::from) }
            })
            .map(|pending| async move { pending?.acks().await.map_err(Status::from) })
            .buffered(PUBLISH_IN_FLIGHT)
            .flat_map(|acks| match acks {
                Ok(acks) => stream::iter(acks.into_iter().map(Ok)).left_stream(),
                Err(status) => stream::iter([Err(status)]).right_stream(),
            });
        Box::pin(acks)
    }
}
