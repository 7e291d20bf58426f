//! A PostgreSQL cluster of a test's own, under a temporary directory, from the machine's server
//! binaries (as the `postgres` OS user when the tests run as root): plain or TLS-only, stopped
//! and started by the test.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use finmatch::devdb::{self, ServerUrl};
use rcgen::DnType;
use uuid::Uuid;

use crate::helpers::unused_port;
use crate::pki::{authority, leaf};

/// A PostgreSQL cluster of its own, stopped and deleted on drop.
pub struct PrivateCluster {
    dir: PathBuf,
    bin: PathBuf,
    as_root: bool,
    port: u16,
    tls: bool,
}

impl PrivateCluster {
    /// A cluster that takes TLS connections only, with a certificate for `localhost` signed by
    /// [`PrivateCluster::ca`].
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    /// A cluster that takes plain connections (trust).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    fn start_with(tls: bool) -> Self {
        let bin = devdb::postgres_bindir()
            .expect("the PostgreSQL server binaries (initdb, pg_ctl) for a TLS cluster");
        let as_root = devdb::is_root();
        let dir = std::env::temp_dir().join(format!("fm-tls-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = Self {
            dir,
            bin,
            as_root,
            port: unused_port(),
            tls,
        };
        cluster.write_certificates();
        cluster.chown();
        cluster.pg("initdb", |c| {
            c.arg("-D")
                .arg(cluster.data())
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        });
        let hba = if tls {
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl all all ::/0 reject\n"
        } else {
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n"
        };
        std::fs::write(cluster.data().join("pg_hba.conf"), hba).unwrap();
        cluster.chown();
        cluster.start_again();
        cluster
    }

    /// Starts the (stopped) cluster, waiting until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=localhost -k {}",
            self.port,
            self.dir.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                self.dir.join("server.crt").display(),
                self.dir.join("server.key").display(),
            ));
        }
        self.pg("pg_ctl", |c| {
            c.arg("-D")
                .arg(self.data())
                .args(["-o", &options, "-l"])
                .arg(self.dir.join("server.log"))
                .args(["-w", "start"]);
        });
    }

    /// Stops the cluster at once (`immediate`: as a crash or a failover looks to a client).
    pub fn stop(&self) {
        self.pg("pg_ctl", |c| {
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
        });
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The CA that signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing of this server's.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server at `host` with URL `options`, e.g. `sslmode=require`.
    pub fn server(&self, host: &str, options: &str) -> ServerUrl {
        ServerUrl::new(format!(
            "postgres://postgres@{host}:{}/?{options}",
            self.port
        ))
    }

    /// A CA, a certificate for `localhost` only (no IP address) signed by it, its key, and an
    /// unrelated CA.
    fn write_certificates(&self) {
        let (ca, issuer) = authority("finmatch test CA");
        let (other, _) = authority("somebody else's CA");
        let (server, key) = leaf(
            &issuer,
            &[(DnType::CommonName, "localhost")],
            vec!["localhost".to_owned()],
        );
        std::fs::write(self.ca(), ca).unwrap();
        std::fs::write(self.other_ca(), other).unwrap();
        std::fs::write(self.dir.join("server.crt"), server).unwrap();
        let key_file = self.dir.join("server.key");
        std::fs::write(&key_file, key).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn chown(&self) {
        if self.as_root {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    fn pg(&self, program: &str, args: impl FnOnce(&mut std::process::Command)) {
        let mut command = devdb::pg_command(&self.bin.join(program), self.as_root);
        args(&mut command);
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let mut stop = devdb::pg_command(&self.bin.join("pg_ctl"), self.as_root);
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"]);
        let _ = stop.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
