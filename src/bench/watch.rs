//! The watch scenario's streams: `--streams` PartnerService.WatchReferrals streams spread over
//! the lenders (each with its own token), open while the submit load runs, timing each event
//! from its `time` to its arrival.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{Bearer, Channels, authed};
use super::load::latency_histogram;
use super::report::{Latency, WatchReport};
use crate::proto as pb;
use crate::proto::code_name;
use crate::proto::partner_service_client::PartnerServiceClient;

/// Streams per HTTP/2 connection: below the 200 concurrent streams a hyper server allows by
/// default, so no stream waits for a slot.
pub const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Default)]
struct Shared {
    delay: Mutex<Option<Histogram<u64>>>,
    events: AtomicU64,
    backlog: AtomicU64,
    created: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, code: tonic::Code) {
        *self
            .errors
            .lock()
            .expect("not poisoned")
            .entry(code_name(code).to_owned())
            .or_default() += 1;
    }
}

/// Open streams, counting what they receive.
pub struct Watchers {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// Streams per lender (index into the state's lenders).
    pub per_lender: Vec<u64>,
    asked: usize,
}

/// Opens `streams` streams, stream `s` as lender `s % lenders.len()`, reading from after
/// `after_cursor`; returns once every stream is open (or has failed to open).
pub async fn open(
    channels: &Channels,
    lenders: &[Bearer],
    streams: usize,
    after_cursor: i64,
) -> Watchers {
    let shared = Arc::new(Shared::default());
    *shared.delay.lock().expect("not poisoned") = Some(latency_histogram());
    let (stop, stopped) = watch::channel(false);
    let opened_at = SystemTime::now();
    let mut per_lender = vec![0u64; lenders.len()];
    let opened: Vec<Option<(usize, tonic::Streaming<pb::WatchReferralsResponse>)>> =
        futures::stream::iter(0..streams)
            .map(|s| {
                let lender = s % lenders.len();
                let mut client = PartnerServiceClient::new(channels.get(s));
                let request = authed(pb::WatchReferralsRequest { after_cursor }, &lenders[lender]);
                let shared = shared.clone();
                async move {
                    match client.watch_referrals(request).await {
                        Ok(response) => Some((lender, response.into_inner())),
                        Err(status) => {
                            shared.error(status.code());
                            None
                        }
                    }
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
    let mut tasks = Vec::with_capacity(streams);
    for (lender, mut stream) in opened.into_iter().flatten() {
        per_lender[lender] += 1;
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = stopped.changed() => return,
                };
                match message {
                    Ok(Some(pb::WatchReferralsResponse {
                        payload: Some(pb::watch_referrals_response::Payload::Event(event)),
                    })) => {
                        let received = SystemTime::now();
                        shared.events.fetch_add(1, Ordering::Relaxed);
                        let Some(time) = event.time.and_then(|t| SystemTime::try_from(t).ok())
                        else {
                            continue;
                        };
                        if time < opened_at {
                            shared.backlog.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        if event.kind == pb::ReferralEventKind::Created as i32 {
                            shared.created.fetch_add(1, Ordering::Relaxed);
                        }
                        let micros = received
                            .duration_since(time)
                            .unwrap_or(Duration::ZERO)
                            .as_micros() as u64;
                        if let Some(h) = shared.delay.lock().expect("not poisoned").as_mut() {
                            h.saturating_record(micros.max(1));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        shared.error(tonic::Code::Ok);
                        return;
                    }
                    Err(status) => {
                        shared.error(status.code());
                        return;
                    }
                }
            }
        }));
    }
    Watchers {
        shared,
        tasks,
        stop,
        per_lender,
        asked: streams,
    }
}

impl Watchers {
    pub fn opened(&self) -> usize {
        self.tasks.len()
    }

    /// Waits `settle` for late deliveries, closes the streams and reports; `referrals[l]` is
    /// the number of referrals the run created for lender `l`.
    pub async fn finish(self, settle: Duration, referrals: &[u64]) -> WatchReport {
        tokio::time::sleep(settle).await;
        let _ = self.stop.send(true);
        let opened = self.tasks.len();
        for task in self.tasks {
            let _ = task.await;
        }
        let expected_deliveries = referrals
            .iter()
            .zip(&self.per_lender)
            .map(|(r, s)| r * s)
            .sum();
        let delay = self
            .shared
            .delay
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_else(latency_histogram);
        let mut stream_errors = self.shared.errors.lock().expect("not poisoned").clone();
        if let Some(ended) = stream_errors.remove("OK") {
            stream_errors.insert("ENDED_BY_SERVER".to_owned(), ended);
        }
        WatchReport {
            streams: self.asked,
            opened,
            stream_errors,
            events: self.shared.events.load(Ordering::Relaxed),
            backlog_events: self.shared.backlog.load(Ordering::Relaxed),
            expected_deliveries,
            delivered: self.shared.created.load(Ordering::Relaxed),
            delay_ms: Latency::of(&delay),
        }
    }
}
