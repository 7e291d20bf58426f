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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection as _;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::financing::{Referral, to_referral};
use super::{App, Error, Principal, Result};
use crate::domain::ReferralEventKind;
use crate::storage::listen::ListenEvent;
use crate::storage::partner::EventRow;
use crate::storage::referrals::ReferralRow;
use crate::storage::relay::{DELIVERIES_CHANNEL, EVENT_RELAY};
use crate::storage::{self, Connection};

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

/// What the feed's listener reported, in order, and whether it listens now.
struct Notes {
    events: tokio::sync::mpsc::UnboundedReceiver<ListenEvent>,
    listening: bool,
}

impl Notes {
    /// The next report; `None` once the listener is gone.
    async fn next(&mut self) -> Option<ListenEvent> {
        let event = self.events.recv().await;
        self.note(event)
    }

    /// The next report if one is waiting (`None` when none is, or the listener is gone).
    fn try_next(&mut self) -> Option<ListenEvent> {
        match self.events.try_recv() {
            Ok(event) => self.note(Some(event)),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.note(None),
        }
    }

    fn note(&mut self, event: Option<ListenEvent>) -> Option<ListenEvent> {
        match &event {
            Some(ListenEvent::Listening) => self.listening = true,
            Some(ListenEvent::Lost) | None => self.listening = false,
            Some(ListenEvent::Notification { .. }) => {}
        }
        event
    }
}

