//! Audit rows and idempotency records, written inside the calling use case's transaction.

use uuid::Uuid;

use super::{Error, Idempotency, Principal, Result, reason};
use crate::storage::{self, Connection};

/// Appends the audit row of a mutating call. `who` is None for the CLI and background tasks.
pub async fn record(
    conn: &mut Connection,
    who: Option<&Principal>,
    rpc: &str,
    entity_type: &str,
    entity_id: impl ToString,
    detail: serde_json::Value,
) -> Result<()> {
    let entity_id = entity_id.to_string();
    storage::audit::insert(
        conn,
        &storage::audit::NewAuditEntry {
            entity_id: &entity_id,
            ..entry(who, rpc, entity_type, detail)
        },
    )
    .await?;
    Ok(())
}

/// The audit row of a call whose statement names the entity itself (see
/// `storage::needs::insert_routed`).
pub fn entry<'a>(
    who: Option<&'a Principal>,
    rpc: &'a str,
    entity_type: &'a str,
    detail: serde_json::Value,
) -> storage::audit::NewAuditEntry<'a> {
    storage::audit::NewAuditEntry {
        principal_id: who.map(|p| p.credential_id),
        principal_role: who.map_or("SYSTEM", |p| p.role.as_str()),
        lender_id: who.and_then(|p| p.lender_id),
        rpc,
        entity_type,
        entity_id: "",
        detail,
    }
}

/// Keys are scoped to the caller: a lender's keys survive the rotation of its credentials.
fn scope(who: &Principal) -> Uuid {
    who.lender_id.unwrap_or(who.credential_id)
}

/// The response saved by an earlier call with the same key, if there was one.
/// FAILED_PRECONDITION `IDEMPOTENCY_KEY_REUSED` when that call had a different request.
///
/// Replay records hold the use case's own outcome as JSON ([`response_body`]), whatever the
/// transport. A record this build cannot read (the protobuf bytes finmatch wrote for SubmitNeed
/// and DecideReferral before 2026-12) reads as purged: its first response is gone, as it is
/// for any key past the retention window, and the caller is told so as the contract says.
pub async fn replayed<T: serde::de::DeserializeOwned>(
    conn: &mut Connection,
    who: &Principal,
    rpc: &str,
    idempotency: &Idempotency,
) -> Result<Option<T>> {
    let Some(row) = storage::idempotency::find(conn, scope(who), rpc, &idempotency.key).await?
    else {
        return Ok(None);
    };
    if row.request_hash != idempotency.fingerprint {
        return Err(Error::precondition(
            reason::IDEMPOTENCY_KEY_REUSED,
            format!(
                "idempotency_key {:?} was already used for a different {rpc} request; \
                 use a new key for a new request",
                idempotency.key
            ),
        )
        .with_metadata("idempotency_key", &idempotency.key));
    }
    match serde_json::from_slice(row.response.as_deref().unwrap_or_default()) {
        Ok(response) => Ok(Some(response)),
        Err(error) => {
            tracing::warn!(
                rpc,
                %error,
                "a replay record in a format this build does not read; its response counts as gone"
            );
            Ok(None)
        }
    }
}

/// Saves the response of a call made with a key. A concurrent call with the same key fails here
/// with a conflict and is retried, finding this record.
pub async fn remember(
    conn: &mut Connection,
    who: &Principal,
    rpc: &str,
    idempotency: &Idempotency,
    response: &impl serde::Serialize,
) -> Result<()> {
    let body = response_body(response)?;
    storage::idempotency::insert(conn, &replay_record(who, rpc, idempotency, &body)).await?;
    Ok(())
}

/// The body of a replay record: the use case's outcome as JSON, which [`replayed`] reads back.
pub fn response_body(response: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(response).map_err(|e| Error::Internal(e.into()))
}

/// The replay record of a call made with a key, its body made by [`response_body`], as
/// [`remember`] writes it.
pub fn replay_record<'a>(
    who: &Principal,
    rpc: &'a str,
    idempotency: &'a Idempotency,
    body: &'a [u8],
) -> storage::idempotency::NewIdempotencyKey<'a> {
    storage::idempotency::NewIdempotencyKey {
        principal_id: scope(who),
        rpc,
        key: &idempotency.key,
        request_hash: &idempotency.fingerprint,
        response: Some(body),
    }
}

/// How long after its transaction began an audit row is sealed: by then every transaction that
/// took a lower id has committed or rolled back (statements are bounded well below this), so
/// the chain never passes a row that is still to appear.
pub const SEAL_SETTLE: chrono::TimeDelta = chrono::TimeDelta::seconds(120);
/// Rows sealed in one transaction.
const SEAL_BATCH: i64 = 1_000;
/// The chain's starting point.
const GENESIS: [u8; 32] = [0; 32];

