//! Group commit of SubmitNeed: calls made at the same time are stored together, as one wave.
//!
//! Each call is queued. A leader task takes every call waiting, forms a wave of them (one per
//! enterprise and idempotency key, per caller) and stores it with [`App::store_wave`]: one read of
//! the enterprises, one statement that is its own transaction, one commit however many calls it
//! holds. While a wave is being written the next calls queue, so waves grow with the load and a
//! lone call waits for nobody. Up to [`LEADERS`] waves are in flight at once.
//!
//! A wave is all or nothing. Every call it could not store (or that did not fit into it) is
//! handed back to its caller, which stores it alone as before (see `financing::submit_in`): its
//! replay, its duplicate, its full product are resolved there with the outcome they always had.
//! Nothing is stored twice: a wave's statement either committed all of its needs, or none.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::oneshot;
use tracing::Instrument as _;
use uuid::Uuid;

use super::financing::{NeedWithReferrals, WaveItem};
use super::{App, Idempotency, Principal};
use crate::domain::NewNeed;

/// Waves in flight at once: one being written while the next is read and scored.
const LEADERS: usize = 2;
/// Most calls in one wave.
const WAVE_MAX: usize = 100;

/// SubmitNeed calls waiting to be stored; one per [`App`].
#[derive(Default)]
pub(crate) struct SubmitQueue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Queued>,
    /// Leader tasks running; changed only under the lock, with `waiting`.
    leaders: usize,
}

/// A queued call, with where to answer it: the stored need, or `None` to store it alone.
struct Queued {
    who: Principal,
    idempotency: Idempotency,
    need: NewNeed,
    done: oneshot::Sender<Option<NeedWithReferrals>>,
}

impl SubmitQueue {
    /// The need as stored by a wave, or `None` when the caller must store it alone.
    pub(crate) async fn submit(
        &self,
        app: &App,
        who: &Principal,
        idempotency: &Idempotency,
        need: &NewNeed,
    ) -> Option<NeedWithReferrals> {
        let (done, stored) = oneshot::channel();
        let lead = {
            let mut state = self.state.lock().expect("submit queue poisoned");
            state.waiting.push(Queued {
                who: who.clone(),
                idempotency: idempotency.clone(),
                need: need.clone(),
                done,
            });
            let lead = state.leaders < LEADERS;
            if lead {
                state.leaders += 1;
            }
            lead
        };
        if lead {
            tokio::spawn(lead_waves(app.clone()));
        }
        // A leader that ended without answering (it panicked) leaves the call to its caller.
        stored.await.ok().flatten()
    }

    /// The next calls to store, or `None` (and one leader fewer) when nobody is waiting.
    fn next(&self) -> Option<Vec<Queued>> {
        let mut state = self.state.lock().expect("submit queue poisoned");
        if state.waiting.is_empty() {
            state.leaders -= 1;
            return None;
        }
        let n = state.waiting.len().min(WAVE_MAX);
        Some(state.waiting.drain(..n).collect())
    }
}

/// Stores waves until nobody is waiting.
async fn lead_waves(app: App) {
    // Should a wave panic, its calls are answered `None` (their senders drop) and the lock is
    // released; the leader count must still drop, or calls would queue with nobody to lead.
    struct Leading<'a>(&'a SubmitQueue, bool);
    impl Drop for Leading<'_> {
        fn drop(&mut self) {
            if !self.1 {
                let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                state.leaders -= 1;
            }
        }
    }
    let queue = app.submit_queue();
    let mut leading = Leading(queue, false);
    loop {
        let Some(calls) = queue.next() else {
            leading.1 = true;
            return;
        };
        for wave in waves(calls) {
            store(&app, wave).await;
        }
    }
}

/// One caller's calls of a batch: those one statement stores, and those it must not.
#[derive(Default)]
struct Wave {
    enterprises: HashSet<Uuid>,
    keys: HashSet<String>,
    calls: Vec<Queued>,
    /// Calls sharing an enterprise or key with one of `calls`: they go alone once the wave is
    /// stored, so each replays or is refused as it would be had it come after.
    after: Vec<Queued>,
}

/// Splits queued calls into waves: one caller each, its calls with distinct enterprises and
/// keys (one statement cannot store two needs that may collide). A call sharing an enterprise or
/// key with one before it waits for that wave, then goes alone. Sent at once instead, it would
/// race the wave for the key or purpose, and a wave that loses twice stores nothing itself.
fn waves(calls: Vec<Queued>) -> Vec<Wave> {
    let mut waves: HashMap<Uuid, Wave> = HashMap::new();
    for call in calls {
        let wave = waves.entry(call.who.credential_id).or_default();
        let enterprise = call.need.enterprise_id();
        if wave.enterprises.contains(&enterprise) || wave.keys.contains(&call.idempotency.key) {
            wave.after.push(call);
            continue;
        }
        wave.enterprises.insert(enterprise);
        wave.keys.insert(call.idempotency.key.clone());
        wave.calls.push(call);
    }
    waves.into_values().collect()
}

/// Stores one caller's wave and answers each call, then sends the calls held back to go alone.
async fn store(app: &App, Wave { calls, after, .. }: Wave) {
    store_calls(app, calls).await;
    for call in after {
        let _ = call.done.send(None);
    }
}

/// Stores calls of one caller, with distinct enterprises and keys, and answers each.
async fn store_calls(app: &App, wave: Vec<Queued>) {
    let items: Vec<WaveItem<'_>> = wave
        .iter()
        .map(|call| WaveItem {
            idempotency: &call.idempotency,
            need: &call.need,
        })
        .collect();
    let span = tracing::debug_span!("submit_wave", needs = wave.len());
    let stored = match app.store_wave(&wave[0].who, &items).instrument(span).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::debug!(%error, needs = wave.len(), "SubmitNeed wave failed; calls go alone");
            wave.iter().map(|_| None).collect()
        }
    };
    drop(items);
    for (call, need) in wave.into_iter().zip(stored) {
        let _ = call.done.send(need);
    }
}
