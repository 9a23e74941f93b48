//! A throw-away PostgreSQL cluster for tests: initdb and pg_ctl from Debian's `postgresql`
//! in a temp dir on a free loopback port (run as `nobody` when the tests run as root), stopped
//! by Drop. Used by tests/postgres.rs and the reference deployment in tests/haproxy.rs.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{Fixture, have_program};

/// The failed-login delay in these tests: a `[SYS/TEMP]` must come back faster.
pub const FAILURE_DELAY_MS: u64 = 800;

/// The directory of `initdb` and `pg_ctl`: Debian keeps them out of PATH, under
/// /usr/lib/postgresql/<version>/bin. `None` (with the usual skip line, or a failure under
/// APOPD_REQUIRE_EXTERNAL) when PostgreSQL is not installed.
pub fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    if let Some(newest) = dirs.pop() {
        return Some(newest);
    }
    // Elsewhere they may be on PATH; have_program prints the skip line (or fails in CI).
    have_program("initdb", "postgresql").then(|| PathBuf::from(""))
}

/// A free loopback port (bound and released: a tiny race, fine for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A throw-away cluster; stopped (immediately) when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub port: u16,
    /// TLS on, and TCP clients must use it (`hostssl` only).
    pub tls: bool,
}

impl Cluster {
    /// initdb (trust auth, user `postgres`) and start on a free loopback port.
    pub fn start(bin: PathBuf) -> Cluster {
        let cluster = Cluster::init(bin, false);
        cluster.pg_start();
        cluster
    }

    /// Like `start`, with TLS from `server.pem`/`server.key` (a certificate for 127.0.0.1
    /// that `ca` signed, returned as PEM) and plaintext TCP refused by pg_hba.conf.
    pub fn start_tls(bin: PathBuf) -> (Cluster, String) {
        let cluster = Cluster::init(bin, true);
        let (ca_key, leaf_key) = (rcgen::KeyPair::generate().unwrap(), rcgen::KeyPair::generate().unwrap());
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &issuer);
        let data = cluster.dir.path().join("data");
        std::fs::write(data.join("server.pem"), leaf.unwrap().pem()).unwrap();
        std::fs::write(data.join("server.key"), leaf_key.serialize_pem()).unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n").unwrap();
        if let Some(nobody) = Cluster::nobody() {
            for file in ["server.pem", "server.key", "pg_hba.conf"] {
                nix::unistd::chown(&data.join(file), Some(nobody.uid), Some(nobody.gid)).unwrap();
            }
        }
        std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        cluster.pg_start();
        (cluster, ca.pem())
    }

    /// The account the cluster runs as when we are root (initdb refuses root).
    pub fn nobody() -> Option<nix::unistd::User> {
        nix::unistd::geteuid()
            .is_root()
            .then(|| nix::unistd::User::from_name("nobody").expect("getpwnam").expect("user nobody"))
    }

    pub fn init(bin: PathBuf, tls: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = Cluster { dir, bin, port: free_port(), tls };
        if let Some(nobody) = Cluster::nobody() {
            nix::unistd::chown(cluster.dir.path(), Some(nobody.uid), Some(nobody.gid)).expect("chown");
        }
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
        cluster
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run a PostgreSQL program (as nobody when we are root); panics with its output on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if Cluster::nobody().is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command.args(args).current_dir(self.dir.path()).stdin(Stdio::null()).output().expect(program);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn pg_start(&self) {
        let mut options =
            format!("-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off", self.dir.path().display(), self.port);
        if self.tls {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key");
        }
        let log = self.dir.path().join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", "30", "-o", &options, "start"]);
    }

    pub fn pg_stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A fixture whose config keeps the accounts in this cluster.
    pub fn fixture(&self, extra: &str) -> Fixture {
        Fixture::new(&format!(
            "auth_failure_delay_ms = {FAILURE_DELAY_MS}\nauth_failure_delay_max_ms = {FAILURE_DELAY_MS}\n{extra}\n[users]\nbackend = \"postgres\"\nurl = \"{}\"\ntimeout_ms = 1500\n",
            self.url()
        ))
    }

    /// Run SQL statements (the documented schema, test rows), over the Unix socket.
    pub async fn sql(&self, statements: &str) {
        let socket = format!("host={} port={} user=postgres dbname=postgres", self.dir.path().display(), self.port);
        let (client, connection) = tokio_postgres::connect(&socket, tokio_postgres::NoTls).await.expect("connect");
        let driver = tokio::spawn(connection);
        client.batch_execute(statements).await.expect("sql");
        drop(client);
        let _ = driver.await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut command = if Cluster::nobody().is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).stderr(Stdio::null()).output();
    }
}

/// The `CREATE TABLE` block of docs/scaling-postgres.md: the test proves the documented schema.
pub fn documented_schema() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/scaling-postgres.md")).expect("doc");
    let start = doc.find("```sql\n").expect("a ```sql block in docs/scaling-postgres.md") + "```sql\n".len();
    let end = doc[start..].find("```").expect("end of the sql block") + start;
    doc[start..end].to_owned()
}

/// An argon2id hash of `password`, as `apopd user add` stores it.
pub fn argon2(password: &str) -> String {
    apopd::auth::password::hash(password.as_bytes()).expect("hash")
}
