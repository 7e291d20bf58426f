//! Opening connections to PostgreSQL, in the clear or over TLS (rustls) as the URL's `sslmode`
//! says, with libpq's meaning of each mode. Every connection finmatch opens comes from a
//! [`Connector`]: the pool's, the listeners', the migrations', and the dev and test helpers'.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked; checked as for `verify-ca` when `sslrootcert` is given |
//! | `verify-ca` | always | signed by `sslrootcert` |
//! | `verify-full` | always | signed by `sslrootcert` and naming the host connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates; without it, the verify modes use
//! `~/.postgresql/root.crt` as libpq does, and refuse to start when there is none. As in libpq,
//! `PGSSLMODE` and `PGSSLROOTCERT` apply when the URL does not say. (libpq's `allow` tries the
//! clear first; here it is `prefer`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The stream of a connection, TLS or not (with `sslmode=disable` TLS is never started).
pub type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
/// A tokio-postgres connection as a [`Connector`] opens it.
pub type PgConnection = tokio_postgres::Connection<Socket, Stream>;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => bail!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            ),
        })
    }
}

/// Opens connections to one PostgreSQL database; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: SslMode,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("hosts", &self.config.get_hosts())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Reads a URL (`postgres://…?sslmode=verify-full&sslrootcert=/etc/ca.pem`) or a key=value
    /// string, and the CA file it names. Fails on a malformed URL, an unknown `sslmode`, or a
    /// verify mode without a readable CA file.
    pub fn new(database_url: &str) -> anyhow::Result<Self> {
        let (rest, mut tls) = split_tls_options(database_url);
        // As libpq: the environment fills in what the URL leaves out.
        tls.sslmode = tls.sslmode.or_else(|| std::env::var("PGSSLMODE").ok());
        tls.sslrootcert = tls
            .sslrootcert
            .or_else(|| std::env::var("PGSSLROOTCERT").ok());
        let mut config: tokio_postgres::Config = rest
            .parse()
            .context("the database URL is not a PostgreSQL URL")?;
        let mode = match tls.sslmode.as_deref() {
            Some(value) => SslMode::parse(value)?,
            None => SslMode::Prefer,
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let root = match tls.sslrootcert {
            Some(path) => Some(PathBuf::from(path)),
            None => default_root_cert().filter(|p| p.exists()),
        };
        let tls = MakeRustlsConnect::new(client_config(mode, root.as_deref())?);
        detect_dead_peers(&mut config);
        Ok(Self { config, tls, mode })
    }

    /// Bounds every statement of the connections this opens (PostgreSQL's `statement_timeout`,
    /// set at connection start), unless the URL's `options` set one already.
    pub fn statement_timeout(&mut self, timeout: std::time::Duration) -> &mut Self {
        let options = self.config.get_options().unwrap_or_default();
        if !options.contains("statement_timeout") && !timeout.is_zero() {
            let ours = format!("-c statement_timeout={}", timeout.as_millis());
            let joined = if options.is_empty() {
                ours
            } else {
                format!("{options} {ours}")
            };
            self.config.options(joined);
        }
        self
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connection settings, to adjust before connecting (application name, timeouts).
    pub fn config_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }

    /// Opens a connection; the caller drives it.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// Opens a connection and drives it on a task of its own until the client is dropped.
    pub async fn client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// Opens a diesel connection.
    pub async fn establish(&self) -> ConnectionResult<AsyncPgConnection> {
        let (client, connection) = self
            .connect()
            .await
            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

/// How long connecting may take, unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// TCP keepalive on an idle connection: the first probe after this long…
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// …then one every this long, and the connection is given up after this many unanswered.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
const KEEPALIVE_RETRIES: u32 = 3;
/// Data sent but not acknowledged for this long ends the connection (TCP_USER_TIMEOUT).
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A peer that stops answering without closing (a failover, a dropped route) is noticed within
/// about 11 s on an idle connection (keepalive) and 10 s on a busy one (TCP_USER_TIMEOUT), not
/// after the kernel's default of two hours or fifteen minutes; settings the URL gives win.
fn detect_dead_peers(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    // tokio-postgres's default idle time is libpq's, two hours.
    if config.get_keepalives_idle() == std::time::Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
}

/// `sslmode` and `sslrootcert`, which finmatch handles itself (tokio-postgres knows neither
/// the verify modes nor CA files).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes the TLS options out of a URL's query or a key=value string; the rest goes to
/// tokio-postgres unchanged.
fn split_tls_options(database_url: &str) -> (String, TlsOptions) {
    let mut tls = TlsOptions::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            tls.sslmode = Some(value);
            true
        }
        "sslrootcert" => {
            tls.sslrootcert = Some(value);
            true
        }
        _ => false,
    };
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let Some((base, query)) = database_url.split_once('?') else {
            return (database_url.to_owned(), tls);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned();
                !take(key, value)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, tls)
    } else {
        let kept: Vec<&str> = database_url
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key.trim(), value.trim_matches('\'').to_owned())
            })
            .collect();
        (kept.join(" "), tls)
    }
}

