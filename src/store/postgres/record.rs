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

/// Records what arrives on `jobs` until every sender is gone.
pub async fn run(pool: Pool, owner: Uuid, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        // Outcomes decided at the same moment (a burst of answers) arrive together.
        tokio::task::yield_now().await;
        let mut size = first.outcome.len();
        let mut batch = vec![first];
        while size < MAX_DELIVERIES {
            let Ok(job) = jobs.try_recv() else { break };
            size += job.outcome.len();
            batch.push(job);
        }
        record(&pool, owner, batch).await;
    }
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
    let client = pool
        .get()
        .await
        .map_err(|e| RecordError::Failed(pg_error(e)))?;
    sql::record_many(&client, owner, outcomes).await
}