/// A database step of the feed, bounded by [`FEED_STEP_TIMEOUT`] (UNAVAILABLE past it).
async fn bounded<T, E: Into<Error>>(
    step: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(FEED_STEP_TIMEOUT, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Unavailable),
    }
}

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

    /// Follows the event log until [`close`](Self::close): relays while this server holds the
    /// lease, and fans every new batch out to this server's streams. It hears of new batches on
    /// `finmatch_referral_deliveries` through `storage::listen` (the one LISTEN mechanism, on a
    /// connection of its own named [`FEED_LISTENER_NAME`]) and does its reads and the relay's
    /// writes on a pooled connection; either one failing ends the round, and the feed starts
    /// again with backoff once the listener listens.
    pub async fn run(self, app: App, database_url: String) {
        let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
        let channels = [DELIVERIES_CHANNEL];
        let listener =
            storage::listen::listen(&database_url, FEED_LISTENER_NAME, &channels, |event| {
                let _ = tx.send(event);
            });
        let mut notes = Notes {
            events: notes,
            listening: false,
        };
        let follow = async {
            tokio::join!(self.follow_log(&app, &mut notes), self.end_revoked(&app));
        };
        tokio::select! {
            _ = listener => {}
            () = follow => {}
        }
    }

    /// [`run`](Self::run)'s following of the event log.
    async fn follow_log(&self, app: &App, notes: &mut Notes) {
        let app = app.clone();
        let mut last = None;
        let mut backoff = Duration::from_millis(100);
        while self.is_open() {
            // Every delivery committed from here on is notified: the round reads the table's
            // position only once the listener listens.
            let mut state = self.shared.state.subscribe();
            // A Lost reported while the last round was stuck in a step counts before this one.
            while notes.try_next().is_some() {}
            while !notes.listening {
                tokio::select! {
                    event = notes.next() => if event.is_none() { return },
                    _ = state.wait_for(|s| !s.open) => {}
                }
                if !self.is_open() {
                    break;
                }
            }
            if !self.is_open() {
                break;
            }
            match self.follow(&app, &mut last, notes).await {
                Ok(()) => break,
                Err(error) => {
                    self.set_relay(false);
                    // A feed that was following starts its pauses afresh.
                    if self.shared.state.borrow().live {
                        backoff = Duration::from_millis(100);
                    }
                    self.shared.state.send_modify(|s| s.live = false);
                    tracing::warn!(%error, "referral event feed lost its connection; reconnecting");
                    let mut state = self.shared.state.subscribe();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = state.wait_for(|s| !s.open) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        self.set_relay(false);
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

    /// One round of [`run`], while the listener listens and the pooled connection answers;
    /// `last` is the last delivery cursor fanned out, kept across rounds so nothing is skipped.
    async fn follow(&self, app: &App, last: &mut Option<i64>, notes: &mut Notes) -> Result<()> {
        // The relay's lease is renewed on this connection between waits: keep it for the round.
        let mut conn: Connection =
            diesel_async::pooled_connection::deadpool::Object::take(app.conn().await?);
        let last_read = match *last {
            Some(cursor) => cursor,
            None => {
                // Events delivered before this are in the table for any stream that subscribes
                // from now on.
                let cursor = bounded(storage::partner::last_delivery_cursor(&mut conn)).await?;
                *last = Some(cursor);
                self.shared.state.send_modify(|s| s.ready = true);
                cursor
            }
        };
        let mut round = Round {
            conn,
            last_read,
            relaying: false,
            claim_at: Instant::now(),
            relay_at: Instant::now(),
            read_due: true,
        };
        let mut state = self.shared.state.subscribe();
        loop {
            if !state.borrow_and_update().open {
                return self.end_round(&mut round).await;
            }
            self.relay_when_due(&mut round).await?;
            if round.read_due {
                round.last_read = self.fan_out(&mut round.conn, round.last_read).await?;
                *last = Some(round.last_read);
                round.read_due = false;
            }
            // Live once this round's first steps (the lease, a read) answered: a round on a
            // connection that stopped answering never counts, so its streams' heartbeats stop.
            if !self.shared.state.borrow().live {
                self.shared.state.send_modify(|s| s.live = true);
            }
            self.wait(&mut round, notes, &mut state).await?;
        }
    }

    /// Gives the lease up, when this round holds it, as the feed closes.
    async fn end_round(&self, round: &mut Round) -> Result<()> {
        if round.relaying {
            bounded(storage::relay::release_lease(
                &mut round.conn,
                EVENT_RELAY,
                self.shared.holder,
            ))
            .await?;
            self.set_relay(false);
        }
        Ok(())
    }

    /// Claims or renews the lease when its time has come, and relays when the relay's poll
    /// finds undelivered events; a poll that finds nothing writes nothing (the lease is renewed
    /// on time by the claim).
    async fn relay_when_due(&self, round: &mut Round) -> Result<()> {
        let now = Instant::now();
        let claim = now >= round.claim_at;
        let poll = round.relaying && now >= round.relay_at;
        if poll {
            round.relay_at = now + RELAY_POLL;
        }
        if !(claim || (poll && bounded(storage::relay::has_undelivered(&mut round.conn)).await?)) {
            return Ok(());
        }
        let (held, _) = self.relay(&mut round.conn).await?;
        if held != round.relaying {
            round.relaying = held;
            self.set_relay(held);
            if held {
                tracing::info!(holder = %self.shared.holder, "this server is the referral event relay");
            } else {
                tracing::info!("another server is the referral event relay now");
            }
        }
        if claim {
            round.claim_at = Instant::now() + self.shared.lease / 3;
        }
        round.read_due = true;
        Ok(())
    }

    /// Waits for what the round does next: a wanted notification (a batch not read yet), the
    /// relay's poll or the lease's renewal, a follower's probe, or the feed closing. The relay's
    /// own notification, or one for a batch read already, needs nothing; a lost listener ends
    /// the round (deliveries may go unheard until it listens again).
    async fn wait(
        &self,
        round: &mut Round,
        notes: &mut Notes,
        state: &mut watch::Receiver<FeedState>,
    ) -> Result<()> {
        let wake_at = if round.relaying {
            round.claim_at.min(round.relay_at)
        } else {
            round.claim_at.min(Instant::now() + IDLE_PROBE)
        };
        let last_read = round.last_read;
        let wanted = |event: ListenEvent| match event {
            ListenEvent::Notification { payload, .. } => {
                Ok(payload.parse::<i64>().map_or(true, |c| c > last_read))
            }
            ListenEvent::Listening => Ok(true),
            ListenEvent::Lost => Err(Error::Unavailable),
        };
        loop {
            tokio::select! {
                event = notes.next() => {
                    let Some(event) = event else { return Err(Error::Unavailable) };
                    let mut wake = wanted(event)?;
                    // Coalesce a burst into one round.
                    while let Some(next) = notes.try_next() {
                        wake |= wanted(next)?;
                    }
                    if wake {
                        round.read_due = true;
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(wake_at) => {
                    // A follower's probe; the relay's own timer reads after a batch.
                    round.read_due |= !round.relaying;
                    return Ok(());
                }
                _ = state.changed() => return Ok(()),
            }
        }
    }

    /// Claims or renews the lease and, while it is held, delivers every committed event in
    /// batches; returns whether the lease is held and the last delivery cursor.
    async fn relay(&self, conn: &mut Connection) -> Result<(bool, i64)> {
        let holder = self.shared.holder;
        let lease = self.shared.lease;
        loop {
            // Each batch is bounded, not the whole catch-up: a long backlog is relayed batch by
            // batch, and only a connection that stops answering ends the round.
            let batch = bounded(conn.transaction(async move |conn| {
                if !storage::relay::claim_lease(conn, EVENT_RELAY, holder, lease).await? {
                    return Ok::<_, diesel::result::Error>(None);
                }
                let assigned = storage::relay::assign_delivery_cursors(conn, RELAY_BATCH).await?;
                if assigned.count > 0 {
                    storage::relay::notify_delivered(conn, assigned.last).await?;
                }
                Ok(Some(assigned))
            }))
            .await?;
            match batch {
                None => return Ok((false, 0)),
                Some(assigned) if assigned.count < RELAY_BATCH => {
                    if assigned.count > 0 {
                        self.count_relay_batch(assigned.count);
                    }
                    return Ok((true, assigned.last));
                }
                Some(assigned) => self.count_relay_batch(assigned.count),
            }
        }
    }

    fn count_relay_batch(&self, events: i64) {
        self.shared
            .counters
            .relay_batches
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("finmatch_watch_relayed_events_total")
            .increment(u64::try_from(events).unwrap_or(0));
    }

    /// Reads every event delivered after `last`, a page per query, and sends each to the live
    /// ring of its lender if this server has streams for it; returns the new last cursor.
    async fn fan_out(&self, conn: &mut Connection, mut last: i64) -> Result<i64> {
        loop {
            let rows = bounded(storage::partner::delivered_events(
                conn,
                None,
                last,
                FANOUT_PAGE,
            ))
            .await?;
            self.shared
                .counters
                .fanout_reads
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("finmatch_watch_event_reads_total", "path" => "fanout").increment(1);
            let full = rows.len() as i64 == FANOUT_PAGE;
            // A credential revoked before these events committed must not receive them, however
            // late this replica hears of the revocation: check the credentials of the streams
            // they are for now, after reading them, and end those no longer active first.
            let watched: Vec<Uuid> = {
                let lenders = self.lenders();
                rows.iter()
                    .map(|row| row.0.lender_id)
                    .filter(|id| lenders.contains_key(id))
                    .collect()
            };
            if !watched.is_empty() {
                let candidates = self.credentials_watching(Some(&watched));
                bounded(self.end_inactive(conn, &candidates)).await?;
            }
            let mut lenders = self.lenders();
            for row in rows {
                last = row.0.cursor;
                let lender_id = row.0.lender_id;
                let Some(ring) = lenders.get(&lender_id) else {
                    continue;
                };
                let event = match to_event(row) {
                    Ok(event) => event,
                    Err(error) => {
                        // Streams reading it from the table get the error; the feed goes on.
                        tracing::error!(%error, cursor = last, "referral event not fanned out");
                        continue;
                    }
                };
                if ring.send(Arc::new(event)).is_err() {
                    // No stream of this lender is left here.
                    lenders.remove(&lender_id);
                }
            }
            drop(lenders);
            if !full {
                return Ok(last);
            }
        }
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

/// The state of one round of [`ReferralFeed::follow`].
struct Round {
    /// Kept for the round: the relay's lease is renewed on it between waits.
    conn: Connection,
    /// The last delivery cursor fanned out.
    last_read: i64,
    /// Whether this round holds the relay's lease.
    relaying: bool,
    /// When the lease is claimed or renewed next.
    claim_at: Instant,
    /// When the relay polls for undelivered events next.
    relay_at: Instant,
    /// Whether new deliveries may be in the table unread: at the start, after a wanted
    /// notification, a relay batch, a lease check or a follower's probe; not after a relay poll
    /// that found nothing to deliver (every 20 ms while relaying, mostly idle).
    read_due: bool,
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

impl App {
    /// The caller's referral events with cursor > `after_cursor`: the stored ones first, then
    /// live ones as they commit on any replica, with a heartbeat after [`HEARTBEAT`] of silence.
    pub fn watch_referrals(
        &self,
        who: &Principal,
        feed: &ReferralFeed,
        after_cursor: i64,
    ) -> Result<BoxStream<'static, Result<WatchItem>>> {
        let lender_id = who.require_lender("WatchReferrals")?;
        let slot = feed.open_stream(who.credential_id, lender_id)?;
        let state = Watch {
            slot,
            expires_at: who.expires_at.map(|at| {
                let left = (at - Utc::now()).to_std().unwrap_or_default();
                Instant::now() + left
            }),
            app: self.clone(),
            feed: feed.clone(),
            feed_state: feed.shared.state.subscribe(),
            lender_id,
            sent: after_cursor,
            live: None,
            caught_up: false,
            buffer: VecDeque::new(),
            heartbeat_at: Instant::now() + HEARTBEAT,
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            if state.done {
                return None;
            }
            let item = state.next().await;
            if item.is_err() {
                state.done = true;
            }
            Some((item, state))
        })
        .boxed())
    }
}

/// The position of one watch stream.
struct Watch {
    /// Its place in the stream counts, given back when the stream is dropped; says when the
    /// credential is found revoked or expired.
    slot: StreamSlot,
    /// When the credential expires, if it does.
    expires_at: Option<Instant>,
    app: App,
    feed: ReferralFeed,
    feed_state: watch::Receiver<FeedState>,
    lender_id: Uuid,
    /// Cursor of the last event sent (or the request's after_cursor).
    sent: i64,
    /// The lender's live events, subscribed before the first read from the table.
    live: Option<broadcast::Receiver<Arc<ReferralEvent>>>,
    /// Every event of the lender visible in the table at the last read has been read.
    caught_up: bool,
    /// Events read from the table, not sent yet.
    buffer: VecDeque<Arc<ReferralEvent>>,
    heartbeat_at: Instant,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Result<WatchItem> {
        loop {
            if !self.feed_state.borrow_and_update().open {
                return Err(Error::Unavailable);
            }
            self.still_authenticated()?;
            if let Some(event) = self.buffer.pop_front() {
                return Ok(self.send(event));
            }
            if self.live.is_none() {
                let live = tokio::select! {
                    live = self.feed.subscribe(self.lender_id) => live?,
                    () = tokio::time::sleep_until(self.heartbeat_at) => return self.heartbeat(),
                };
                self.live = Some(live);
            }
            if !self.caught_up {
                // Bounded like the feed's own steps: a table read that never answers ends the stream.
                bounded(self.read_page()).await?;
                continue;
            }
            let never = std::future::pending::<()>();
            let expiry = async {
                match self.expires_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => never.await,
                }
            };
            let live = self.live.as_mut().expect("subscribed above");
            tokio::select! {
                received = live.recv() => match received {
                    // The feed ends a revoked credential's streams before it sends them anything
                    // committed after the revocation: look again before sending.
                    Ok(event) if event.cursor > self.sent => {
                        self.still_authenticated()?;
                        return Ok(self.send(event));
                    }
                    // Read from the table already.
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell out of the live ring: catch up from the table, then rejoin.
                        self.caught_up = false;
                        self.feed.shared.counters.lagged.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("finmatch_watch_lagged_total").increment(1);
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Error::Unavailable),
                },
                _ = self.feed_state.changed() => {}
                _ = self.slot.ended.changed() => {}
                () = expiry => {}
                () = tokio::time::sleep_until(self.heartbeat_at) => return self.heartbeat(),
            }
        }
    }

    /// UNAUTHENTICATED once the credential is known to be revoked or has expired.
    fn still_authenticated(&mut self) -> Result<()> {
        let expired = self.expires_at.is_some_and(|at| at <= Instant::now());
        if expired || *self.slot.ended.borrow_and_update() {
            return Err(Error::Unauthenticated(
                "the credential was revoked or has expired; this stream has ended".into(),
            ));
        }
        Ok(())
    }

    fn send(&mut self, event: Arc<ReferralEvent>) -> WatchItem {
        self.sent = event.cursor;
        self.heartbeat_at = Instant::now() + HEARTBEAT;
        WatchItem::Event(event)
    }

    /// A heartbeat says the feed is live; when it is not, the stream ends UNAVAILABLE instead
    /// (the bank reconnects, to another replica if this one's feed stays down, and resumes).
    fn heartbeat(&mut self) -> Result<WatchItem> {
        let feed = *self.feed_state.borrow();
        if feed.ready && !feed.live {
            return Err(Error::Unavailable);
        }
        self.heartbeat_at = Instant::now() + HEARTBEAT;
        Ok(WatchItem::Heartbeat {
            time: Utc::now(),
            cursor: self.sent,
        })
    }

    /// Reads the next page of this lender's events after the last one sent; the connection goes
    /// back to the pool before any of them is sent.
    async fn read_page(&mut self) -> Result<()> {
        let rows = {
            let mut conn = self.app.conn().await?;
            let rows = storage::partner::delivered_events(
                &mut conn,
                Some(self.lender_id),
                self.sent,
                PAGE,
            )
            .await?;
            // As in the fan-out: nothing read after a revocation is sent.
            if !rows.is_empty() {
                self.feed
                    .end_inactive(&mut conn, &[self.slot.credential_id])
                    .await?;
            }
            rows
        };
        self.feed
            .shared
            .counters
            .catch_up_reads
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("finmatch_watch_event_reads_total", "path" => "catch_up").increment(1);
        self.caught_up = (rows.len() as i64) < PAGE;
        for row in rows {
            self.buffer.push_back(Arc::new(to_event(row)?));
        }
        Ok(())
    }
}
