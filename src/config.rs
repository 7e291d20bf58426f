//! Settings, from command-line flags and `FINMATCH_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::matching::RoutingPolicy;

/// How logs are written (to stderr; stdout is kept for command output such as tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for a log pipeline.
    Json,
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://finmatch:secret@db:5432/finmatch.
    #[arg(long, env = "FINMATCH_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Maximum connections this replica keeps to PostgreSQL.
    #[arg(long, env = "FINMATCH_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// How long start-up waits for PostgreSQL to accept a connection and the migrations,
    /// trying again with backoff while it is unreachable, starting up or lacks the database;
    /// 0 tries once. A wrong URL, role or password fails at once.
    #[arg(long, env = "FINMATCH_DB_CONNECT_TIMEOUT_SECS", default_value_t = 60)]
    pub db_connect_timeout_secs: u64,
}

impl DatabaseArgs {
    /// See `db_connect_timeout_secs`.
    pub fn connect_patience(&self) -> Duration {
        Duration::from_secs(self.db_connect_timeout_secs)
    }
}

/// Everything `serve` (and `dev`) needs beyond the database.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to serve gRPC and gRPC-Web on; port 0 picks a free port.
    #[arg(
        long = "listen",
        env = "FINMATCH_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen_addr: SocketAddr,

    /// Serve Prometheus metrics on ADDR/metrics; off when unset.
    #[arg(long, env = "FINMATCH_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Period of the SLA sweeper that expires overdue referrals and re-routes their needs.
    #[arg(long, env = "FINMATCH_SWEEP_INTERVAL_SECS", default_value_t = 30)]
    pub sweep_interval_secs: u64,

    /// How long a call's replay record is kept: within this window a retry with the same
    /// idempotency key is guaranteed the first call's answer. Older records are deleted by the
    /// sweeper.
    #[arg(
        long,
        env = "FINMATCH_IDEMPOTENCY_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub idempotency_retention_days: u32,

    /// How long the referral event relay's lease lasts unless renewed: when the replica that
    /// relays dies, another takes over after at most this long (renewed every third of it).
    #[arg(long, env = "FINMATCH_RELAY_LEASE_SECS", default_value_t = 10)]
    pub relay_lease_secs: u64,

    /// PEM certificate chain; serves TLS when given together with --tls-key.
    #[arg(long, env = "FINMATCH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "FINMATCH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle; when given, clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "FINMATCH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Calls handled at once by this replica; beyond it calls are shed with RESOURCE_EXHAUSTED.
    #[arg(long, env = "FINMATCH_MAX_CONCURRENT_CALLS", default_value_t = 512)]
    pub max_concurrent_calls: usize,

    /// The bureau's time zone (IANA name): business dates (`needed_by`, daily capacity days,
    /// loan dates) are its days.
    #[arg(long, env = "FINMATCH_TIME_ZONE", default_value = "Asia/Shanghai")]
    pub time_zone: chrono_tz::Tz,

    /// WatchReferrals streams one credential may hold open on this replica at once; beyond it
    /// RESOURCE_EXHAUSTED. Open streams also count against --max-concurrent-calls.
    #[arg(
        long,
        env = "FINMATCH_MAX_WATCH_STREAMS_PER_CREDENTIAL",
        default_value_t = 4
    )]
    pub max_watch_streams_per_credential: usize,

    /// Upper bound on any unary call's duration, whatever deadline the client sets. Streaming
    /// calls are not bounded by it (see --stream-idle-secs).
    #[arg(long, env = "FINMATCH_CALL_TIMEOUT_SECS", default_value_t = 30)]
    pub call_timeout_secs: u64,

    /// Longest wait for the next message of a client stream (ImportNeeds); a stream idle for
    /// longer is ended with DEADLINE_EXCEEDED. A stream that keeps sending may run as long as it
    /// needs.
    #[arg(long, env = "FINMATCH_STREAM_IDLE_SECS", default_value_t = 30)]
    pub stream_idle_secs: u64,

    /// On SIGTERM, how long the server keeps answering after reporting NOT_SERVING, so that
    /// probes and load balancers stop sending it calls before it refuses them.
    #[arg(long, env = "FINMATCH_SHUTDOWN_NOTICE_SECS", default_value_t = 2)]
    pub shutdown_notice_secs: u64,

    /// Then, how long calls in flight may take to finish before the server stops without them.
    #[arg(long, env = "FINMATCH_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,

    /// Longest a single SQL statement of a call may run in PostgreSQL (its statement_timeout);
    /// 0 leaves it unbounded. A statement cut off fails its call with UNAVAILABLE.
    #[arg(long, env = "FINMATCH_DB_STATEMENT_TIMEOUT_SECS", default_value_t = 30)]
    pub db_statement_timeout_secs: u64,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "FINMATCH_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// JSON file with the routing policy (factor weights, top_k, …); fields left out keep their
    /// defaults. See README "Routing policy".
    #[arg(long, env = "FINMATCH_ROUTING_POLICY")]
    pub routing_policy: Option<PathBuf>,
}

