//! A throwaway PostgreSQL cluster for the tests that need one: started once per run of the test
//! binary (the first test that asks starts it), in a temporary directory, on a free loopback
//! port, and stopped when the test binary exits, however it exits.
//!
//! Each test gets a database of its own ([`database`]); a test that needs a server set up
//! differently (the TLS tests) starts one more with [`start_with`], stopped the same way. Where PostgreSQL is not installed the
//! tests that need it do not run: [`database`] returns `None`, and the run says so on the
//! terminal (past the test harness's output capture) with how to enable them. With
//! `RECAP_REQUIRE_PG=1` (CI sets it, since `.ci/run` installs PostgreSQL) a missing or failing
//! PostgreSQL fails those tests instead.
//!
//! Binaries: `RECAP_PG_BIN` (a directory holding `initdb`, `pg_ctl`, `createdb`), else the
//! newest `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package), else `PATH`. Run as root
//! (as in CI), the cluster runs as the `postgres` user (`runuser -u postgres`), since
//! PostgreSQL refuses to run as root.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Longest the cluster may take to start (`pg_ctl start -t`) or stop.
const START_SECONDS: u32 = 60;

/// A running cluster.
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
    data: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The URL of a fresh, empty database on the run's cluster, named after `test`; `None` (after
/// saying so on the terminal) when PostgreSQL is not available and not required.
pub fn database(test: &str) -> Option<String> {
    let cluster = available(CLUSTER.get_or_init(start).as_ref(), test)?;
    Some(cluster.create_database(test))
}

/// A cluster of the calling test's own (for a test that restarts it), stopped when dropped
/// (and by its watchdog if the test binary dies first); `None` like [`database`].
pub fn private(test: &str) -> Option<PrivateCluster> {
    let started = start();
    available(started.as_ref(), test)?;
    started.ok().map(PrivateCluster)
}

