//! The `finmatch` command line: serve, migrate, dev, seed-demo, health, credentials, import,
//! bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use finmatch::client::{self, ServerAddress};
use finmatch::config::{DatabaseArgs, LogFormat, ServerArgs, Settings};
use finmatch::domain::{Role, format_cny};
use finmatch::server::{Application, shutdown_signal};
use finmatch::service::credentials::NewCredential;
use finmatch::service::reporting::SummaryQuery;
use finmatch::service::{App, Error};
use finmatch::{devdb, storage, telemetry};
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

/// mimalloc instead of glibc's malloc: under load the server allocates per call (requests,
/// responses, score notes) from several threads, and glibc's arenas cost a tenth of its time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "finmatch",
    version,
    about = "Matches enterprises' financing needs to partner banks' loan products"
)]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(
        long,
        env = "FINMATCH_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC and gRPC-Web against FINMATCH_DATABASE_URL.
    Serve {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        server: ServerArgs,
        /// Do not apply pending migrations at start-up.
        #[arg(long)]
        no_migrate: bool,
    },
    /// Apply pending migrations and exit.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Load the demo data set (spring 2020 in Suizhou: 9 banks, 196 enterprises, the special
    /// re-lending program and the banks' answers) into FINMATCH_DATABASE_URL; idempotent. Its
    /// needs are routed by the default routing policy, whatever the servers use.
    SeedDemo {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Everything a newcomer needs: find or start PostgreSQL, migrate, load the demo data set,
    /// print operator and bank tokens and examples, serve.
    Dev {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Ask a running server whether it serves: prints SERVING and exits 0, or says what is not
    /// serving and exits 1. Asks about the server as a whole ("") and every finmatch service,
    /// all NOT_SERVING while PostgreSQL is unreachable or the server shuts down, unless
    /// --service names one. The container image's health probe.
    Health {
        #[command(flatten)]
        address: ServerAddress,
        /// One service to ask about, e.g. finmatch.v1.PartnerService, or "" for the server.
        #[arg(long)]
        service: Option<String>,
        /// How long to wait for the answers.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Create or revoke credentials directly in the database (the bootstrap for the first operator).
    Credentials {
        #[command(subcommand)]
        action: CredentialsCommand,
    },
    /// Check the audit log against its hash chain (see README, "The audit trail").
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Stream financing needs from a CSV file through ImportNeeds (see README, "Importing needs").
    Import {
        /// The CSV file; the report is written beside it as FILE.import-report.csv.
        file: PathBuf,
        /// The finmatch server's URL.
        #[arg(
            long,
            env = "FINMATCH_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// An OPERATOR or PORTAL token.
        #[arg(long, env = "FINMATCH_TOKEN", hide_env_values = true)]
        token: String,
        /// ImportNeeds calls in flight at once (1 to 8); each carries the rows of its own
        /// enterprises, so an enterprise's rows are still stored in file order.
        #[arg(long, default_value_t = finmatch::import::Options::default().calls_in_flight)]
        calls_in_flight: usize,
    },
    /// The load tool: seed a catalogue, then run a scenario against a server (see README,
    /// "Benchmarks").
    Bench {
        #[command(subcommand)]
        command: finmatch::bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the chain from the rows as they are: prints the head and exits 0 when every
    /// sealed row is as sealed; names each row changed, removed or inserted out of order and
    /// exits 1 otherwise.
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
        /// A head logged earlier, as ROW:HASH (`sealed_through` and `head` of an `audit chain
        /// sealed` log line): the chain must still pass through it, which a chain rewritten
        /// from an earlier row does not.
        #[arg(long, value_name = "ROW:HASH")]
        head: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Print a new token, alone, on stdout.
    Create {
        #[command(flatten)]
        database: DatabaseArgs,
        /// What the credential may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The lender a `lender` credential acts for.
        #[arg(long)]
        lender_id: Option<Uuid>,
        /// Who or what holds it, e.g. "ops-alice" or "icbc-gateway".
        #[arg(long)]
        label: String,
        /// Accept its calls only over mutual TLS with the client certificate of this subject
        /// (RFC 4514, e.g. "CN=gateway,O=ICBC").
        #[arg(long)]
        certificate_subject: Option<String>,
    },
    /// Revoke a credential at once.
    Revoke {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The credential id printed when it was issued.
        id: Uuid,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Operator,
    Portal,
    Lender,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Operator => Role::Operator,
            RoleArg::Portal => Role::Portal,
            RoleArg::Lender => Role::Lender,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    // Installed before anything else, so SIGTERM during start-up also shuts down cleanly.
    let shutdown = shutdown_signal();
    match run(cli.command, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            database,
            server,
            no_migrate,
        } => {
            let settings = Settings {
                database_url: required_url(&database)?,
                db_pool_size: database.db_pool_size,
                migrate: !no_migrate,
                db_connect_patience: database.connect_patience(),
                server,
            };
            let mut shutdown = std::pin::pin!(shutdown);
            // A SIGTERM while start-up waits for PostgreSQL ends it cleanly, as it would later.
            let application = tokio::select! {
                built = Application::build(settings) => built?,
                () = &mut shutdown => {
                    tracing::info!("stopped before PostgreSQL was ready");
                    return Ok(());
                }
            };
            application.run_until(shutdown).await
        }
        Command::Migrate { database } => {
            let url = required_url(&database)?;
            let applied =
                storage::run_migrations_patiently(&url, database.connect_patience()).await?;
            eprintln!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::Health {
            address,
            service,
            timeout_secs,
        } => health(&address, service.as_deref(), timeout_secs).await,
        Command::SeedDemo { database } => {
            let url = required_url(&database)?;
            storage::run_migrations_patiently(&url, database.connect_patience()).await?;
            let loaded = tokio::select! {
                loaded = seed_demo(&url) => loaded?,
                () = shutdown => bail!("interrupted; load again to go on where it stopped"),
            };
            println!("{}", loaded.summary());
            Ok(())
        }
        Command::Dev { database, server } => dev(database, server, shutdown).await,
        Command::Credentials { action } => credentials(action).await,
        Command::Audit {
            action: AuditCommand::Verify { database, head },
        } => {
            let app = offline_app(&database).await?;
            let mut verdict = app.verify_audit().await.map_err(describe)?;
            for kept in &head {
                let Some((row, hash)) = kept
                    .split_once(':')
                    .and_then(|(row, hash)| Some((row.parse::<i64>().ok()?, hash)))
                else {
                    bail!("--head {kept:?} is not ROW:HASH, e.g. 1200:3f9a…");
                };
                match app.audit_seal(row).await.map_err(describe)? {
                    Some(sealed) if sealed.eq_ignore_ascii_case(hash) => {}
                    Some(_) => verdict.problems.push(format!(
                        "the chain no longer passes through the head kept for row {row}: \
                         the seals were rewritten"
                    )),
                    None => verdict
                        .problems
                        .push(format!("row {row} of a kept head is not sealed any more")),
                }
            }
            for problem in &verdict.problems {
                eprintln!("{problem}");
            }
            if !verdict.problems.is_empty() {
                bail!(
                    "the audit log does not match its hash chain: {} problem(s)",
                    verdict.problems.len()
                );
            }
            match verdict.head {
                Some((through, head)) => println!(
                    "audit log intact: {} rows sealed, through row {through}, head {head}",
                    verdict.sealed
                ),
                None => println!("audit log intact: nothing sealed yet"),
            }
            Ok(())
        }
        Command::Import {
            file,
            server,
            token,
            calls_in_flight,
        } => {
            let options = finmatch::import::Options {
                calls_in_flight,
                ..Default::default()
            };
            let report =
                finmatch::import::run_with(&file, &server, &token, &options, shutdown).await?;
            println!("{}", report.summary(&finmatch::import::report_path(&file)));
            Ok(())
        }
        Command::Bench { command } => {
            tokio::select! {
                done = finmatch::bench::run(command) => done.map(|_| ()),
                () = shutdown => bail!("interrupted"),
            }
        }
    }
}

fn required_url(database: &DatabaseArgs) -> anyhow::Result<String> {
    database.database_url.clone().context(
        "set FINMATCH_DATABASE_URL (or --database-url), e.g. postgres://postgres@127.0.0.1:5432/finmatch",
    )
}

/// An [`App`] on a migrated database, for the commands that act without a server.
async fn offline_app(database: &DatabaseArgs) -> anyhow::Result<App> {
    let url = required_url(database)?;
    storage::run_migrations_patiently(&url, database.connect_patience()).await?;
    Ok(App::new(storage::pool(
        &url,
        2,
        storage::STATEMENT_TIMEOUT,
    )?))
}

/// `finmatch health`: SERVING on stdout and success, or what is not serving and failure.
async fn health(
    address: &ServerAddress,
    service: Option<&str>,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let services: Vec<&str> = match service {
        Some(service) => vec![service],
        None => std::iter::once("")
            .chain(finmatch::grpc::SERVICE_NAMES)
            .collect(),
    };
    let answers =
        client::health(address, &services, Duration::from_secs(timeout_secs.max(1))).await?;
    let not_serving: Vec<String> = services
        .iter()
        .zip(&answers)
        .filter(|(_, status)| **status != ServingStatus::Serving)
        .map(|(service, status)| match *service {
            "" => format!("the server is {}", status.as_str_name()),
            service => format!("{service} is {}", status.as_str_name()),
        })
        .collect();
    if !not_serving.is_empty() {
        bail!("{}: {}", address.server, not_serving.join(", "));
    }
    println!("SERVING");
    Ok(())
}

async fn credentials(action: CredentialsCommand) -> anyhow::Result<()> {
    match action {
        CredentialsCommand::Create {
            database,
            role,
            lender_id,
            label,
            certificate_subject,
        } => {
            let app = offline_app(&database).await?;
            let issued = app
                .bootstrap_credential(NewCredential {
                    role: role.into(),
                    lender_id,
                    label,
                    expires_at: None,
                    certificate_subject,
                })
                .await
                .map_err(describe)?;
            eprintln!("credential {} issued", issued.credential.id);
            println!("{}", issued.token);
            Ok(())
        }
        CredentialsCommand::Revoke { database, id } => {
            let app = offline_app(&database).await?;
            app.revoke_credential_as_system(id)
                .await
                .map_err(describe)?;
            eprintln!("credential {id} revoked");
            Ok(())
        }
    }
}

/// Turns a use-case error into a message for a person at a terminal.
fn describe(error: Error) -> anyhow::Error {
    match error {
        Error::InvalidArgument(violations) => anyhow::anyhow!("{violations}"),
        other => anyhow::anyhow!("{other}"),
    }
}

async fn dev(
    database: DatabaseArgs,
    server: ServerArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let server_url = devdb::find_or_start_server(database.database_url.as_deref()).await?;
    let database_url = if database.database_url.is_some() {
        database.database_url.clone().unwrap_or_default()
    } else {
        devdb::ensure_database(&server_url, "finmatch").await?
    };
    eprintln!("PostgreSQL: {}", devdb::redact(&database_url));
    let settings = Settings {
        database_url: database_url.clone(),
        db_pool_size: database.db_pool_size,
        migrate: true,
        db_connect_patience: database.connect_patience(),
        server,
    };
    // Built (and migrated) first, so a taken port fails at once; it serves once the demo is in.
    let application = Application::build(settings).await?;
    let app = application.app().clone();
    let addr = application.local_addr();
    if addr.port() == 0 {
        bail!("the listener has no port");
    }
    eprintln!("loading the demo data set (the first time takes a little while)…");
    tokio::pin!(shutdown);
    let loaded = tokio::select! {
        loaded = seed_demo(&database_url) => loaded.context(
            "loading the demo data set; a database with other data may need a fresh one \
             (drop the database `finmatch`, or set FINMATCH_DATABASE_URL)",
        )?,
        () = &mut shutdown => return Ok(()),
    };
    eprintln!("{}", loaded.summary());
    // The tokens an earlier start printed go: each start's are the only ones `dev` leaves valid.
    let revoked = app
        .revoke_labelled_as_system(DEV_LABEL)
        .await
        .map_err(describe)?;
    if revoked > 0 {
        tracing::info!(
            revoked,
            "revoked the tokens of the previous `finmatch dev` start"
        );
    }
    let started = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
    let operator = app
        .bootstrap_credential(NewCredential {
            role: Role::Operator,
            lender_id: None,
            label: format!("{DEV_LABEL}operator, {started}"),
            expires_at: None,
            certificate_subject: None,
        })
        .await
        .map_err(describe)?;
    let mut banks = Vec::new();
    for (bank, lender_id) in &loaded.lenders {
        let issued = app
            .bootstrap_credential(NewCredential {
                role: Role::Lender,
                lender_id: Some(*lender_id),
                label: format!("{DEV_LABEL}{}, {started}", bank.short),
                expires_at: None,
                certificate_subject: None,
            })
            .await
            .map_err(describe)?;
        banks.push((bank.short, bank.name, issued.token));
    }
    let reader = app.authenticate(&operator.token).await.map_err(describe)?;
    let summary = app
        .get_summary(&reader, SummaryQuery::everything())
        .await
        .map_err(describe)?;
    let banner = Banner {
        addr: addr.to_string(),
        operator_token: &operator.token,
        banks: &banks,
        summary: &summary,
        revoked,
    };
    println!("{banner}");
    application.run_until(shutdown).await
}

/// Loads the demo data set into the (migrated) database at `url`, routing by the default policy
/// so that every load plays the same round.
async fn seed_demo(url: &str) -> anyhow::Result<finmatch::demo::Loaded> {
    let app = App::new(storage::pool(url, 4, storage::STATEMENT_TIMEOUT)?);
    finmatch::demo::load(&app).await
}

/// Label prefix of the credentials `finmatch dev` issues; the next start revokes them.
const DEV_LABEL: &str = "finmatch dev: ";

/// What `finmatch dev` prints once it serves: the tokens, and the data set's figures as the
/// database has them.
struct Banner<'a> {
    addr: String,
    operator_token: &'a str,
    banks: &'a [(&'a str, &'a str, String)],
    summary: &'a finmatch::service::reporting::Summary,
    /// Tokens of the previous start revoked now.
    revoked: usize,
}

impl std::fmt::Display for Banner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Banner {
            addr,
            operator_token,
            banks,
            summary,
            revoked,
        } = self;
        let totals = &summary.totals;
        let special: Vec<String> = summary
            .by_program
            .iter()
            .map(|p| {
                format!(
                    "{}: {} enterprise(s), {} allocated",
                    p.code,
                    p.enterprises,
                    format_cny(p.allocated_minor)
                )
            })
            .collect();
        writeln!(f)?;
        writeln!(
            f,
            "finmatch is serving on {addr} (gRPC and gRPC-Web; Ctrl-C stops it). In the database:"
        )?;
        writeln!(
            f,
            "  {} bank(s), {} enterprise(s) with {} need(s), {} of demand; {} funded, {} disbursed",
            summary.by_lender.len(),
            totals.enterprises,
            totals.needs,
            format_cny(totals.demand_minor),
            totals.funded_needs,
            format_cny(totals.disbursed_minor)
        )?;
        if !special.is_empty() {
            writeln!(f, "  {}", special.join("; "))?;
        }
        writeln!(
            f,
            "  (response times of the demo round are not meaningful: it is played in seconds at load)"
        )?;
        writeln!(
            f,
            "Web console: http://{addr}/ (sign in by pasting a token below)"
        )?;
        writeln!(f)?;
        match revoked {
            0 => writeln!(f, "New tokens for this start:")?,
            n => writeln!(
                f,
                "New tokens for this start (the {n} of the previous start are revoked):"
            )?,
        }
        writeln!(
            f,
            "Operator token (export it for the examples below and the README's operator's guide):"
        )?;
        writeln!(f, "  export TOKEN={operator_token}")?;
        writeln!(f, "Bank tokens (a bank sees only its own referrals):")?;
        for (short, name, token) in banks.iter() {
            writeln!(f, "  export BANK_{short}={token}   # {name}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "Try it with grpcurl (no .proto files needed, the server has reflection):"
        )?;
        let auth = r#"-H "authorization: Bearer $TOKEN""#;
        writeln!(f, "  grpcurl -plaintext {addr} list")?;
        writeln!(
            f,
            "  grpcurl -plaintext {auth} -d '{{}}' {addr} finmatch.v1.ReportingService/GetSummary"
        )?;
        writeln!(
            f,
            "  grpcurl -plaintext {auth} -d '{{\"page_size\":20}}' {addr} finmatch.v1.LenderService/ListLenders"
        )?;
        writeln!(
            f,
            "  grpcurl -plaintext {auth} -d '{{\"list_code\":\"NATIONAL_KEY_SUPPLY\",\"page_size\":50}}' {addr} finmatch.v1.EnterpriseService/ListEnterprises"
        )?;
        write!(
            f,
            "  grpcurl -plaintext -H \"authorization: Bearer $BANK_ICBC\" -d '{{\"page_size\":5}}' {addr} finmatch.v1.PartnerService/ListReferrals"
        )
    }
}
