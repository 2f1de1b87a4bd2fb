//! Recording outcomes in batches. Every request's outcome goes to one task on the store's
//! runtime, which records whatever has gathered in one statement ([`sql::record_many`]): the
//! outcomes that come in while a statement runs go together in the next, so a busy instance
//! writes many outcomes per round trip and an idle one waits for nobody.
//!
//! Each caller waits for its own outcome to be written, as with one statement per request:
//! nothing is acknowledged before it is committed, and a crash before that leaves the
//! deliveries leased, to be sent again when the lease runs out (at least once). A batch that
//! PostgreSQL rejects was rolled back whole; its outcomes are then recorded one by one, so
//! that one that cannot be written does not hold up the others. A batch whose fate is
//! unknown (the connection broke) is not written again, since it may have been committed:
//! each caller gets the error and its deliveries are sent again once their leases run out.
//!
//! Giving this instance's leases up when it stops ([`Message::Release`]) goes through the same
//! queue: the outcomes queued before it are written first, so that no other instance can claim
//! (and send again) a delivery whose outcome was only waiting to be written.

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::pg_error;
use super::sql::{self, Outcome, RecordError};
use crate::store::{Recording, StoreError};

/// Deliveries recorded per statement at most (each is a few KB of parameters).
const MAX_DELIVERIES: usize = 256;

/// One request's outcome and where its caller waits for it.
pub struct Job {
    pub outcome: Outcome,
    pub reply: oneshot::Sender<Result<Recording, StoreError>>,
}

/// What the recorder is asked, in order.
// Nearly every message is a `Record`, so the small `Release` wastes nothing worth a box per
// outcome.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    Record(Job),
    /// Give up this instance's leases (it stops) once everything queued before is written;
    /// answered with how many were given up.
    Release(oneshot::Sender<Result<u64, StoreError>>),
}

/// Records what arrives on `messages` until every sender is gone.
pub async fn run(pool: Pool, owner: Uuid, mut messages: mpsc::UnboundedReceiver<Message>) {
    // A release found while gathering a batch: handled right after that batch.
    let mut next = None;
    loop {
        let message = match next.take() {
            Some(m) => m,
            None => match messages.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        let first = match message {
            Message::Record(job) => job,
            Message::Release(reply) => {
                let _ = reply.send(release(&pool, owner).await);
                continue;
            }
        };
        // Outcomes decided at the same moment (a burst of answers) arrive together.
        tokio::task::yield_now().await;
        let mut size = first.outcome.len();
        let mut batch = vec![first];
        while size < MAX_DELIVERIES {
            match messages.try_recv() {
                Ok(Message::Record(job)) => {
                    size += job.outcome.len();
                    batch.push(job);
                }
                Ok(release) => {
                    next = Some(release);
                    break;
                }
                Err(_) => break,
            }
        }
        record(&pool, owner, batch).await;
    }
}

/// Ends this instance's leases ([`sql::release`]).
async fn release(pool: &Pool, owner: Uuid) -> Result<u64, StoreError> {
    let client = super::connection(pool).await.map_err(pg_error)?;
    sql::release(&client, owner).await
}

/// Records `batch` and answers each job.
pub(super) async fn record(pool: &Pool, owner: Uuid, batch: Vec<Job>) {
    let (outcomes, replies): (Vec<Outcome>, Vec<_>) =
        batch.into_iter().map(|j| (j.outcome, j.reply)).unzip();
    match write(pool, owner, &outcomes).await {
        Ok(recordings) => {
            for (reply, recording) in replies.into_iter().zip(recordings) {
                let _ = reply.send(Ok(recording));
            }
        }
        Err(RecordError::Rejected(e)) if outcomes.len() > 1 => {
            tracing::warn!(error = %e, outcomes = outcomes.len(),
                "a batch of delivery outcomes was rejected; recording them one by one");
            for (outcome, reply) in outcomes.iter().zip(replies) {
                let one = write(pool, owner, std::slice::from_ref(outcome))
                    .await
                    .map_err(RecordError::into_store)
                    .and_then(|mut r| {
                        r.pop().ok_or_else(|| {
                            StoreError::Postgres("a recording came back empty".to_owned())
                        })
                    });
                let _ = reply.send(one);
            }
        }
        Err(e) => {
            let e = e.into_store();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Postgres(e.to_string())));
            }
        }
    }
}

async fn write(
    pool: &Pool,
    owner: Uuid,
    outcomes: &[Outcome],
) -> Result<Vec<Recording>, RecordError> {
    let client = super::connection(pool)
        .await
        .map_err(|e| RecordError::Failed(pg_error(e)))?;
    sql::record_many(&client, owner, outcomes).await
}
