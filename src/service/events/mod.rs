//! The referral event feed behind PartnerService.WatchReferrals.
//!
//! Cost per event, not per stream. Writers append events to `referral_events`, an outbox, in the
//! transaction that changes the referral, and do nothing else. One replica at a time, the holder
//! of a lease row in `relay_leases`, is the **relay**: every [`RELAY_POLL`] it looks for
//! committed, undelivered events (an index probe of a partial index it keeps nearly empty) and, when
//! there are some, gives them their **delivery cursor**, a batch per transaction, and notifies
//! `finmatch_referral_deliveries`.
//! Every replica's feed task wakes on that, reads the new batch once (events with delivery
//! cursor above the last it read, every lender at once) and fans it out in memory to the streams
//! of each event's lender. So a committed event costs one relay write and one read per replica,
//! whatever the number of streams; a stream costs queries only when it starts or falls behind.
//!
//! Why a relay: a cursor handed out at INSERT (an identity) is not in commit order, so a reader
//! that resumed after 11 could miss a 10 that committed later. The relay sees rows only once they
//! are committed, and its batches are serialised by the lease row, which each batch locks in its
//! own transaction (a lapsed holder's late batch waits for, then fails, the lease check): the
//! cursors it assigns are final when they become visible and increase in the order assigned. A
//! reader therefore needs no horizon: whatever it sees above its cursor may be delivered at
//! once. Nothing depends on `pg_stat_activity`, advisory locks, triggers or one node's clock
//! (the lease runs on the database's `now()`), which keeps the path to a distributed PostgreSQL
//! open (DESIGN §9). The lease is a row with an expiry, renewed in every batch and every
//! [`lease`](ReferralFeed::new)/3 when idle; a replica that dies stops renewing and another takes
//! over when it expires; one that shuts down gives it up at once.
//!
//! Why writers do not NOTIFY: PostgreSQL serialises the commits of all notifying transactions
//! (a transaction that sent NOTIFY holds one database-wide lock from its pre-commit until its
//! commit record is flushed), so a NOTIFY in every SubmitNeed made every submission wait for the
//! previous one's fsync: pgbench's SubmitNeed transaction drops from about 1,250 to 680 TPS at 16
//! clients when it adds a `pg_notify` (bench/pgbench, docs/performance.md). PostgreSQL also
//! refuses PREPARE TRANSACTION after NOTIFY, so writers that never notify can still commit in two
//! phases on a distributed PostgreSQL. The relay's poll costs one index probe per
//! [`RELAY_POLL`] on one replica (undelivered events; its own feed reads new deliveries only
//! after a batch) and bounds the extra delivery delay by it; its own NOTIFY is once per batch.
//!
//! The delivery cursor is `greatest(previous + 1, insertion cursor)`: it equals the insertion
//! cursor the previous release showed for every event committed in insertion order, in
//! particular for every event committed before this release, so cursors clients stored resume
//! where they did.
//!
//! A stream first **catches up** from the table (its lender's events above its cursor, a page at
//! a time, the connection back in the pool before anything is sent) and then **rejoins** the live
//! fan-out: it subscribes before it reads, so every event the feed fans out after that arrives
//! live, and every one fanned out before was in the table when the stream read it; events it has
//! both ways are skipped by cursor. Hence no gap and no repeat, in cursor order. The feed fans out
//! only once it knows where the table stood when it started, and streams subscribe only then.
//!
//! Memory: per lender with open streams, one ring of the last [`LIVE_BUFFER`] events
//! (`tokio::sync::broadcast`), shared by its streams; a stream is at most that many events behind
//! the live feed. A stream slower than that (HTTP/2 flow control holds its sends) loses its place
//! in the ring, catches up from the table by itself, and rejoins, so a slow consumer costs its
//! own reads and never memory or other streams' delivery. A stream holds no database connection
//! while it waits.
//!
//! Revocation: a stream ends UNAUTHENTICATED once its credential is revoked or expires, and is
//! sent nothing committed after that. Every read of events (the feed's fan-out of a batch, a
//! stream's catch-up page) is followed, before anything read is sent, by a check in PostgreSQL of
//! the credentials it would go to; an event committed after a revocation can only be read after
//! it, so that check sees the revocation. Quiet streams end when this replica's credential
//! listener hears of the revocation, or at the next [`REVOCATION_POLL`], and at their expiry.
//! Streams are counted per credential and hold one of the server's call permits
//! ([`StreamLimits`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use uuid::Uuid;

