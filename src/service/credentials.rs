//! Credentials: issuing, revoking and authenticating bearer tokens.
//!
//! Authentication is on the path of every call, so each replica keeps a [`CredentialCache`]
//! (token hash → principal) and answers from it without a database round trip. It is never
//! authoritative, and a revocation still takes effect at once on every replica:
//!
//! - every transaction that changes a credential (today: revoking it) sends
//!   `NOTIFY finmatch_credentials_changed` with the credential's id, inside the transaction;
//! - the replica that revoked clears its cache itself before it answers, and waits (briefly,
//!   bounded) until its own listener has seen the notification, which PostgreSQL hands to every
//!   replica's listener at the same commit;
//! - the other replicas clear their caches when the notification arrives;
//! - while the listening connection is not known to be live (not yet connected, broken,
//!   reconnecting, or not answering its ping), the cache is bypassed: every call is looked up in
//!   the database (fail closed). When LISTEN is in effect again the cache is cleared and trusted;
//! - an entry is looked up again after [`CACHE_MAX_AGE`], which bounds how long a missed
//!   notification could matter, and the cache holds at most [`CACHE_ENTRIES`] principals.
//!
//! Unknown and revoked tokens are not cached (each such call is a database lookup), so issuing
//! a credential needs no invalidation. Tokens and their hashes are never logged.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use scoped_futures::ScopedFutureExt as _;
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
    /// When it stops being valid, as if revoked then; `None` = no expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The client certificate subject it is bound to; `None` = any connection.
    pub certificate_subject: Option<String>,
}

/// A new credential and its token, which is shown this once and never stored.
#[derive(Debug, Clone)]
pub struct IssuedCredential {
    pub credential: Credential,
    pub token: String,
}

/// What an operator asks for: a role, the lender a LENDER credential is bound to, a label, and
/// optionally when it expires.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub role: Role,
    pub lender_id: Option<Uuid>,
    pub label: String,
    /// Must be in the future; `None` = valid until revoked.
    pub expires_at: Option<DateTime<Utc>>,
    /// Binds the credential to the client certificate with this subject (RFC 4514, e.g.
    /// `CN=gateway,O=ICBC`); `None` = any connection.
    pub certificate_subject: Option<String>,
}

/// How many principals one replica keeps (about 200 bytes each).
pub const CACHE_ENTRIES: u64 = 10_000;
/// How long a cached principal is used before it is looked up in the database again.
pub const CACHE_MAX_AGE: Duration = Duration::from_secs(60);
/// The `application_name` of the connection listening for credential changes.
pub const LISTENER_NAME: &str = "finmatch credentials listener";
/// How long a revocation waits for its own notification to come back (see the module docs).
const ECHO_WAIT: Duration = Duration::from_secs(1);

/// Principals by token hash, trusted only while the listening connection is live (see the
/// module documentation).
pub(crate) struct CredentialCache {
    principals: moka::sync::Cache<Vec<u8>, Principal>,
    /// Mirrors `state.trusted` for the lock-free read on every call.
    trusted: AtomicBool,
    state: RwLock<Trust>,
    /// The credential ids of the notifications this replica's listener has delivered.
    notified: tokio::sync::broadcast::Sender<Uuid>,
}

struct Trust {
    trusted: bool,
    /// Bumped by every clearing, so a lookup that raced a clearing does not store what it read
    /// before it.
    generation: u64,
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self {
            principals: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(CACHE_MAX_AGE)
                .build(),
            trusted: AtomicBool::new(false),
            state: RwLock::new(Trust {
                trusted: false,
                generation: 0,
            }),
            notified: tokio::sync::broadcast::channel(64).0,
        }
    }
}

impl CredentialCache {
    /// The cached principal, if the cache is trusted and holds one.
    fn get(&self, hash: &[u8]) -> Option<Principal> {
        if !self.trusted.load(Ordering::Acquire) {
            return None;
        }
        self.principals.get(hash)
    }