/// libpq's default CA file, `~/.postgresql/root.crt`.
fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".postgresql/root.crt"))
}

fn client_config(mode: SslMode, root: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match (mode, root) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => bail!(
            "sslmode=verify-ca and verify-full need sslrootcert, the PEM file of the CA that \
             signed the server's certificate (or ~/.postgresql/root.crt)"
        ),
        (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
            Some(Arc::new(load_roots(path)?))
        }
        _ => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots {
        None => Arc::new(Unchecked {
            algorithms: provider.signature_verification_algorithms,
        }),
        Some(roots) => {
            let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .context("building the certificate verifier")?;
            Arc::new(Checked {
                chain,
                check_name: mode == SslMode::VerifyFull,
            })
        }
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading sslrootcert {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("reading sslrootcert {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a certificate in sslrootcert {}", path.display()))?;
    }
    if roots.is_empty() {
        bail!("sslrootcert {} holds no certificate", path.display());
    }
    Ok(roots)
}

/// `require` and `prefer` without a CA: encrypted, the server's certificate not checked (the
/// server still proves it holds the certificate's key).
#[derive(Debug)]
struct Unchecked {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca` (the chain to the CA) and `verify-full` (the chain and the host name).
#[derive(Debug)]
struct Checked {
    chain: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_leave_the_url_and_the_rest_stays() {
        let (rest, tls) = split_tls_options(
            "postgres://app@db:5432/finmatch?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://app@db:5432/finmatch?application_name=x");
        assert_eq!(
            tls,
            TlsOptions {
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/ca.pem".into()),
            }
        );
        let (rest, tls) = split_tls_options("postgres://app@db/finmatch?sslmode=require");
        assert_eq!(rest, "postgres://app@db/finmatch");
        assert_eq!(tls.sslmode.as_deref(), Some("require"));
        let (rest, tls) = split_tls_options("host=db user=app sslmode=disable dbname=f");
        assert_eq!(rest, "host=db user=app dbname=f");
        assert_eq!(tls.sslmode.as_deref(), Some("disable"));
        let (rest, tls) = split_tls_options("postgres://app@db/finmatch");
        assert_eq!(
            (rest.as_str(), tls),
            ("postgres://app@db/finmatch", TlsOptions::default())
        );
    }

    #[test]
    fn modes_map_as_libpq_does_and_verify_modes_need_a_ca() {
        let mode = |url: &str| Connector::new(url).map(|c| (c.mode(), c.config.get_ssl_mode()));
        use tokio_postgres::config::SslMode as Wire;
        assert_eq!(
            mode("postgres://h/d").unwrap(),
            (SslMode::Prefer, Wire::Prefer)
        );
        assert_eq!(
            mode("postgres://h/d?sslmode=disable").unwrap(),
            (SslMode::Disable, Wire::Disable)
        );
        assert_eq!(
            mode("postgres://h/d?sslmode=require").unwrap(),
            (SslMode::Require, Wire::Require)
        );
        let error =
            mode("postgres://h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/ca.pem"),
            "{error:#}"
        );
        let error = mode("postgres://h/d?sslmode=sometimes").unwrap_err();
        assert!(format!("{error:#}").contains("verify-full"), "{error:#}");
    }

    #[test]
    fn dead_peers_are_noticed_in_seconds_unless_the_url_says_otherwise() {
        let c = Connector::new("postgres://h/d").unwrap();
        assert_eq!(c.config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(c.config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(c.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let c = Connector::new("postgres://h/d?keepalives_idle=60&connect_timeout=1").unwrap();
        assert_eq!(
            c.config.get_keepalives_idle(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            c.config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(1))
        );

        let mut c = Connector::new("postgres://h/d").unwrap();
        c.statement_timeout(std::time::Duration::from_secs(30));
        assert_eq!(c.config.get_options(), Some("-c statement_timeout=30000"));
        let mut c = Connector::new("postgres://h/d?options=-c%20statement_timeout%3D5s").unwrap();
        c.statement_timeout(std::time::Duration::from_secs(30));
        assert_eq!(c.config.get_options(), Some("-c statement_timeout=5s"));
    }
}
