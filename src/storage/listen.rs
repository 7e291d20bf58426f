//! A LISTEN connection that stays connected: notifications from PostgreSQL for in-process
//! caches, with reconnection and backoff.
//!
//! [`listen`] owns one dedicated connection (outside the pool, under its own
//! `application_name`, so an operator can find it in `pg_stat_activity`) and reports to its
//! caller, in order:
//!
//! - [`ListenEvent::Listening`] once `LISTEN` has taken effect on every channel: from then on
//!   every notification committed is delivered, so a cache cleared at this moment and kept up
//!   to date by the notifications that follow is current;
//! - [`ListenEvent::Notification`] for each notification;
//! - [`ListenEvent::Lost`] as soon as the connection is not known to be live (it broke, or did
//!   not answer a ping in time): notifications may be missed from here until the next
//!   `Listening`, so a cache must not be trusted in between.
//!
//! Between two connections it waits an exponentially growing pause with jitter, reset once a
//! connection has been listening.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::StreamExt as _;

/// How often the listening connection is pinged, so that a connection that died silently is
/// noticed (and the cache distrusted) within `PING_EVERY + PING_TIMEOUT`.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping may take before the connection is given up.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause before reconnecting; it doubles up to [`RECONNECT_MAX_DELAY`].
const RECONNECT_MIN_DELAY: Duration = Duration::from_secs(1);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(30);

/// What the listening connection reports; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    /// `LISTEN` is in effect on every channel.
    Listening,
    /// A notification on one of the channels.
    Notification { channel: String, payload: String },
    /// The connection is not known to be live; notifications may be missed until `Listening`.
    Lost,
}

/// Listens on `channels` of `database_url` until the returned future is dropped, calling
/// `on_event` for every [`ListenEvent`] in order. Never returns.
pub async fn listen<F>(
    database_url: &str,
    application_name: &str,
    channels: &[&str],
    mut on_event: F,
) -> std::convert::Infallible
where
    F: FnMut(ListenEvent),
{
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(RECONNECT_MIN_DELAY)
            .with_max_delay(RECONNECT_MAX_DELAY)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut pauses = backoff();
    loop {
        match session(database_url, application_name, channels, &mut on_event).await {
            Ok(()) => {
                tracing::warn!(application_name, "listening connection lost; reconnecting");
                pauses = backoff();
            }
            Err(e) => {
                tracing::warn!(application_name, error = %e, "cannot listen; retrying")
            }
        }
        on_event(ListenEvent::Lost);
        tokio::time::sleep(pauses.next().unwrap_or(RECONNECT_MAX_DELAY)).await;
    }
}

/// One connection: connect, LISTEN, report until it breaks. `Ok` when it was listening.
async fn session<F>(
    database_url: &str,
    application_name: &str,
    channels: &[&str],
    on_event: &mut F,
) -> anyhow::Result<()>
where
    F: FnMut(ListenEvent),
{
    let mut connector = super::connect::Connector::new(database_url)?;
    connector
        .config_mut()
        .application_name(application_name)
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, mut connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect()).await??;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven here; it ends (dropping `tx`) when the connection breaks.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "listening connection closed");
                    break;
                }
            }
        }
    });
    let outcome = async {
        let statements: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        tokio::time::timeout(PING_TIMEOUT, client.batch_execute(&statements)).await??;
        on_event(ListenEvent::Listening);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(n) => on_event(ListenEvent::Notification {
                        channel: n.channel().to_owned(),
                        payload: n.payload().to_owned(),
                    }),
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        _ => return Ok(()),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    outcome
}