    /// Taken before a database lookup, so that [`Self::fill`] can tell whether the cache was
    /// cleared meanwhile; `None` while the cache is not trusted.
    fn ticket(&self) -> Option<u64> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.trusted.then_some(state.generation)
    }

    /// Stores what a lookup that started at `ticket` found, unless the cache was cleared or
    /// distrusted since.
    fn fill(&self, ticket: u64, hash: Vec<u8>, principal: Principal) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if state.trusted && state.generation == ticket {
            self.principals.insert(hash, principal);
        }
    }

    /// Clears the cache and sets whether it is trusted from now on.
    fn clear(&self, trusted: Option<bool>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if trusted == Some(false) {
            self.trusted.store(false, Ordering::Release);
        }
        state.generation += 1;
        self.principals.invalidate_all();
        if let Some(trusted) = trusted {
            state.trusted = trusted;
            self.trusted.store(trusted, Ordering::Release);
        }
    }

    fn on_event(&self, event: storage::listen::ListenEvent) {
        use storage::listen::ListenEvent;
        match event {
            ListenEvent::Listening => {
                self.clear(Some(true));
                tracing::info!("credential cache trusted: listening for credential changes");
            }
            ListenEvent::Lost => {
                if self.trusted.load(Ordering::Acquire) {
                    tracing::warn!("credential cache bypassed until the listener is back");
                }
                self.clear(Some(false));
            }
            ListenEvent::Notification { payload, .. } => {
                // Changes are rare: the whole cache goes, whatever the credential.
                self.clear(None);
                match payload.parse::<Uuid>() {
                    Ok(id) => {
                        tracing::debug!(credential_id = %id, "credential changed; cache cleared");
                        let _ = self.notified.send(id);
                    }
                    Err(_) => tracing::warn!("credential change notification without an id"),
                }
            }
        }
    }
}

