//! Settings, from command-line flags and `FINMATCH_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

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

    /// Upper bound on any unary call's duration, whatever deadline the client sets.
    #[arg(long, env = "FINMATCH_CALL_TIMEOUT_SECS", default_value_t = 30)]
    pub call_timeout_secs: u64,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "FINMATCH_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
}

impl ServerArgs {
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_secs.max(1))
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs.max(1))
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: None,
            sweep_interval_secs: 30,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_concurrent_calls: 512,
            call_timeout_secs: 30,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The settings a server is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub db_pool_size: usize,
    pub migrate: bool,
    pub server: ServerArgs,
}
