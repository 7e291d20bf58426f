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
pub async fn replayed(
    conn: &mut Connection,
    who: &Principal,
    rpc: &str,
    idempotency: &Idempotency,
) -> Result<Option<Vec<u8>>> {
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
    Ok(Some(row.response.unwrap_or_default()))
}

/// Saves the response of a call made with a key. A concurrent call with the same key fails here
/// with a conflict and is retried, finding this record.
pub async fn remember(
    conn: &mut Connection,
    who: &Principal,
    rpc: &str,
    idempotency: &Idempotency,
    response: &[u8],
) -> Result<()> {
    storage::idempotency::insert(conn, &replay_record(who, rpc, idempotency, response)).await?;
    Ok(())
}

/// The replay record of a call made with a key, as [`remember`] writes it.
pub fn replay_record<'a>(
    who: &Principal,
    rpc: &'a str,
    idempotency: &'a Idempotency,
    response: &'a [u8],
) -> storage::idempotency::NewIdempotencyKey<'a> {
    storage::idempotency::NewIdempotencyKey {
        principal_id: scope(who),
        rpc,
        key: &idempotency.key,
        request_hash: &idempotency.fingerprint,
        response: Some(response),
    }
}