/// A cluster stopped when dropped.
pub struct PrivateCluster(pub Cluster);

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self
            .0
            .pg_ctl(&["stop", "-m", "immediate"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The cluster (or whatever holds it) if it started; otherwise `None` after saying why (or a
/// panic when PostgreSQL is required).
pub fn available<'a, T>(cluster: Result<&'a T, &String>, test: &str) -> Option<&'a T> {
    match cluster {
        Ok(cluster) => Some(cluster),
        Err(why) => {
            if std::env::var_os("RECAP_REQUIRE_PG").is_some_and(|value| value != "0") {
                panic!("PostgreSQL is required (RECAP_REQUIRE_PG is set) but {why}");
            }
            skipped(test, why);
            None
        }
    }
}

/// What a cluster starts with beyond the defaults (for the TLS tests' cluster).
#[derive(Default)]
pub struct Setup {
    /// Files written into the data directory after `initdb` (name, contents), readable by the
    /// server alone, as PostgreSQL requires of a private key.
    pub files: Vec<(&'static str, String)>,
    /// Server settings (`name=value`), each passed as `-c`.
    pub settings: Vec<&'static str>,
}

impl Cluster {
    /// The directory the cluster's data directory is in, removed with the cluster: for the
    /// files a test makes beside it.
    pub fn dir(&self) -> &Path {
        self.data
            .parent()
            .expect("the data directory is in the cluster's directory")
    }

    /// Creates a fresh, empty database named after `test` and returns its URL.
    pub fn create_database(&self, test: &str) -> String {
        let name = format!(
            "recap_{}_{}",
            test.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let port = self.port.to_string();
        let status = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name])
            .status()
            .expect("run createdb");
        assert!(status.success(), "createdb {name} failed");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Restarts the server (`pg_ctl restart -m fast`: sessions are cut off, the server comes
    /// back on the same port), returning once it takes connections again.
    pub fn restart(&self) {
        let status = self
            .pg_ctl(&["restart", "-m", "fast"])
            .arg("-l")
            .arg(self.data.with_file_name("log"))
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl restart");
        assert!(status.success(), "pg_ctl restart failed");
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = self.command("pg_ctl");
        command
            .args(args)
            .args(["-w", "-t", &START_SECONDS.to_string(), "-D"])
            .arg(&self.data);
        command
    }

    fn command(&self, program: &str) -> Command {
        command(&self.bin, program, self.as_postgres)
    }
}

/// Says, once per test and on the terminal itself (the harness captures `eprintln!`), that a
/// test did not run.
fn skipped(test: &str, why: &str) {
    static EXPLAINED: OnceLock<()> = OnceLock::new();
    let mut stderr = std::io::stderr();
    EXPLAINED.get_or_init(|| {
        let _ = writeln!(
            stderr,
            "\nNOTE: the PostgreSQL tests DID NOT RUN: {why}.\n      Install PostgreSQL (Debian: apt-get install postgresql) or set RECAP_PG_BIN to the\n      directory holding initdb and pg_ctl; set RECAP_REQUIRE_PG=1 to make their absence fail.\n"
        );
    });
    let _ = writeln!(stderr, "skipped (no PostgreSQL): {test}");
}

fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    let path = bin.join(program);
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

/// Where `initdb` and `pg_ctl` are.
fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("RECAP_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("RECAP_PG_BIN={} holds no initdb", dir.display()))
        };
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(newest) = versions.pop() {
        return Ok(newest);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .ok_or_else(|| {
            "no initdb was found (looked in RECAP_PG_BIN, /usr/lib/postgresql/*/bin and PATH)"
                .to_owned()
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn start() -> Result<Cluster, String> {
    start_with(&Setup::default())
}

/// Starts a cluster with `setup`, stopped when the test binary exits (see [`watchdog`]).
pub fn start_with(setup: &Setup) -> Result<Cluster, String> {
    let bin = find_bin()?;
    let as_postgres = is_root();
    // A directory the `postgres` user owns, outside the test's own temp dirs, removed by the
    // watchdog below once the cluster is stopped.
    let dir = tempfile::Builder::new()
        .prefix("recap-pg-")
        .tempdir()
        .map_err(|e| format!("cannot make a directory for the cluster: {e}"))?
        .keep();
    let data = dir.join("data");
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !status.success() {
            return Err("cannot give the cluster's directory to the postgres user (is there a postgres user?)".into());
        }
    }
    let initdb = command(&bin, "initdb", as_postgres)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }
    for (name, contents) in &setup.files {
        write_private(&data.join(name), contents, as_postgres)?;
    }
    let settings: String = setup
        .settings
        .iter()
        .map(|setting| format!(" -c {setting}"))
        .collect();
    let mut last_error = String::new();
    // A port found free may be taken before the server binds it: try a few.
    for _ in 0..3 {
        let port = free_port()?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=200 -c shared_buffers=64MB{settings}",
            dir.display()
        );
        let started = command(&bin, "pg_ctl", as_postgres)
            .args(["start", "-w", "-t", &START_SECONDS.to_string(), "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-o", &options])
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if started.status.success() {
            watchdog(&bin, &dir, &data, as_postgres);
            return Ok(Cluster {
                port,
                bin,
                as_postgres,
                data,
            });
        }
        last_error = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the cluster did not start: {last_error}"))
}

/// Writes a file only its owner reads, owned by the `postgres` user when the cluster runs as it.
fn write_private(path: &Path, contents: &str, as_postgres: bool) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    std::fs::write(path, contents).map_err(|e| format!("cannot write {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {shown} private: {e}"))?;
    if as_postgres {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(path)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !status.success() {
            return Err(format!("cannot give {shown} to the postgres user"));
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| e.to_string())
}

/// Stops the cluster (`pg_ctl stop -m immediate`, then by pid) and removes its directory once
/// this test binary has exited, whether its tests passed, failed or it was killed: a detached
/// shell polls for the test process.
fn watchdog(bin: &Path, dir: &Path, data: &Path, as_postgres: bool) {
    let pg_ctl = bin.join("pg_ctl");
    let runner = if as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {runner}'{pg_ctl}' stop -m immediate -t {START_SECONDS} -D '{data}' >/dev/null 2>&1; \
         pid=$(head -1 '{data}/postmaster.pid' 2>/dev/null) && [ -n \"$pid\" ] && kill -9 \"$pid\" 2>/dev/null; \
         rm -rf '{dir}'",
        pid = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    let spawned = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = spawned {
        let _ = writeln!(
            std::io::stderr(),
            "cannot start the watchdog that stops the test cluster in {}: {error}",
            dir.display()
        );
    }
}
