//! The referral event feed behind PartnerService.WatchReferrals.
//!
//! One task per server LISTENs on `finmatch_referral_events` over a dedicated connection and
//! publishes, through a `tokio::sync::watch`, the **visibility horizon**: a cursor at or below
//! which the event log is final, i.e. no event with a lower cursor can commit any more. Each
//! watch stream reads its lender's events from the table, in pages, from the last cursor it sent
//! up to the horizon, and otherwise waits for the horizon to move. The NOTIFY payload is only a
//! wake-up; the table is the source of truth, so a lost notification delays but never loses an
//! event, and a bank connected to replica A sees events committed through replica B.
//!
//! Why a horizon: cursors come from an identity column, handed out at INSERT, while rows become
//! visible at COMMIT. A transaction holding cursor 10 can commit after one holding cursor 11; a
//! reader that sent 11 and resumes "after 11" would never see 10. A time-based delay only
//! narrows that window (a slow transaction outlives any delay). The horizon closes it: the feed
//! reads the identity sequence's last value `L` (which counts cursors of in-flight transactions
//! too), then the write transactions of this database in progress. Every cursor `<= L` was taken
//! by a transaction that had finished by then or is in that list (every event insert follows the
//! write of the referral row it records, so its transaction has its id before it takes a
//! cursor). Once every listed transaction has finished, each cursor `<= L` is committed or will
//! never exist: `L` is final. When nothing is in flight `L` is final at once; otherwise the feed
//! probes again shortly. The price: a long write transaction in this database holds delivery back
//! until it ends; nothing is ever delivered out of order or skipped.
//!
//! Memory: a stream is pulled by the transport (HTTP/2 flow control), holds at most one page of
//! events, and holds no database connection while it waits or while a page is being sent. The
//! feed keeps one number, not a queue, so a slow consumer cannot make anything grow or lag.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::RunQueryDsl;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::sync::watch;
use uuid::Uuid;

use super::financing::{Referral, to_referral};
use super::{App, Error, Principal, Result};
use crate::domain::{ReferralEventKind, ReferralStatus};
use crate::storage::partner::EventLogPosition;
use crate::storage::{self, Connection};

/// The NOTIFY channel the `referral_events` trigger signals on.
const CHANNEL: &str = "finmatch_referral_events";
/// Events read per query of a stream.
const PAGE: i64 = 100;
/// A heartbeat after this long without an event.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// While transactions that may still commit lower cursors are in flight, probe this often.
const FENCE_PROBE: Duration = Duration::from_millis(25);
/// Without notifications, probe this often anyway (a safety net, not the delivery path).
const IDLE_PROBE: Duration = Duration::from_secs(5);
/// Longest wait before reconnecting a broken listener.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the feed publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Horizon {
    /// Every event with a cursor at or below this is committed or will never exist.
    cursor: i64,
    /// False once the server shuts down: streams end with UNAVAILABLE.
    open: bool,
}

/// A handle on the server's referral event feed; cheap to clone.
#[derive(Clone)]
pub struct ReferralFeed {
    horizon: watch::Receiver<Option<Horizon>>,
}

/// The sending side, owned by the task started by [`ReferralFeed::start`].
pub struct FeedControl {
    sender: watch::Sender<Option<Horizon>>,
}

impl FeedControl {
    /// Ends every watch stream of this server (with UNAVAILABLE, so clients reconnect elsewhere
    /// with their last cursor); used at shutdown, which would otherwise wait for them forever.
    pub fn close(&self) {
        self.sender.send_modify(|h| {
            *h = Some(Horizon {
                cursor: h.map_or(0, |h| h.cursor),
                open: false,
            })
        });
    }
}

/// One message of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchItem {
    Event(Box<ReferralEvent>),
    /// Nothing happened for a while; `cursor` is the position of the stream.
    Heartbeat {
        time: DateTime<Utc>,
        cursor: i64,
    },
}

