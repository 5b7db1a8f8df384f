//! A real PostgreSQL for tests (Debian's `postgresql`, which `scripts/setup.sh --test`
//! installs): one server for the whole test run, shared by every test process, each test
//! with a database of its own ([`Server::database`]).
//!
//! The first test process to need it starts it, under a lock, in
//! `$TMPDIR/outpost-test-postgres-<uid>/`: a fresh cluster owned by the `postgres` user when
//! the tests run as root (PostgreSQL refuses root), listening on a loopback port with TLS
//! (a CA and server certificate made for it) and password authentication. Later processes
//! find it running and use it. `scripts/test.sh` stops it when the run ends; a stale one
//! (its port no longer answers) is replaced.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where a test's service keeps its data: the tests of a store run on both
/// ([`on_both_backends!`](crate::on_both_backends)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `[<section>.storage]` for this backend: a new database of the shared server for
    /// PostgreSQL, the default (the service's SQLite database) otherwise.
    pub fn storage(self) -> outpost_kit::pg::StorageConfig {
        match self {
            Self::Sqlite => outpost_kit::pg::StorageConfig::default(),
            Self::Postgres => server().database().storage(),
        }
    }
}

/// A values key (256 random bits, hex, mode 0600) in `dir`, for instances that share one
/// database: each is given it as `storage.key_file`.
pub fn values_key_file(dir: &Path) -> PathBuf {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).expect("randomness");
    let path = dir.join("values.key");
    std::fs::write(&path, hex::encode(key)).expect("write the values key");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod the values key");
    path
}

/// Runs each named test twice, as `on_sqlite::NAME` and `on_postgres::NAME`: one test
/// matrix for a store's two backends. Each test is an `async fn NAME(Backend)`, or, with
/// `fixture = F;` first, an `async fn NAME(X)` given `F(Backend).await`.
#[macro_export]
macro_rules! on_both_backends {
    (fixture = $fixture:ident; $($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::$fixture($crate::postgres::Backend::Sqlite).await).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::$fixture($crate::postgres::Backend::Postgres).await)
                        .await
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::postgres::Backend::Sqlite).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::postgres::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The password of the servers' `postgres` user (a throwaway cluster on loopback).
const PASSWORD: &str = "outpost-test";

/// The shared server.
#[derive(Debug, Clone)]
pub struct Server {
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A file holding the password.
    pub password_file: PathBuf,
    dir: PathBuf,
}