use super::financing::{Referral, to_referral};
use super::{App, Error, Result};
use crate::domain::ReferralEventKind;
use crate::storage::partner::EventRow;
use crate::storage::referrals::ReferralRow;
use crate::storage::{self, Connection};

mod relay;
mod stream;

/// Events a stream reads per query while it catches up.
const PAGE: i64 = 100;
/// Events the feed reads per query of a new batch (every lender's).
const FANOUT_PAGE: i64 = 500;
/// Events the relay delivers per transaction.
const RELAY_BATCH: i64 = 1000;
/// Live events kept per lender for its streams: how far a stream may fall behind before it
/// catches up from the table instead.
pub const LIVE_BUFFER: usize = 256;
/// A heartbeat after this long without an event.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The relay looks for committed, undelivered events this often: the longest an event waits for
/// its delivery cursor (plus the batch's own time), whichever replica wrote it.
const RELAY_POLL: Duration = Duration::from_millis(20);
/// Every feed reads new deliveries this often without a notification (a safety net).
const IDLE_PROBE: Duration = Duration::from_secs(5);
/// Longest wait before reconnecting a broken listener.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest one database step of the feed may take: a connection that stops answering
/// without closing ends the feed's round, and the feed reconnects.
const FEED_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` of the connection the feed listens for deliveries on.
pub const FEED_LISTENER_NAME: &str = "finmatch referral feed listener";

/// How often the credentials of this server's open streams are checked in PostgreSQL, besides
/// the checks a revocation's notification and every fanned-out batch trigger: the bound on how
/// long a revocation this server did not hear of can leave a quiet stream open.
const REVOCATION_POLL: Duration = Duration::from_millis(500);

/// One message of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Event(Arc<ReferralEvent>),
    /// Nothing happened for a while; `cursor` is the position of the stream.
    Heartbeat {
        time: DateTime<Utc>,
        cursor: i64,
    },
}

/// One change of a referral.
#[derive(Debug, Clone)]
pub struct ReferralEvent {
    /// The delivery cursor.
    pub cursor: i64,
    pub lender_id: Uuid,
    pub kind: ReferralEventKind,
    /// The referral with the status the event gave it (other fields as they are now).
    pub referral: Referral,
    pub time: DateTime<Utc>,
}

/// What a feed has done since it started, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Queries the feed ran to read new batches (one per batch page, whatever the streams).
    pub fanout_reads: u64,
    /// Queries streams ran to catch up from the table (at start, and after falling behind).
    pub catch_up_reads: u64,
    /// Times a stream fell more than [`LIVE_BUFFER`] events behind and caught up by itself.
    pub lagged: u64,
    /// Relay transactions that delivered at least one event.
    pub relay_batches: u64,
    /// Whether this server holds the relay lease now.
    pub relay: bool,
}

#[derive(Default)]
struct Counters {
    fanout_reads: AtomicU64,
    catch_up_reads: AtomicU64,
    lagged: AtomicU64,
    relay_batches: AtomicU64,
    relay: AtomicBool,
}

/// Whether streams may subscribe yet, and whether the feed still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FeedState {
    /// The feed knows where the table stood when it started: it fans out everything after.
    ready: bool,
    /// False once the server shuts down: streams end with UNAVAILABLE.
    open: bool,
    /// The feed is following the log now. While it is not (its connection broke or stopped
    /// answering), streams send no heartbeat: one due then ends the stream with UNAVAILABLE,
    /// so a bank never takes a silent feed for a quiet one.
    live: bool,
}

struct Shared {
    /// The live ring of each lender that has streams on this server.
    lenders: Mutex<HashMap<Uuid, broadcast::Sender<Arc<ReferralEvent>>>>,
    state: watch::Sender<FeedState>,
    counters: Counters,
    /// This server's id as a lease holder.
    holder: Uuid,
    lease: Duration,
    limits: StreamLimits,
    /// Open watch streams by credential.
    open: Mutex<HashMap<Uuid, CredentialStreams>>,
}

/// The open watch streams of one credential.
struct CredentialStreams {
    lender_id: Uuid,
    count: usize,
    /// Set once the credential is found revoked or expired: its streams end UNAUTHENTICATED.
    ended: watch::Sender<bool>,
}

/// How many watch streams may be open at once.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Per credential (`--max-watch-streams-per-credential`).
    pub per_credential: usize,
    /// The server's call permits (`--max-concurrent-calls`), shared with its unary calls' limit:
    /// an open stream holds one for as long as it is open.
    pub calls: Arc<Semaphore>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_credential: 4,
            calls: Arc::new(Semaphore::new(512)),
        }
    }
}

/// One open watch stream's place in the counts; given back when the stream ends.
struct StreamSlot {
    shared: Arc<Shared>,
    credential_id: Uuid,
    /// Becomes true when the credential is found revoked or expired.
    ended: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(streams) = open.get_mut(&self.credential_id) {
            streams.count -= 1;
            if streams.count == 0 {
                open.remove(&self.credential_id);
            }
        }
    }
}

/// The referral event feed of one server; cheap to clone.
#[derive(Clone)]
pub struct ReferralFeed {
    shared: Arc<Shared>,
}

impl ReferralFeed {
    /// A feed whose relay lease, when this server holds it, lasts `lease` unless renewed; it does
    /// nothing until [`run`](Self::run) is polled.
    pub fn new(lease: Duration) -> Self {
        Self::with_limits(lease, StreamLimits::default())
    }

    /// [`ReferralFeed::new`], with these stream limits.
    pub fn with_limits(lease: Duration, limits: StreamLimits) -> Self {
        let (state, _) = watch::channel(FeedState {
            ready: false,
            open: true,
            live: false,
        });
        Self {
            shared: Arc::new(Shared {
                lenders: Mutex::new(HashMap::new()),
                state,
                counters: Counters::default(),
                holder: Uuid::new_v4(),
                lease: lease.max(Duration::from_secs(1)),
                limits,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The server's call permits, for the unary calls' concurrency limit.
    pub fn call_permits(&self) -> Arc<Semaphore> {
        self.shared.limits.calls.clone()
    }

    fn open_credentials(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, CredentialStreams>> {
        self.shared
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for one more stream of `credential_id` (acting for `lender_id`), or
    /// RESOURCE_EXHAUSTED naming the limit.
    fn open_stream(&self, credential_id: Uuid, lender_id: Uuid) -> Result<StreamSlot> {
        let limits = &self.shared.limits;
        let mut open = self.open_credentials();
        let streams = open
            .entry(credential_id)
            .or_insert_with(|| CredentialStreams {
                lender_id,
                count: 0,
                ended: watch::channel(false).0,
            });
        let count = streams.count;
        if count >= limits.per_credential {
            return Err(Error::ResourceExhausted(format!(
                "this credential has {count} WatchReferrals streams open on this server, the most \
                 allowed (FINMATCH_MAX_WATCH_STREAMS_PER_CREDENTIAL); close one, or resume on it \
                 with its last cursor"
            )));
        }
        let permit = limits.calls.clone().try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(
                "the server is at its limit of concurrent calls and streams \
                 (FINMATCH_MAX_CONCURRENT_CALLS); retry with backoff"
                    .into(),
            )
        })?;
        streams.count += 1;
        Ok(StreamSlot {
            shared: self.shared.clone(),
            credential_id,
            ended: streams.ended.subscribe(),
            _permit: permit,
        })
    }

    /// Watch streams open on this server, over all credentials.
    pub fn open_streams(&self) -> usize {
        self.open_credentials().values().map(|s| s.count).sum()
    }

    /// Ends, with UNAUTHENTICATED, the streams of those of `candidates` that PostgreSQL no longer
    /// holds active (revoked, expired); returns how many credentials it ended.
    async fn end_inactive(&self, conn: &mut Connection, candidates: &[Uuid]) -> Result<usize> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let inactive = storage::credentials::inactive_among(conn, candidates).await?;
        let open = self.open_credentials();
        for id in &inactive {
            if let Some(streams) = open.get(id) {
                streams.ended.send_replace(true);
                tracing::info!(credential_id = %id, streams = streams.count,
                    "credential revoked or expired: its watch streams end");
            }
        }
        Ok(inactive.len())
    }

    /// The credentials with streams open here, those acting for `lenders` only when given.
    fn credentials_watching(&self, lenders: Option<&[Uuid]>) -> Vec<Uuid> {
        self.open_credentials()
            .iter()
            .filter(|(_, s)| !*s.ended.borrow())
            .filter(|(_, s)| lenders.is_none_or(|l| l.contains(&s.lender_id)))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ends the streams of credentials revoked or expired anywhere: checks a credential when
    /// this replica's listener hears it changed, and every credential with streams here every
    /// [`REVOCATION_POLL`] (which also catches expiry, and revocations while the listener is
    /// down). Runs until the feed closes.
    async fn end_revoked(&self, app: &App) {
        let mut changes = app.credential_changes();
        let mut state = self.shared.state.subscribe();
        let mut poll = tokio::time::interval(REVOCATION_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let candidates = tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(id) => vec![id],
                    Err(broadcast::error::RecvError::Lagged(_)) => self.credentials_watching(None),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = poll.tick() => self.credentials_watching(None),
                _ = state.wait_for(|s| !s.open) => return,
            };
            let candidates: Vec<Uuid> = {
                let open = self.open_credentials();
                candidates
                    .into_iter()
                    .filter(|id| open.contains_key(id))
                    .collect()
            };
            if candidates.is_empty() {
                continue;
            }
            let checked = match app.conn().await {
                Ok(mut conn) => self.end_inactive(&mut conn, &candidates).await,
                Err(error) => Err(error),
            };
            if let Err(error) = checked {
                tracing::warn!(%error, "could not check watch streams' credentials; retrying");
            }
        }
    }

    pub fn stats(&self) -> FeedStats {
        let c = &self.shared.counters;
        FeedStats {
            fanout_reads: c.fanout_reads.load(Ordering::Relaxed),
            catch_up_reads: c.catch_up_reads.load(Ordering::Relaxed),
            lagged: c.lagged.load(Ordering::Relaxed),
            relay_batches: c.relay_batches.load(Ordering::Relaxed),
            relay: c.relay.load(Ordering::Relaxed),
        }
    }

    /// Ends every watch stream of this server (with UNAVAILABLE, so clients reconnect elsewhere
    /// with their last cursor) and makes [`run`](Self::run) give up the relay lease and return;
    /// used at shutdown, which would otherwise wait for the streams forever.
    pub fn close(&self) {
        self.shared.state.send_modify(|s| s.open = false);
        self.lenders().clear();
    }

    fn is_open(&self) -> bool {
        self.shared.state.borrow().open
    }

    fn lenders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<ReferralEvent>>>> {
        self.shared
            .lenders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_relay(&self, relay: bool) {
        self.shared.counters.relay.store(relay, Ordering::Relaxed);
    }

    /// A live receiver of the lender's events, once the feed is ready; UNAVAILABLE when the
    /// feed is closed.
    async fn subscribe(&self, lender_id: Uuid) -> Result<broadcast::Receiver<Arc<ReferralEvent>>> {
        let mut state = self.shared.state.subscribe();
        let ready = state
            .wait_for(|s| s.ready || !s.open)
            .await
            .map_err(|_| Error::Unavailable)?;
        if !ready.open {
            return Err(Error::Unavailable);
        }
        drop(ready);
        let mut lenders = self.lenders();
        if !self.is_open() {
            return Err(Error::Unavailable);
        }
        // Rings of lenders whose streams have all ended go, so the map is bounded by the
        // lenders with streams here.
        lenders.retain(|_, ring| ring.receiver_count() > 0);
        Ok(lenders
            .entry(lender_id)
            .or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
            .subscribe())
    }
}

fn to_event((event, mut referral): (EventRow, ReferralRow)) -> Result<ReferralEvent> {
    // The referral as the event left it, not as it is now.
    referral.status = event.status;
    Ok(ReferralEvent {
        cursor: event.cursor,
        lender_id: event.lender_id,
        kind: event.kind,
        referral: to_referral(referral)?,
        time: event.created_at,
    })
}

impl App {}
