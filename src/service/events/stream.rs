//! One WatchReferrals stream: catch up from the table, then follow the live fan-out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::relay::bounded;
use super::{
    FeedState, HEARTBEAT, PAGE, ReferralEvent, ReferralFeed, StreamSlot, WatchItem, to_event,
};
use crate::service::{App, Error, Principal, Result};
use crate::storage;

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
