//! Connections to the server under test, and the setup calls made before the clock starts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::ServerAddress;
use crate::proto as pb;
use crate::proto::enterprise_service_client::EnterpriseServiceClient;
use crate::proto::financing_service_client::FinancingServiceClient;

/// Where the server is, how to reach it and with which token.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub address: ServerAddress,
    /// An OPERATOR token (the setup creates enterprises and needs with it).
    #[arg(long, env = "FINMATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// HTTP/2 connections to open; calls are spread over them round-robin.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
}

/// A parsed `authorization` value: built once, cloned per call (a reference count).
pub type Bearer = MetadataValue<Ascii>;

pub fn bearer(token: &str) -> anyhow::Result<Bearer> {
    format!("Bearer {token}")
        .parse()
        .context("the token is not valid metadata")
}

/// A refused call as a message for a person: the code name, the message and the call.
pub fn refused(call: impl std::fmt::Display, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{call}: {} {}",
        crate::proto::code_name(status.code()),
        status.message()
    )
}

/// A request carrying `bearer`.
pub fn authed<T>(message: T, bearer: &Bearer) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

impl ConnectArgs {
    pub fn operator(&self) -> anyhow::Result<Bearer> {
        match &self.token {
            Some(token) => bearer(token),
            None => bail!("an OPERATOR token is needed: --token or FINMATCH_TOKEN"),
        }
    }

    /// `--connections` channels, each its own HTTP/2 connection, connected now.
    pub async fn connect(&self) -> anyhow::Result<Channels> {
        let endpoint = self.address.endpoint(Duration::from_secs(10)).await?;
        let mut channels = Vec::with_capacity(self.connections.max(1));
        for _ in 0..self.connections.max(1) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {}", self.address.server))?,
            );
        }
        Ok(Channels(Arc::from(channels)))
    }
}

/// The open connections; `get(i)` spreads callers over them.
#[derive(Clone)]
pub struct Channels(Arc<[Channel]>);

impl Channels {
    pub fn get(&self, i: usize) -> Channel {
        self.0[i % self.0.len()].clone()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Calls in flight during setup.
pub const SETUP_IN_FLIGHT: usize = 16;

/// An enterprise the setup registered.
#[derive(Debug, Clone)]
pub struct Registered {
    pub serial: u64,
    pub id: String,
}

/// Registers the enterprises with serials `first..first + n`, [`SETUP_IN_FLIGHT`] at a time;
/// fails on the first refusal (a used serial means the state file is not this database's).
pub async fn register_enterprises(
    channels: &Channels,
    operator: &Bearer,
    first: u64,
    n: u64,
) -> anyhow::Result<Vec<Registered>> {
    let results = futures::stream::iter(first..first + n)
        .map(|serial| {
            let mut client = EnterpriseServiceClient::new(channels.get(serial as usize));
            let request = authed(
                pb::CreateEnterpriseRequest {
                    enterprise: Some(super::data::enterprise(serial)),
                },
                operator,
            );
            async move {
                let created = client.create_enterprise(request).await.map_err(|s| {
                    refused(
                        format_args!("CreateEnterprise of bench enterprise {serial}"),
                        &s,
                    )
                })?;
                let id = created
                    .into_inner()
                    .enterprise
                    .map(|e| e.id)
                    .context("CreateEnterprise returned no enterprise")?;
                anyhow::Ok(Registered { serial, id })
            }
        })
        .buffer_unordered(SETUP_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// The SubmitNeed request of a registered enterprise (its serial keys it).
pub fn submit_request(
    enterprise: &Registered,
    run: &str,
    today: chrono::NaiveDate,
) -> pb::SubmitNeedRequest {
    pb::SubmitNeedRequest {
        idempotency_key: format!("bench-{run}-{}", enterprise.serial),
        need: Some(super::data::need(enterprise.serial, &enterprise.id, today)),
    }
}

/// Submits one need per enterprise during setup (a few at a time: the deadlock-prone path of
/// an unfixed server stays calm at low concurrency); returns the responses that succeeded and
/// the number that failed.
pub async fn submit_setup_needs(
    channels: &Channels,
    operator: &Bearer,
    requests: Vec<pb::SubmitNeedRequest>,
) -> (Vec<pb::SubmitNeedResponse>, u64) {
    let results = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(i, request)| {
            let mut client = FinancingServiceClient::new(channels.get(i));
            let request = authed(request, operator);
            async move { client.submit_need(request).await.map(|r| r.into_inner()) }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    let mut ok = Vec::with_capacity(results.len());
    let mut failed = 0;
    for result in results {
        match result {
            Ok(response) => ok.push(response),
            Err(_) => failed += 1,
        }
    }
    (ok, failed)
}