/// Seal n: SHA-256 of seal n-1 and row n as PostgreSQL renders it.
fn chain(previous: &[u8], canonical: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical.as_bytes());
    hasher.finalize().to_vec()
}

/// What `finmatch audit verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditVerdict {
    /// Rows the chain covers.
    pub sealed: u64,
    /// The chain's last hash (hex) and the row it seals, if any row is sealed.
    pub head: Option<(i64, String)>,
    /// Every row found changed, removed or inserted below the chain, in id order (the first
    /// few of each kind).
    pub problems: Vec<String>,
}

impl super::App {
    /// Seals the audit rows that settled by `now` onto the chain; returns how many. One replica
    /// seals at a time (a transaction-level advisory lock; the others skip the round), and
    /// writers never wait for it. The head is logged and its row id exported as a metric, so a
    /// copy of it outside the database can show a chain rewritten from the start.
    pub async fn seal_audit(&self, now: chrono::DateTime<chrono::Utc>) -> Result<usize> {
        use scoped_futures::ScopedFutureExt as _;
        let mut sealed = 0;
        loop {
            let round = self
                .write(|conn| {
                    async move {
                        if !storage::audit::try_lock_sealer(conn).await? {
                            return Ok::<_, Error>(None);
                        }
                        let (mut last, mut head) = storage::audit::last_seal(conn)
                            .await?
                            .unwrap_or((0, GENESIS.to_vec()));
                        let rows =
                            storage::audit::unsealed(conn, last, now - SEAL_SETTLE, SEAL_BATCH)
                                .await?;
                        let mut ids = Vec::with_capacity(rows.len());
                        let mut hashes = Vec::with_capacity(rows.len());
                        for row in &rows {
                            head = chain(&head, &row.canonical);
                            last = row.id;
                            ids.push(row.id);
                            hashes.push(head.clone());
                        }
                        if !ids.is_empty() {
                            storage::audit::insert_seals(conn, &ids, &hashes).await?;
                        }
                        Ok(Some((ids.len(), last, head)))
                    }
                    .scope_boxed()
                })
                .await?;
            let Some((count, last, head)) = round else {
                break;
            };
            sealed += count;
            if count > 0 {
                metrics::gauge!("finmatch_audit_sealed_through_id").set(last as f64);
                tracing::info!(sealed_through = last, head = %hex::encode(&head), "audit chain sealed");
            }
            if count < SEAL_BATCH as usize {
                break;
            }
        }
        Ok(sealed)
    }

    /// The chain's hash (hex) through row `audit_id`, if that row is sealed: to compare with a
    /// head logged earlier and kept outside the database.
    pub async fn audit_seal(&self, audit_id: i64) -> Result<Option<String>> {
        let mut conn = self.conn().await?;
        Ok(storage::audit::seal_of(&mut conn, audit_id)
            .await?
            .map(hex::encode))
    }

    /// Recomputes the chain from the rows as they read now: a row whose content changed, a
    /// sealed row that is gone, and a row the chain passed without sealing (inserted with an
    /// old id) are each reported.
    pub async fn verify_audit(&self) -> Result<AuditVerdict> {
        let mut conn = self.conn().await?;
        let mut verdict = AuditVerdict::default();
        let (mut previous, mut after) = (GENESIS.to_vec(), 0);
        loop {
            let page = storage::audit::seals_with_rows(&mut conn, after, SEAL_BATCH).await?;
            for seal in &page {
                match &seal.canonical {
                    None => verdict
                        .problems
                        .push(format!("audit row {} was removed", seal.audit_id)),
                    Some(row) if chain(&previous, row) != seal.hash => verdict
                        .problems
                        .push(format!("audit row {} was changed", seal.audit_id)),
                    Some(_) => {}
                }
                // Each seal is checked against its predecessor as stored, so one change is
                // reported once, not at every later row.
                previous.clone_from(&seal.hash);
                after = seal.audit_id;
                verdict.sealed += 1;
            }
            if page.len() < SEAL_BATCH as usize {
                break;
            }
        }
        if verdict.sealed > 0 {
            verdict.head = Some((after, hex::encode(&previous)));
            for id in storage::audit::unsealed_below(&mut conn, after).await? {
                verdict.problems.push(format!(
                    "audit row {id} was inserted out of order, below the sealed row {after}"
                ));
            }
        }
        Ok(verdict)
    }
}