impl ServerArgs {
    /// The routing policy: the defaults, overridden by the file's fields when one is given.
    pub fn routing_policy(&self) -> anyhow::Result<RoutingPolicy> {
        match &self.routing_policy {
            None => Ok(RoutingPolicy::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the routing policy {}", path.display()))?;
                parse_routing_policy(&text)
                    .with_context(|| format!("in the routing policy {}", path.display()))
            }
        }
    }

    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs.max(1))
    }

    pub fn idempotency_retention(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::days(i64::from(self.idempotency_retention_days.max(1)))
    }

    pub fn relay_lease(&self) -> Duration {
        Duration::from_secs(self.relay_lease_secs.max(1))
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs.max(1))
    }

    pub fn db_statement_timeout(&self) -> Duration {
        Duration::from_secs(self.db_statement_timeout_secs)
    }

    pub fn shutdown_notice(&self) -> Duration {
        Duration::from_secs(self.shutdown_notice_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn stream_idle(&self) -> Duration {
        Duration::from_secs(self.stream_idle_secs.max(1))
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: None,
            sweep_interval_secs: 30,
            idempotency_retention_days: 30,
            relay_lease_secs: 10,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_concurrent_calls: 512,
            max_watch_streams_per_credential: 4,
            time_zone: chrono_tz::Asia::Shanghai,
            call_timeout_secs: 30,
            stream_idle_secs: 30,
            db_statement_timeout_secs: 30,
            shutdown_notice_secs: 2,
            shutdown_grace_secs: 5,
            max_message_bytes: 4 * 1024 * 1024,
            routing_policy: None,
        }
    }
}

/// The settings a server is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub db_pool_size: usize,
    pub migrate: bool,
    /// How long start-up waits for PostgreSQL (see [`DatabaseArgs::connect_patience`]).
    pub db_connect_patience: Duration,
    pub server: ServerArgs,
}

/// The routing policy file: every field optional, unknown fields refused (a typo must not pass
/// silently as a default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    weights: WeightsFile,
    top_k: Option<usize>,
    max_lenders_per_need: Option<usize>,
    rate_best_bps: Option<i32>,
    rate_worst_bps: Option<i32>,
    prior_observations: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsFile {
    rate_bps: Option<i32>,
    amount_fit_bps: Option<i32>,
    approval_history_bps: Option<i32>,
    responsiveness_bps: Option<i32>,
    capacity_headroom_bps: Option<i32>,
    policy_priority_bps: Option<i32>,
    locality_bps: Option<i32>,
}

/// Parses a routing policy file (JSON) over the defaults and validates the result.
pub fn parse_routing_policy(text: &str) -> anyhow::Result<RoutingPolicy> {
    let file: PolicyFile = serde_json::from_str(text)?;
    let mut policy = RoutingPolicy::default();
    let w = &mut policy.weights;
    let f = file.weights;
    w.rate_bps = f.rate_bps.unwrap_or(w.rate_bps);
    w.amount_fit_bps = f.amount_fit_bps.unwrap_or(w.amount_fit_bps);
    w.approval_history_bps = f.approval_history_bps.unwrap_or(w.approval_history_bps);
    w.responsiveness_bps = f.responsiveness_bps.unwrap_or(w.responsiveness_bps);
    w.capacity_headroom_bps = f.capacity_headroom_bps.unwrap_or(w.capacity_headroom_bps);
    w.policy_priority_bps = f.policy_priority_bps.unwrap_or(w.policy_priority_bps);
    w.locality_bps = f.locality_bps.unwrap_or(w.locality_bps);
    policy.top_k = file.top_k.unwrap_or(policy.top_k);
    policy.max_lenders_per_need = file
        .max_lenders_per_need
        .unwrap_or(policy.max_lenders_per_need);
    policy.rate_best_bps = file.rate_best_bps.unwrap_or(policy.rate_best_bps);
    policy.rate_worst_bps = file.rate_worst_bps.unwrap_or(policy.rate_worst_bps);
    policy.prior_observations = file.prior_observations.unwrap_or(policy.prior_observations);
    policy
        .validate()
        .map_err(|v| anyhow::anyhow!("invalid routing policy: {v}"))?;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_file_overrides_only_the_fields_it_names() {
        let policy = parse_routing_policy(
            r#"{"top_k": 2, "weights": {"rate_bps": 3000, "locality_bps": 0}}"#,
        )
        .unwrap();
        assert_eq!(policy.top_k, 2);
        assert_eq!(policy.weights.rate_bps, 3000);
        assert_eq!(policy.weights.locality_bps, 0);
        assert_eq!(
            policy.max_lenders_per_need,
            RoutingPolicy::default().max_lenders_per_need
        );
    }

    #[test]
    fn a_policy_file_with_a_typo_or_bad_weights_is_refused() {
        assert!(parse_routing_policy(r#"{"topk": 2}"#).is_err());
        let error = parse_routing_policy(r#"{"weights": {"rate_bps": 9000}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid routing policy"), "{error}");
        assert_eq!(
            parse_routing_policy("{}").unwrap(),
            RoutingPolicy::default()
        );
    }
}