/// One change of a referral.
#[derive(Debug, Clone)]
pub struct ReferralEvent {
    pub cursor: i64,
    pub kind: ReferralEventKind,
    /// The referral with the status the event gave it (other fields as they are now).
    pub referral: Referral,
    pub time: DateTime<Utc>,
}

impl ReferralFeed {
    /// Starts the feed of this server: returns the handle streams read, the control that closes
    /// it, and the task to run (spawned by the server, aborted when it stops).
    pub fn start(
        app: App,
    ) -> (
        ReferralFeed,
        FeedControl,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (sender, horizon) = watch::channel(None);
        let task = {
            let sender = sender.clone();
            async move { listen(app, sender).await }
        };
        (ReferralFeed { horizon }, FeedControl { sender }, task)
    }
}

/// Keeps the horizon current; reconnects with backoff when the listening connection breaks.
async fn listen(app: App, sender: watch::Sender<Option<Horizon>>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow(&app, &sender).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "referral event listener lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Follows the event log over one dedicated connection until it breaks or the feed is closed.
async fn follow(app: &App, sender: &watch::Sender<Option<Horizon>>) -> Result<()> {
    // LISTEN needs a connection of its own for as long as it listens: take it out of the pool.
    let mut conn: Connection =
        diesel_async::pooled_connection::deadpool::Object::take(app.conn().await?);
    diesel::sql_query(format!("LISTEN {CHANNEL}"))
        .execute(&mut conn)
        .await?;
    // Anything committed while no one listened is found by probing at once.
    let mut fence: Option<EventLogPosition> = None;
    loop {
        if sender.borrow().is_some_and(|h| !h.open) {
            return Ok(());
        }
        let now = storage::partner::event_log_position(&mut conn).await?;
        let (horizon, next_fence) = advance(current(sender), fence.take(), now);
        fence = next_fence;
        sender.send_if_modified(|h| match h {
            Some(h) if !h.open || h.cursor >= horizon => false,
            _ => {
                *h = Some(Horizon {
                    cursor: horizon,
                    open: true,
                });
                true
            }
        });
        let wait = if fence.is_some() {
            FENCE_PROBE
        } else {
            IDLE_PROBE
        };
        let mut notifications = std::pin::pin!(conn.notifications_stream());
        tokio::select! {
            note = notifications.next() => match note {
                Some(Ok(_)) => {
                    // Coalesce a burst into one probe.
                    while let Some(Some(next)) = notifications.next().now_or_never() {
                        next?;
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Err(Error::Unavailable),
            },
            () = tokio::time::sleep(wait) => {}
            () = sender.closed() => return Ok(()),
        }
    }
}

fn current(sender: &watch::Sender<Option<Horizon>>) -> i64 {
    sender.borrow().map_or(0, |h| h.cursor)
}

/// The next horizon and the fence still waiting, given the current horizon, the fence set at an
/// earlier probe, and the log position now (see the module comment).
fn advance(
    horizon: i64,
    fence: Option<EventLogPosition>,
    now: EventLogPosition,
) -> (i64, Option<EventLogPosition>) {
    if now.in_flight.is_empty() {
        // Nothing in flight: everything handed out is final.
        return (horizon.max(now.last_cursor), None);
    }
    let mut horizon = horizon;
    let mut fence = fence;
    if let Some(f) = &fence
        && !f.in_flight.iter().any(|xid| now.in_flight.contains(xid))
    {
        // Every transaction in flight at the fence has finished.
        horizon = horizon.max(f.last_cursor);
        fence = None;
    }
    if fence.is_none() && now.last_cursor > horizon {
        fence = Some(now);
    }
    (horizon, fence)
}

use futures::FutureExt as _;

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
        let state = Watch {
            app: self.clone(),
            lender_id,
            sent: after_cursor,
            read_to: after_cursor,
            horizon: feed.horizon.clone(),
            buffer: VecDeque::new(),
            heartbeat_at: tokio::time::Instant::now() + HEARTBEAT,
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
    app: App,
    lender_id: Uuid,
    /// Cursor of the last event sent (or the request's after_cursor).
    sent: i64,
    /// Every event of this lender up to here has been read (into `buffer` or sent).
    read_to: i64,
    horizon: watch::Receiver<Option<Horizon>>,
    buffer: VecDeque<ReferralEvent>,
    heartbeat_at: tokio::time::Instant,
    done: bool,
}

impl Watch {
    async fn next(&mut self) -> Result<WatchItem> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.sent = event.cursor;
                self.heartbeat_at = tokio::time::Instant::now() + HEARTBEAT;
                return Ok(WatchItem::Event(Box::new(event)));
            }
            let horizon = *self.horizon.borrow_and_update();
            match horizon {
                Some(h) if !h.open => return Err(Error::Unavailable),
                Some(h) if h.cursor > self.read_to => {
                    self.read_page(h.cursor).await?;
                    continue;
                }
                _ => {}
            }
            tokio::select! {
                changed = self.horizon.changed() => {
                    if changed.is_err() {
                        return Err(Error::Unavailable);
                    }
                }
                () = tokio::time::sleep_until(self.heartbeat_at) => {
                    self.heartbeat_at = tokio::time::Instant::now() + HEARTBEAT;
                    return Ok(WatchItem::Heartbeat { time: Utc::now(), cursor: self.sent });
                }
            }
        }
    }

    /// Reads the next page of this lender's events up to `horizon`; the connection goes back
    /// to the pool before any of them is sent.
    async fn read_page(&mut self, horizon: i64) -> Result<()> {
        let rows = {
            let mut conn = self.app.conn().await?;
            storage::partner::events(&mut conn, self.lender_id, self.read_to, horizon, PAGE).await?
        };
        self.read_to = if (rows.len() as i64) < PAGE {
            horizon
        } else {
            rows.last().map_or(horizon, |(e, _)| e.cursor)
        };
        for (event, mut referral) in rows {
            let kind = event.kind.parse().map_err(|_| corrupt(&event.kind))?;
            let status: ReferralStatus =
                event.status.parse().map_err(|_| corrupt(&event.status))?;
            referral.status = status.as_str().to_owned();
            self.buffer.push_back(ReferralEvent {
                cursor: event.cursor,
                kind,
                referral: to_referral(referral)?,
                time: event.created_at,
            });
        }
        Ok(())
    }
}

