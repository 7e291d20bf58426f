//! Finding a PostgreSQL server for `finmatch dev` and the test suite.
//!
//! Order of preference (DESIGN §5): an explicit URL; else a PostgreSQL on
//! localhost:5432 that lets `postgres` in without a password; else a private
//! cluster under `./.finmatch/pg`, created and started from the machine's own
//! PostgreSQL binaries (as the `postgres` OS user when we run as root, because
//! PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::storage::connect::Connector;

/// The server a newcomer's machine most likely has.
pub const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432";
/// Port of the private cluster, chosen away from the default so both can coexist.
const PRIVATE_PORT: u16 = 54329;

/// A PostgreSQL server URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
#[derive(Debug, Clone)]
pub struct ServerUrl(String);

impl ServerUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into().trim_end_matches('/').to_owned())
    }

    /// The URL of database `name` on this server, keeping its options
    /// (`postgres://h?sslmode=require` → `postgres://h/name?sslmode=require`).
    pub fn database(&self, name: &str) -> String {
        match self.0.split_once('?') {
            Some((server, options)) => {
                format!("{}/{name}?{options}", server.trim_end_matches('/'))
            }
            None => format!("{}/{name}", self.0),
        }
    }
}

/// Returns a reachable server: `explicit` if given, else localhost:5432, else a private cluster.
pub async fn find_or_start_server(explicit: Option<&str>) -> anyhow::Result<ServerUrl> {
    if let Some(url) = explicit {
        return Ok(ServerUrl::new(url));
    }
    let local = ServerUrl::new(LOCAL_SERVER_URL);
    if answers(&local.database("postgres")).await {
        return Ok(local);
    }
    let dir = std::env::current_dir()?.join(".finmatch").join("pg");
    start_private_cluster(&dir)?;
    let private = ServerUrl::new(format!("postgres://postgres@127.0.0.1:{PRIVATE_PORT}"));
    for _ in 0..50 {
        if answers(&private.database("postgres")).await {
            return Ok(private);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the private PostgreSQL cluster in {} did not answer",
        dir.display()
    )
}

/// True when `url` accepts a connection within two seconds.
pub async fn answers(url: &str) -> bool {
    let Ok(connector) = Connector::new(url) else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(2), connector.connect()).await {
        Ok(Ok((client, connection))) => {
            drop(client);
            drop(connection);
            true
        }
        _ => false,
    }
}

/// Runs one statement on `url` (used for CREATE/DROP DATABASE, which diesel cannot run in a transaction).
pub async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    let (client, connection) = Connector::new(url)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    let driver = tokio::spawn(connection);
    client.batch_execute(sql).await?;
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Creates database `name` on `server` unless it exists.
pub async fn ensure_database(server: &ServerUrl, name: &str) -> anyhow::Result<String> {
    let admin = server.database("postgres");
    let (client, connection) = Connector::new(&admin)?.connect().await?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // A concurrent creator may win the race; that is fine.
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
        {
            return Err(e.into());
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(server.database(name))
}

/// Hides a password in a URL before it is logged.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn start_private_cluster(dir: &Path) -> anyhow::Result<()> {
    let bin = postgres_bindir().context(
        "no PostgreSQL answers on 127.0.0.1:5432 and no PostgreSQL binaries (initdb, pg_ctl) were found; \
         install PostgreSQL or set FINMATCH_DATABASE_URL",
    )?;
    let as_root = is_root();
    std::fs::create_dir_all(dir)?;
    if as_root {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir))?;
    }
    if !dir.join("PG_VERSION").exists() {
        tracing::info!(dir = %dir.display(), "creating a private PostgreSQL cluster");
        let mut initdb = pg_command(&bin.join("initdb"), as_root);
        initdb
            .arg("-D")
            .arg(dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run(&mut initdb)?;
    }
    let status = pg_command(&bin.join("pg_ctl"), as_root)
        .arg("-D")
        .arg(dir)
        .arg("status")
        .output()?;
    if !status.status.success() {
        tracing::info!(
            port = PRIVATE_PORT,
            "starting the private PostgreSQL cluster"
        );
        let options = format!(
            "-p {PRIVATE_PORT} -c listen_addresses=127.0.0.1 -k {}",
            dir.display()
        );
        let mut start = pg_command(&bin.join("pg_ctl"), as_root);
        start
            .arg("-D")
            .arg(dir)
            .args(["-o", &options, "-l"])
            .arg(dir.join("server.log"))
            .args(["-w", "start"]);
        run(&mut start)?;
    }
    Ok(())
}

/// A command running PostgreSQL's `program`, as the `postgres` OS user when `as_root` (PostgreSQL
/// refuses to run as root).
pub fn pg_command(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// The newest PostgreSQL binaries directory: `pg_config --bindir`, else `/usr/lib/postgresql/<v>/bin`.
pub fn postgres_bindir() -> Option<PathBuf> {
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/finmatch"),
            "postgres://app:***@db:5432/finmatch"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
    }

    #[test]
    fn server_url_appends_the_database() {
        assert_eq!(
            ServerUrl::new("postgres://postgres@h:1/").database("db"),
            "postgres://postgres@h:1/db"
        );
        assert_eq!(
            ServerUrl::new("postgres://postgres@h:1/?sslmode=verify-full&sslrootcert=/ca.pem")
                .database("db"),
            "postgres://postgres@h:1/db?sslmode=verify-full&sslrootcert=/ca.pem"
        );
    }
}