/// A database of one test.
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:<port>/<name>` (the password is in the password file).
    pub url: String,
    pub ca: PathBuf,
    pub password_file: PathBuf,
}

impl Database {
    /// core-data's (or any service's) `[…storage]` section for this database, TLS on.
    pub fn storage_toml(&self, section: &str) -> String {
        self.table_toml(&format!("{section}.storage"))
    }

    /// This database as the TOML table `table` (a [`outpost_kit::pg::StorageConfig`]
    /// anywhere in the configuration: `export.standby`).
    pub fn table_toml(&self, table: &str) -> String {
        format!(
            "[{table}]\nbackend = \"postgres\"\nurl = \"{}\"\npassword_file = \"{}\"\n\
             ca = \"{}\"\n",
            self.url,
            self.password_file.display(),
            self.ca.display()
        )
    }

    /// The same as `--set` settings of `section`'s storage.
    pub fn settings(&self, section: &str) -> Vec<String> {
        vec![
            format!("{section}.storage.backend=\"postgres\""),
            format!("{section}.storage.url=\"{}\"", self.url),
            format!(
                "{section}.storage.password_file=\"{}\"",
                self.password_file.display()
            ),
            format!("{section}.storage.ca=\"{}\"", self.ca.display()),
        ]
    }

    /// The same as a configuration value.
    pub fn storage(&self) -> outpost_kit::pg::StorageConfig {
        outpost_kit::pg::StorageConfig {
            backend: outpost_kit::pg::Backend::Postgres,
            url: self.url.clone(),
            password_file: Some(self.password_file.clone()),
            tls: true,
            ca: Some(self.ca.clone()),
            ..outpost_kit::pg::StorageConfig::default()
        }
    }
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// Where the shared server lives.
pub fn dir() -> PathBuf {
    std::env::temp_dir().join(format!("outpost-test-postgres-{}", uid()))
}

/// The newest installed PostgreSQL's programs.
fn bin(program: &str) -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    let dir = versions.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (/usr/lib/postgresql): run scripts/setup.sh --test")
    });
    dir.join(program)
}

/// `program args` as the cluster's owner: `postgres` when running as root.
fn as_owner(program: &Path) -> Command {
    if uid() == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// The shared server, started if none runs.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start_or_find)
}

fn start_or_find() -> Server {
    let dir = dir();
    std::fs::create_dir_all(&dir).expect("postgres dir");
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .expect("lock file");
    lock.lock().expect("lock");
    let server = Server {
        port: 0,
        ca: dir.join("tls/ca.pem"),
        password_file: dir.join("password"),
        dir: dir.clone(),
    };
    if let Some(port) = std::fs::read_to_string(dir.join("port"))
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| answers(*p))
    {
        return Server { port, ..server };
    }
    fresh(server)
}

/// A server of its own for a test that stops or kills it; stopped when dropped.
pub struct Private {
    pub server: Server,
    _dir: tempfile::TempDir,
}

impl Private {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let server = fresh(Server {
            port: 0,
            ca: dir.path().join("tls/ca.pem"),
            password_file: dir.path().join("password"),
            dir: dir.path().to_path_buf(),
        });
        Self { server, _dir: dir }
    }
}

impl std::ops::Deref for Private {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        let _ = as_owner(&bin("pg_ctl"))
            .arg("-D")
            .arg(self.server.data_dir())
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

/// Makes a cluster in `server.dir` and starts it on a free port.
fn fresh(server: Server) -> Server {
    let dir = server.dir.clone();
    let data = dir.join("data");
    let _ = as_owner(&bin("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .args(["stop", "-m", "immediate"])
        .output();
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(dir.join("tls"));
    let _ = std::fs::remove_dir_all(dir.join("secrets"));
    std::fs::write(&server.password_file, PASSWORD).expect("password file");
    let _ = std::fs::set_permissions(
        &server.password_file,
        std::fs::Permissions::from_mode(0o644),
    );
    let owner_dir = |p: &Path| {
        std::fs::create_dir_all(p).expect("dir");
        if uid() == 0 {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(p);
                    c
                },
                "chown",
            );
        }
    };
    owner_dir(&data);
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, PASSWORD).expect("pwfile");
    let _ = std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644));
    run(
        {
            let mut c = as_owner(&bin("initdb"));
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "scram-sha-256", "--no-sync"])
                .arg(format!("--pwfile={}", pwfile.display()));
            c
        },
        "initdb",
    );
    // The server's certificate, from a CA of its own.
    let paths = outpost_pki::Paths::new(&dir);
    outpost_pki::ensure_server_cert(&paths, &["127.0.0.1".into(), "localhost".into()])
        .expect("server certificate");
    std::fs::copy(&paths.cert, data.join("server.crt")).expect("server.crt");
    std::fs::copy(&paths.key, data.join("server.key")).expect("server.key");
    assert_eq!(paths.ca_cert, server.ca, "the CA is where the server says");
    let _ = std::fs::set_permissions(dir.join("tls"), std::fs::Permissions::from_mode(0o755));
    let _ = std::fs::set_permissions(&server.ca, std::fs::Permissions::from_mode(0o644));
    let _ = std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    );
    if uid() == 0 {
        for f in ["server.crt", "server.key"] {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(data.join(f));
                    c
                },
                "chown",
            );
        }
    }
    let sock = dir.join("sock");
    owner_dir(&sock);
    let port = crate::free_port();
    let conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
         ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
         max_connections = 300\nshared_buffers = 64MB\n",
        sock.display()
    );
    let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
    text.push_str(&conf);
    // Read-only for the test user when the owner is postgres: written through a temp file.
    let tmp = dir.join("postgresql.conf.new");
    std::fs::write(&tmp, text).expect("conf");
    run(
        {
            let mut c = as_owner(Path::new("cp"));
            c.arg(&tmp).arg(data.join("postgresql.conf"));
            c
        },
        "postgresql.conf",
    );
    let hba = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    let tmp = dir.join("pg_hba.conf.new");
    std::fs::write(&tmp, hba).expect("hba");
    run(
        {
            let mut c = as_owner(Path::new("cp"));
            c.arg(&tmp).arg(data.join("pg_hba.conf"));
            c
        },
        "pg_hba.conf",
    );
    run(
        {
            let mut c = as_owner(&bin("pg_ctl"));
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("sock/log"))
                .args(["-w", "-t", "60", "start"]);
            c
        },
        "pg_ctl start",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(port) {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(dir.join("port"), port.to_string()).expect("port file");
    Server { port, ..server }
}

impl Server {
    /// A new, empty database for one test.
    pub fn database(&self) -> Database {
        let name = format!("t_{}", uuid_hex());
        self.psql(&format!("CREATE DATABASE {name}"));
        Database {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", self.port),
            name,
            ca: self.ca.clone(),
            password_file: self.password_file.clone(),
        }
    }

    /// Runs `sql` as the superuser over the server's socket; its output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs `sql` in `database` as the superuser; its output.
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let out = as_owner(&bin("psql"))
            .arg("-h")
            .arg(self.dir.join("sock"))
            .args([
                "-p", &port, "-U", "postgres", "-d", database, "-tA", "-c", sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server with SIGKILL, its postmaster and every process it started at
    /// once, as a crash of the machine's database would, and waits until they are gone.
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
            .expect("the postmaster's pid");
        let mut pids = children_of(pid);
        pids.push(pid);
        let args: Vec<String> = pids.iter().map(u32::to_string).collect();
        let _ = Command::new("kill").arg("-9").args(&args).output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL still runs after kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again (after [`Server::kill9`]): it recovers from its WAL.
    pub fn restart(&self) {
        run(
            {
                let mut c = as_owner(&bin("pg_ctl"));
                c.arg("-D")
                    .arg(self.data_dir())
                    .arg("-l")
                    .arg(self.dir.join("sock/log"))
                    .args(["-w", "-t", "60", "start"]);
                c
            },
            "pg_ctl start",
        );
    }

    /// The cluster's data directory (its files, to look for plaintext in).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

fn uuid_hex() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("randomness");
    hex::encode(b)
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The parent is the second field after the command's closing parenthesis.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
