//! The feed task: the relay (one replica at a time, by lease) hands committed events their
//! delivery cursors; every replica's feed reads each new batch once and fans it out to its
//! streams (see the module above).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel_async::AsyncConnection as _;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    FANOUT_PAGE, FEED_LISTENER_NAME, FEED_STEP_TIMEOUT, FeedState, IDLE_PROBE, MAX_BACKOFF,
    RELAY_BATCH, RELAY_POLL, ReferralFeed, to_event,
};
use crate::service::{App, Error, Result};
use crate::storage::listen::ListenEvent;
use crate::storage::relay::{DELIVERIES_CHANNEL, EVENT_RELAY};
use crate::storage::{self, Connection};

impl ReferralFeed {
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
}

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
pub(super) async fn bounded<T, E: Into<Error>>(
    step: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(FEED_STEP_TIMEOUT, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Unavailable),
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