fn corrupt(value: &str) -> Error {
    Error::Internal(anyhow::anyhow!(
        "referral event with unknown value {value:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(last_cursor: i64, in_flight: &[i64]) -> EventLogPosition {
        EventLogPosition {
            last_cursor,
            in_flight: in_flight.to_vec(),
        }
    }

    #[test]
    fn nothing_in_flight_makes_every_cursor_final() {
        assert_eq!(advance(3, None, at(9, &[])), (9, None));
    }

    #[test]
    fn in_flight_transactions_hold_the_horizon_until_they_finish() {
        // Cursors up to 9 handed out while transactions 40 and 45 ran.
        let (h, fence) = advance(3, None, at(9, &[40, 45]));
        assert_eq!((h, fence.clone()), (3, Some(at(9, &[40, 45]))));
        // Transaction 45 still runs: nothing moves, the fence stays as it was.
        let (h, fence) = advance(h, fence, at(12, &[45, 50]));
        assert_eq!((h, fence.clone()), (3, Some(at(9, &[40, 45]))));
        // 40 and 45 finished: 9 is final; 12 waits behind a new fence.
        let (h, fence) = advance(h, fence, at(12, &[50, 51]));
        assert_eq!((h, fence), (9, Some(at(12, &[50, 51]))));
    }

    #[test]
    fn the_horizon_never_moves_back() {
        assert_eq!(advance(20, None, at(9, &[])), (20, None));
        assert_eq!(advance(20, None, at(9, &[40])), (20, None));
    }
}