impl App {
    /// The principal a token stands for; UNAUTHENTICATED when it is unknown or revoked.
    /// Answered from this replica's [`CredentialCache`] when it can be trusted, else looked up;
    /// either way a revocation takes effect at once on every replica (see the module docs).
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let hash = token_hash(token);
        let cache = self.credential_cache();
        // One that expired since it was cached is refused by the database lookup below.
        if let Some(principal) = cache.get(&hash)
            && principal.expires_at.is_none_or(|at| at > Utc::now())
        {
            return Ok(principal);
        }
        let ticket = cache.ticket();
        let mut conn = self.conn().await?;
        let row = storage::credentials::find_active_by_hash(&mut conn, &hash)
            .await?
            .ok_or_else(|| {
                Error::Unauthenticated("unknown, revoked or expired credential".to_owned())
            })?;
        let principal = Principal {
            credential_id: row.id,
            role: parse_role(&row.role)?,
            lender_id: row.lender_id,
            expires_at: row.expires_at,
            certificate_subject: row.certificate_subject,
        };
        if let Some(ticket) = ticket {
            cache.fill(ticket, hash, principal.clone());
        }
        Ok(principal)
    }

    /// The ids of credentials changed (revoked), as this replica's listener hears of them.
    pub(crate) fn credential_changes(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.credential_cache().notified.subscribe()
    }

    /// Whether this replica answers authentication from its cache (its listener is live).
    pub fn credential_cache_trusted(&self) -> bool {
        self.credential_cache().trusted.load(Ordering::Acquire)
    }

    /// Keeps the credential cache honest: listens on `finmatch_credentials_changed` (reconnecting
    /// with backoff) and clears or distrusts the cache as the module documentation says. Runs
    /// until the task is dropped.
    pub async fn watch_credentials(self, database_url: String) {
        let cache = self.credential_cache();
        let channels = [storage::credentials::CHANGED_CHANNEL];
        let _ = storage::listen::listen(&database_url, LISTENER_NAME, &channels, |event| {
            cache.on_event(event)
        })
        .await;
    }

    /// Issues a credential (OPERATOR only).
    #[tracing::instrument(skip(self, who, input), fields(role = input.role.as_str()))]
    pub async fn issue_credential(
        &self,
        who: &Principal,
        input: NewCredential,
    ) -> Result<IssuedCredential> {
        who.require("IssueCredential")?;
        self.create_credential(Some(who), input).await
    }

    /// Issues a credential without a caller: the CLI bootstrap for the first operator.
    pub async fn bootstrap_credential(&self, input: NewCredential) -> Result<IssuedCredential> {
        self.create_credential(None, input).await
    }

    async fn create_credential(
        &self,
        who: Option<&Principal>,
        mut input: NewCredential,
    ) -> Result<IssuedCredential> {
        validate(&input)?;
        // Stored as finmatch renders a certificate's subject, so the two compare as strings.
        input.certificate_subject = input
            .certificate_subject
            .as_deref()
            .map(canonical_subject)
            .transpose()?;
        let token = new_token();
        let hash = &token_hash(&token);
        let input = &input;
        let credential = self
            .write(|conn| {
                async move {
                    if let Some(lender_id) = input.lender_id {
                        ensure_lender_exists(conn, lender_id).await?;
                    }
                    let row = storage::credentials::insert(
                        conn,
                        &storage::credentials::NewCredential {
                            role: input.role.as_str(),
                            lender_id: input.lender_id,
                            label: &input.label,
                            token_hash: hash,
                            expires_at: input.expires_at,
                            certificate_subject: input.certificate_subject.as_deref(),
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
                            "expires_at": input.expires_at,
                            "certificate_subject": input.certificate_subject,
                        }),
                    )
                    .await?;
                    to_credential(row)
                }
                .scope_boxed()
            })
            .await?;
        tracing::info!(credential_id = %credential.id, "credential issued");
        Ok(IssuedCredential { credential, token })
    }

    /// Revokes a credential at once (OPERATOR only). Revoking twice is harmless.
    #[tracing::instrument(skip(self, who))]
    pub async fn revoke_credential(&self, who: &Principal, id: Uuid) -> Result<Credential> {
        who.require("RevokeCredential")?;
        self.revoke(Some(who), id).await
    }

    /// Revokes a credential from the CLI.
    pub async fn revoke_credential_as_system(&self, id: Uuid) -> Result<Credential> {
        self.revoke(None, id).await
    }

    /// Revokes, from the CLI, every unrevoked credential whose label starts with `prefix` (the
    /// tokens an earlier `finmatch dev` start printed); returns how many.
    pub async fn revoke_labelled_as_system(&self, prefix: &str) -> Result<usize> {
        let ids = storage::credentials::active_labelled(&mut *self.conn().await?, prefix).await?;
        for &id in &ids {
            self.revoke(None, id).await?;
        }
        Ok(ids.len())
    }

    async fn revoke(&self, who: Option<&Principal>, id: Uuid) -> Result<Credential> {
        let cache = self.credential_cache();
        let mut echo = cache.notified.subscribe();
        let listening = cache.ticket().is_some();
        let revoked = self
            .write(|conn| {
                async move {
                    let row = storage::credentials::revoke(conn, id)
                        .await?
                        .ok_or_else(|| Error::not_found("credential", id))?;
                    storage::credentials::notify_changed(conn, id).await?;
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
                }
                .scope_boxed()
            })
            .await?;
        // This replica drops the credential itself, whatever its listener does.
        cache.clear(None);
        // The notification reaches every replica's listener at the same commit; once this
        // replica's has delivered it, the others have had the same time to clear theirs.
        if listening {
            let seen = async {
                loop {
                    match echo.recv().await {
                        Ok(seen) if seen == id => break,
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
            };
            if tokio::time::timeout(ECHO_WAIT, seen).await.is_err() {
                tracing::warn!(credential_id = %id, "revocation notification not seen in time");
            }
        }
        tracing::info!(credential_id = %id, "credential revoked");
        Ok(revoked)
    }
}

fn validate(input: &NewCredential) -> Result<()> {
    let mut violations = crate::domain::Violations::default();
    match (input.role, input.lender_id) {
        (Role::Lender, None) => violations.add(
            "lender_id",
            "a ROLE_LENDER credential must name the lender it acts for",
        ),
        (Role::Operator | Role::Portal, Some(_)) => violations.add(
            "lender_id",
            "only ROLE_LENDER credentials are bound to a lender; leave lender_id empty",
        ),
        _ => {}
    }
    let label = input.label.trim();
    if label.is_empty() || label.chars().count() > 200 {
        violations.add("label", "a label of 1 to 200 characters is required");
    }
    if input.expires_at.is_some_and(|at| at <= Utc::now()) {
        violations.add(
            "expire_time",
            "must be in the future; leave it unset for a credential valid until revoked",
        );
    }
    if let Some(subject) = &input.certificate_subject
        && let Err(why) = parse_subject(subject)
    {
        violations.add("certificate_subject", why);
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// A certificate subject as finmatch compares it: parsed as an RFC 4514 distinguished name and
/// written back the way [`certificate_subject`] writes a certificate's.
pub fn canonical_subject(subject: &str) -> Result<String> {
    parse_subject(subject).map_err(|why| Error::invalid("certificate_subject", why))
}

/// [`canonical_subject`], or what is wrong with the subject.
fn parse_subject(subject: &str) -> std::result::Result<String, String> {
    use std::str::FromStr as _;
    let name = x509_cert::name::RdnSequence::from_str(subject.trim()).map_err(|e| {
        format!(
            "{subject:?} is not an RFC 4514 distinguished name ({e}); write it as \
             `openssl x509 -noout -subject -nameopt RFC2253` prints it, e.g. CN=gateway,O=ICBC"
        )
    })?;
    if name.0.is_empty() {
        return Err("an empty subject binds nothing; leave the field empty instead".into());
    }
    Ok(name.to_string())
}

/// The subject of a DER certificate, as [`canonical_subject`] writes it.
pub fn certificate_subject(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(cert.tbs_certificate.subject.to_string())
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
        expires_at: row.expires_at,
        certificate_subject: row.certificate_subject,
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

    fn principal() -> Principal {
        Principal {
            credential_id: Uuid::new_v4(),
            role: Role::Portal,
            lender_id: None,
            expires_at: None,
            certificate_subject: None,
        }
    }

    #[test]
    fn a_certificates_subject_reads_as_the_bound_subject_is_written() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        // In DER order (country, organisation, common name); RFC 4514 writes it reversed.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "ICBC");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ICBC Xiaogan gateway");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let written = "CN=ICBC Xiaogan gateway,O=ICBC";
        assert_eq!(certificate_subject(cert.der()).as_deref(), Some(written));
        assert_eq!(canonical_subject(written).unwrap(), written);
        assert!(canonical_subject("ICBC gateway").is_err());
        assert!(canonical_subject("").is_err());
    }

    #[test]
    fn the_cache_is_bypassed_until_listening_and_after_the_listener_is_lost() {
        use storage::listen::ListenEvent;
        let cache = CredentialCache::default();
        assert_eq!(cache.ticket(), None, "not trusted before LISTEN");
        cache.on_event(ListenEvent::Listening);
        let ticket = cache.ticket().unwrap();
        cache.fill(ticket, vec![1], principal());
        assert!(cache.get(&[1]).is_some());
        cache.on_event(ListenEvent::Lost);
        assert!(
            cache.get(&[1]).is_none(),
            "bypassed while the listener is down"
        );
        cache.on_event(ListenEvent::Listening);
        assert!(cache.get(&[1]).is_none(), "cleared on reconnect");
    }

    #[test]
    fn a_lookup_that_raced_a_clearing_is_not_stored() {
        use storage::listen::ListenEvent;
        let cache = CredentialCache::default();
        cache.on_event(ListenEvent::Listening);
        let ticket = cache.ticket().unwrap();
        cache.on_event(ListenEvent::Notification {
            channel: storage::credentials::CHANGED_CHANNEL.into(),
            payload: Uuid::new_v4().to_string(),
        });
        cache.fill(ticket, vec![2], principal());
        assert!(cache.get(&[2]).is_none());
        let ticket = cache.ticket().unwrap();
        cache.fill(ticket, vec![2], principal());
        assert!(cache.get(&[2]).is_some());
        cache.on_event(ListenEvent::Notification {
            channel: storage::credentials::CHANGED_CHANNEL.into(),
            payload: Uuid::new_v4().to_string(),
        });
        assert!(cache.get(&[2]).is_none(), "a notification clears the cache");
    }

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
