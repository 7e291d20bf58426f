//! What the command line's clients share: where a finmatch server is and how to reach it, and the
//! health probe (`finmatch health`) a container or a load balancer asks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Where a finmatch server is and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerAddress {
    /// The server's URL; https:// needs --tls-ca.
    #[arg(
        long,
        env = "FINMATCH_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// PEM file of the CA that signed the server's certificate (for https://).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires mutual TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the server's certificate is checked against (default: the URL's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
}

impl ServerAddress {
    /// A plaintext address, e.g. `http://127.0.0.1:50051`.
    pub fn plain(server: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_domain: None,
        }
    }

    /// The endpoint, with TLS configured for an https:// server; connects within
    /// `connect_timeout`.
    pub async fn endpoint(&self, connect_timeout: Duration) -> anyhow::Result<Endpoint> {
        let mut endpoint = Endpoint::from_shared(self.server.clone())
            .context("the server must be a URL such as http://127.0.0.1:50051")?
            .tcp_nodelay(true)
            .connect_timeout(connect_timeout);
        if self.server.starts_with("https://") {
            let ca = self
                .tls_ca
                .as_ref()
                .context("an https:// server needs --tls-ca")?;
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                tokio::fs::read(ca)
                    .await
                    .with_context(|| format!("reading {}", ca.display()))?,
            ));
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(Identity::from_pem(
                    tokio::fs::read(cert).await.context("reading --tls-cert")?,
                    tokio::fs::read(key).await.context("reading --tls-key")?,
                ));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(endpoint)
    }

    /// One connection, made now.
    pub async fn connect(&self, connect_timeout: Duration) -> anyhow::Result<Channel> {
        self.endpoint(connect_timeout)
            .await?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.server))
    }
}

/// Asks the server's gRPC health service about each of `services` on one connection and returns
/// the answers in order; fails when the server cannot be reached or has not answered them all
/// within `timeout`. The server answers `""` (the server as a whole) and each finmatch service
/// NOT_SERVING while PostgreSQL is unreachable.
pub async fn health(
    address: &ServerAddress,
    services: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<ServingStatus>> {
    let ask = async {
        let mut client = HealthClient::new(address.connect(timeout).await?);
        let mut answers = Vec::with_capacity(services.len());
        for service in services {
            let response = client
                .check(HealthCheckRequest {
                    service: (*service).to_owned(),
                })
                .await
                .map_err(|status| {
                    anyhow::anyhow!(
                        "health of {service:?}: {} {}",
                        crate::proto::code_name(status.code()),
                        status.message()
                    )
                })?;
            answers.push(response.into_inner().status());
        }
        anyhow::Ok(answers)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .with_context(|| format!("{} did not answer within {timeout:?}", address.server))?
}
