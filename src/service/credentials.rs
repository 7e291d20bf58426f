//! Credentials: issuing, revoking and authenticating bearer tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{App, Error, Principal, Result, audit};
use crate::domain::Role;
use crate::storage::{self, Connection};

/// Every token starts with this, so a leaked one is easy to recognise in logs and scanners.
const TOKEN_PREFIX: &str = "fmk_";

/// A credential as shown to an operator (never with its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: Uuid,
    pub role: Role,
    pub lender_id: Option<Uuid>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new credential and its token, which is shown this once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedCredential {
    pub credential: Credential,
    pub token: String,
}

/// What an operator asks for: a role, the lender a LENDER credential is bound to, and a label.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub role: Role,
    pub lender_id: Option<Uuid>,
    pub label: String,
}

impl App {
    /// The principal a token stands for; UNAUTHENTICATED when it is unknown or revoked.
    /// Looked up on every call, so revocation takes effect at once on every replica.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let hash = token_hash(token);
        let mut conn = self.conn().await?;
        let row = storage::credentials::find_active_by_hash(&mut conn, &hash)
            .await?
            .ok_or_else(|| Error::Unauthenticated("unknown or revoked credential".to_owned()))?;
        Ok(Principal {
            credential_id: row.id,
            role: parse_role(&row.role)?,
            lender_id: row.lender_id,
        })
    }

    /// Issues a credential (OPERATOR only).
    #[tracing::instrument(skip(self, who, input), fields(role = input.role.as_str()))]
    pub async fn issue_credential(
        &self,
        who: &Principal,
        input: NewCredential,
    ) -> Result<IssuedCredential> {
        who.require("IssueCredential", &[Role::Operator])?;
        self.create_credential(Some(who), input).await
    }

    /// Issues a credential without a caller: the CLI bootstrap for the first operator.
    pub async fn bootstrap_credential(&self, input: NewCredential) -> Result<IssuedCredential> {
        self.create_credential(None, input).await
    }

    async fn create_credential(
        &self,
        who: Option<&Principal>,
        input: NewCredential,
    ) -> Result<IssuedCredential> {
        validate(&input)?;
        let token = new_token();
        let hash = token_hash(&token);
        let credential = self
            .conn()
            .await?
            .transaction(async move |conn| {
                if let Some(lender_id) = input.lender_id {
                    ensure_lender_exists(conn, lender_id).await?;
                }
                let row = storage::credentials::insert(
                    conn,
                    &storage::credentials::NewCredential {
                        role: input.role.as_str(),
                        lender_id: input.lender_id,
                        label: &input.label,
                        token_hash: &hash,
                    },
                )
                .await?;
                audit::record(
                    conn,
                    who,
                    if who.is_some() {
                        "finmatch.v1.LenderService/IssueCredential"
                    } else {
                        "cli/credentials create"
                    },
                    "credential",
                    row.id,
                    serde_json::json!({
                        "role": input.role.as_str(),
                        "lender_id": input.lender_id,
                        "label": input.label,
                    }),
                )
                .await?;
                to_credential(row)
            })
            .await?;
        tracing::info!(credential_id = %credential.id, "credential issued");
        Ok(IssuedCredential { credential, token })
    }

    /// Revokes a credential at once (OPERATOR only). Revoking twice is harmless.
    #[tracing::instrument(skip(self, who))]
    pub async fn revoke_credential(&self, who: &Principal, id: Uuid) -> Result<Credential> {
        who.require("RevokeCredential", &[Role::Operator])?;
        self.revoke(Some(who), id).await
    }

    /// Revokes a credential from the CLI.
    pub async fn revoke_credential_as_system(&self, id: Uuid) -> Result<Credential> {
        self.revoke(None, id).await
    }

    async fn revoke(&self, who: Option<&Principal>, id: Uuid) -> Result<Credential> {
        self.conn()
            .await?
            .transaction(async move |conn| {
                let row = storage::credentials::revoke(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("credential", id))?;
                audit::record(
                    conn,
                    who,
                    if who.is_some() {
                        "finmatch.v1.LenderService/RevokeCredential"
                    } else {
                        "cli/credentials revoke"
                    },
                    "credential",
                    id,
                    serde_json::json!({}),
                )
                .await?;
                to_credential(row)
            })
            .await
    }
}

fn validate(input: &NewCredential) -> Result<()> {
    let mut violations = crate::domain::Violations::default();
    match (input.role, input.lender_id) {
        (Role::Lender, None) => violations.add(
            "lender_id",
            "a LENDER credential must name the lender it acts for",
        ),
        (Role::Operator | Role::Portal, Some(_)) => violations.add(
            "lender_id",
            "only LENDER credentials are bound to a lender; leave lender_id empty",
        ),
        _ => {}
    }
    let label = input.label.trim();
    if label.is_empty() || label.chars().count() > 200 {
        violations.add("label", "a label of 1 to 200 characters is required");
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

async fn ensure_lender_exists(conn: &mut Connection, lender_id: Uuid) -> Result<()> {
    if storage::lenders::find(conn, lender_id).await?.is_none() {
        return Err(Error::not_found("lender", lender_id));
    }
    Ok(())
}

fn to_credential(row: storage::credentials::CredentialRow) -> Result<Credential> {
    Ok(Credential {
        id: row.id,
        role: parse_role(&row.role)?,
        lender_id: row.lender_id,
        label: row.label,
        created_at: row.created_at,
        revoked_at: row.revoked_at,
    })
}

fn parse_role(raw: &str) -> Result<Role> {
    raw.parse()
        .map_err(|_| Error::Internal(anyhow::anyhow!("unknown role {raw:?} in credentials")))
}

/// 256 random bits, URL-safe, with a recognisable prefix.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed_to_32_bytes() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(token_hash(&a).len(), 32);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
