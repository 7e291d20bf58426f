//! The `finmatch` command line: serve, migrate, dev, credentials.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use finmatch::config::{DatabaseArgs, LogFormat, ServerArgs, Settings};
use finmatch::domain::Role;
use finmatch::server::{Application, shutdown_signal};
use finmatch::service::credentials::NewCredential;
use finmatch::service::{App, Error};
use finmatch::{devdb, storage, telemetry};
use uuid::Uuid;

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
    /// Everything a newcomer needs: find or start PostgreSQL, migrate, print a token and examples, serve.
    Dev {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Create or revoke credentials directly in the database (the bootstrap for the first operator).
    Credentials {
        #[command(subcommand)]
        action: CredentialsCommand,
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
                server,
            };
            let application = Application::build(settings).await?;
            application.run_until(shutdown).await
        }
        Command::Migrate { database } => {
            let url = required_url(&database)?;
            let applied = storage::run_migrations(&url).await?;
            eprintln!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::Dev { database, server } => dev(database, server, shutdown).await,
        Command::Credentials { action } => credentials(action).await,
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
    storage::run_migrations(&url).await?;
    Ok(App::new(storage::pool(&url, 2)?))
}

async fn credentials(action: CredentialsCommand) -> anyhow::Result<()> {
    match action {
        CredentialsCommand::Create {
            database,
            role,
            lender_id,
            label,
        } => {
            let app = offline_app(&database).await?;
            let issued = app
                .bootstrap_credential(NewCredential {
                    role: role.into(),
                    lender_id,
                    label,
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
        database_url,
        db_pool_size: database.db_pool_size,
        migrate: true,
        server,
    };
    let application = Application::build(settings).await?;
    let app = application.app().clone();
    let addr = application.local_addr();
    let operator = app
        .bootstrap_credential(NewCredential {
            role: Role::Operator,
            lender_id: None,
            label: format!(
                "dev operator {}",
                chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
            ),
        })
        .await
        .map_err(describe)?;
    if addr.port() == 0 {
        bail!("the listener has no port");
    }
    print_banner(&addr.to_string(), &operator.token);
    application.run_until(shutdown).await
}

fn print_banner(addr: &str, operator_token: &str) {
    println!(
        r#"
finmatch is serving on {addr} (gRPC and gRPC-Web; Ctrl-C stops it).

Operator token (also: export it for the examples below):
  export TOKEN={operator_token}

Try it with grpcurl (no .proto files needed, the server has reflection):
  grpcurl -plaintext {addr} list
  grpcurl -plaintext {addr} grpc.health.v1.Health/Check
  grpcurl -plaintext {addr} describe finmatch.v1.Enterprise
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"name":"Suizhou Rural Commercial Bank","kind":"LENDER_KIND_RURAL","region_codes":["421300"]}}' {addr} finmatch.v1.LenderService/CreateLender
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" {addr} finmatch.v1.LenderService/ListLenders
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"page_size":10}}' {addr} finmatch.v1.EnterpriseService/ListEnterprises
"#
    );
}
