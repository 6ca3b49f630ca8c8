//! `recap serve`'s arguments. Their defaults are shown in `--help` but not set by clap: a flag
//! or variable left out must leave the config file's value in force, so the defaults are
//! applied by [`Config::load`](crate::config::Config::load), after the file.

use std::path::PathBuf;

use clap::Args;

use crate::config::{DEFAULT_ADDR, Overrides};
use crate::store::{DEFAULT_CACHE_BYTES, DEFAULT_DATA_DIR};

const EXAMPLES: &str = "\
Examples:
  recap serve                                   # 127.0.0.1:7070, data in ./recap-data
  recap serve --addr 127.0.0.1:8080 --data /var/lib/recap
  recap serve --config recap.toml               # flags and RECAP_* variables override the file
  recap serve --addr 0.0.0.0:7070 --keys keys.toml   # other than loopback only with API keys
  RECAP_DATABASE_URL=postgres://recap:secret@db:5432/recap recap serve --addr 0.0.0.0:7070 --keys keys.toml
                                                # one of several nodes on a shared PostgreSQL

Flags and environment variables take precedence over the config file, which takes precedence
over the defaults. SIGINT or SIGTERM drains in-flight requests and closes the store; a second
signal exits at once.";

/// `recap serve`.
#[derive(Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "RECAP_ADDR",
        value_name = "HOST:PORT",
        help = format!("Address to listen on [default: {DEFAULT_ADDR}]")
    )]
    pub addr: Option<String>,
    /// Data directory (holds recap.redb).
    #[arg(
        long,
        env = "RECAP_DATA",
        value_name = "DIR",
        help = format!("Data directory, holding recap.redb [default: ./{DEFAULT_DATA_DIR}]")
    )]
    pub data: Option<PathBuf>,
    /// A PostgreSQL database shared by several nodes, instead of the data directory.
    #[arg(
        long,
        env = "RECAP_DATABASE_URL",
        value_name = "URL",
        help = "Keep streams in this PostgreSQL database (postgres://user:password@host:5432/db), shared by several recap nodes, instead of the data directory [default: none: the embedded data file]"
    )]
    pub database_url: Option<String>,
    /// Config file (TOML).
    #[arg(
        long,
        env = "RECAP_CONFIG",
        value_name = "FILE",
        help = "Config file (TOML; see the README for its settings) [default: none]"
    )]
    pub config: Option<PathBuf>,
    /// API keys file (TOML).
    #[arg(
        long,
        env = "RECAP_KEYS",
        value_name = "FILE",
        help = "API keys file (TOML) [default: none: no keys, and the server listens on loopback only]"
    )]
    pub keys: Option<PathBuf>,
    /// Memory for cached stream state.
    #[arg(
        long,
        env = "RECAP_CACHE_BYTES",
        value_name = "SIZE",
        help = format!(
            "Memory for cached stream state, e.g. 64MiB; the streams used least recently are evicted beyond it and loaded again when next used [default: {}MiB]",
            DEFAULT_CACHE_BYTES / (1024 * 1024)
        )
    )]
    pub cache_bytes: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "RECAP_LOG_FORMAT",
        value_name = "text|json",
        help = "Log lines as text or json (one object per line); RUST_LOG adds to the default filter (RUST_LOG=recap::request=debug logs every request) [default: text]"
    )]
    pub log_format: Option<String>,
    /// Anomaly detection at ingest.
    #[arg(
        long,
        env = "RECAP_ANOMALIES",
        value_name = "on|off",
        help = "Anomaly detection at ingest (loops, oscillation, recurring errors, stalls raised as `anomaly` records); streams may still set their own [default: on]"
    )]
    pub anomalies: Option<String>,
}

impl ServeArgs {
    /// The values given, for [`Config::load`](crate::config::Config::load) to merge.
    pub fn overrides(self) -> Overrides {
        Overrides {
            addr: self.addr,
            data_dir: self.data,
            database_url: self.database_url,
            config_file: self.config,
            keys_file: self.keys,
            cache_bytes: self.cache_bytes,
            log_format: self.log_format,
            anomalies: self.anomalies,
        }
    }
}
