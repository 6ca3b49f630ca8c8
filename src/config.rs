//! Server configuration: command-line flags and environment (parsed by the binary), an optional
//! TOML file, and defaults, merged in that order of precedence into a validated [`Config`].
//!
//! Parsing happens in two stages: the raw sources ([`Overrides`], [`FileConfig`]) are plain
//! optional values; [`Config::load`] merges and checks them, so every problem is reported at
//! startup with what to change.
//!
//! A config file (`recap serve --config recap.toml`) may hold:
//!
//! ```toml
//! addr = "127.0.0.1:7070"
//! data_dir = "recap-data"
//! # database_url = "postgres://recap:secret@db.internal:5432/recap?sslmode=require"
//! #                                 # several nodes on a shared PostgreSQL instead of data_dir
//! keys_file = "keys.toml"          # relative paths are relative to this file
//! max_body_bytes = 1048576
//! max_message_bytes = 65536
//! sse_keepalive_seconds = 15
//! drain_timeout_seconds = 30
//! collapse_mode = "exact"          # or "template"
//! collapse_window_seconds = 600
//! cache_bytes = "256MiB"           # in-memory stream state; least recently used streams are evicted beyond it
//! tail_records = 4096              # newest records kept in memory per stream
//! severe_records = 256             # older error/critical records kept in reach per stream
//! tail_block_bytes = "8MiB"        # a tail also keeps at most two blocks of this much text
//! max_notes_per_stream = 1000      # live notes per stream (409 note_limit beyond)
//! max_note_bytes_per_stream = 1048576  # bytes of live note text per stream
//! log_format = "text"              # or "json": one JSON object per log line
//! anomalies = true                 # anomaly detection at ingest (also --anomalies on|off)
//! anomaly_repeat_actions = 3       # the same action this many times in a row (0: off)
//! anomaly_oscillation_cycles = 3   # A-B-A-B for this many cycles (0: off)
//! anomaly_error_recurrences = 3    # the same error this many times, each within 32 events (0: off)
//! anomaly_stall_seconds = 300      # a gap this long between events (0: off)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeDelta;
use serde::Deserialize;

use crate::anomaly::AnomalySettings;
use crate::collapse::{CollapseMode, CollapsePolicy};
use crate::event::{DEFAULT_MAX_MESSAGE_BYTES, EventLimits};
use crate::logging::LogFormat;
use crate::server::auth::{Keys, KeysError};
use crate::server::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_KEEPALIVE, DEFAULT_MAX_BODY_BYTES, ServerOptions, Startup,
};
use crate::store::{DEFAULT_DATA_DIR, NoteLimits, StoreOptions};
use crate::stream::TailCapacity;

/// Default listen address: loopback, so a fresh `recap serve` is not reachable from the network
/// until keys are configured.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7070";
/// Smallest per-stream tail accepted: the context's minimum candidate window.
pub const MIN_TAIL_RECORDS: usize = crate::context::MIN_CANDIDATES;
/// Smallest body cap accepted: one maximal event must fit.
pub const MIN_MAX_BODY_BYTES: usize = 4 * 1024;

/// What the command line and environment say (each `None` when not given).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--addr` / `RECAP_ADDR`.
    pub addr: Option<String>,
    /// `--data` / `RECAP_DATA`.
    pub data_dir: Option<PathBuf>,
    /// `--config` / `RECAP_CONFIG`.
    pub config_file: Option<PathBuf>,
    /// `--keys` / `RECAP_KEYS`.
    pub keys_file: Option<PathBuf>,
    /// `--cache-bytes` / `RECAP_CACHE_BYTES`.
    pub cache_bytes: Option<String>,
    /// `--database-url` / `RECAP_DATABASE_URL`.
    pub database_url: Option<String>,
    /// `--log-format` / `RECAP_LOG_FORMAT`.
    pub log_format: Option<String>,
    /// `--anomalies` / `RECAP_ANOMALIES`: `on` or `off`.
    pub anomalies: Option<String>,
}

/// What a config file says.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    addr: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    keys_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_message_bytes: Option<usize>,
    sse_keepalive_seconds: Option<u64>,
    drain_timeout_seconds: Option<u64>,
    collapse_mode: Option<String>,
    collapse_window_seconds: Option<i64>,
    cache_bytes: Option<ByteSize>,
    tail_block_bytes: Option<ByteSize>,
    tail_records: Option<usize>,
    severe_records: Option<usize>,
    max_notes_per_stream: Option<usize>,
    max_note_bytes_per_stream: Option<usize>,
    log_format: Option<String>,
    anomalies: Option<bool>,
    anomaly_repeat_actions: Option<u64>,
    anomaly_oscillation_cycles: Option<u64>,
    anomaly_error_recurrences: Option<u64>,
    anomaly_stall_seconds: Option<u64>,
}

/// The validated configuration of `recap serve`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The PostgreSQL database to keep streams in instead of the data directory.
    pub database_url: Option<DatabaseUrl>,
    /// API keys, if configured.
    pub keys: Option<Keys>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest event message.
    pub max_message_bytes: usize,
    /// Interval of SSE keepalive comments.
    pub sse_keepalive: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// Repeat-collapse policy.
    pub collapse: CollapsePolicy,
    /// How much of each stream is kept in memory.
    pub tail: TailCapacity,
    /// Caps on each stream's notes.
    pub notes: NoteLimits,
    /// Budget of in-memory stream state.
    pub cache_bytes: usize,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Anomaly detection for streams that set nothing else.
    pub anomaly: AnomalySettings,
}

/// A PostgreSQL URL (`postgres://user:password@host:port/db?sslmode=…`). Its `Debug` form
/// leaves out the credentials, so that a logged config never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Checks that `url` names a PostgreSQL database.
    pub fn parse(url: String) -> Result<DatabaseUrl, ConfigError> {
        if !crate::store::pg::is_database_url(&url) {
            return Err(invalid(
                "database_url",
                "must be a PostgreSQL URL such as postgres://user:password@host:5432/recap",
            ));
        }
        Ok(DatabaseUrl(url))
    }

    /// The URL, credentials included: for connecting, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let without_credentials = match self.0.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://{host}")
            }
            None => "postgres://…".to_owned(),
        };
        f.debug_tuple("DatabaseUrl")
            .field(&without_credentials)
            .finish()
    }
}

/// A size in a config file: a number of bytes, or a string such as `"64MiB"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum ByteSize {
    Bytes(usize),
    Text(String),
}

impl ByteSize {
    /// The number of bytes, or an error naming the setting `name`.
    fn resolve(self, name: &'static str) -> Result<usize, ConfigError> {
        match self {
            ByteSize::Bytes(bytes) => Ok(bytes),
            ByteSize::Text(text) => parse_bytes(&text).ok_or_else(|| {
                invalid(
                    name,
                    format!(
                        "{text:?} is not a size; write a number of bytes or one like 64MiB or 2GiB"
                    ),
                )
            }),
        }
    }
}

/// Smallest cache budget: a few streams' state.
pub const MIN_CACHE_BYTES: usize = 1024 * 1024;
/// Smallest byte block of a tail: a few long messages.
pub const MIN_TAIL_BLOCK_BYTES: usize = 64 * 1024;

/// Reads a size: a whole number of bytes, optionally with a unit `B`, `KiB`, `MiB` or `GiB`
/// (`KB`, `MB`, `GB` and `K`, `M`, `G` are read as the binary units too).
pub fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: usize = number.parse().ok()?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for recap.
    #[error("the config file {path} is not valid: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid setting `{name}`: {detail}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong and what is allowed.
        detail: String,
    },
    /// The keys file is unusable.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A non-loopback address without keys.
    #[error(
        "refusing to listen on {addr} without API keys: anyone on the network could read and write every stream; configure keys (--keys FILE) or listen on 127.0.0.1"
    )]
    OpenToNetwork {
        /// The address asked for.
        addr: SocketAddr,
    },
}

impl Config {
    /// Merges flags and environment over the config file over the defaults, and checks it all.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let (file, base) = match &overrides.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let file: FileConfig =
                    toml::from_str(&text).map_err(|error| ConfigError::Parse {
                        path: path.clone(),
                        detail: error.to_string(),
                    })?;
                (file, path.parent().map(Path::to_owned).unwrap_or_default())
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        Config::merge(overrides, file, &base)
    }

    /// Merges already-read sources; `base` is the directory of the config file.
    pub fn merge(
        overrides: &Overrides,
        file: FileConfig,
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let anomaly = anomaly_settings(overrides, &file)?;
        let addr_text = overrides
            .addr
            .clone()
            .or(file.addr)
            .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
        let addr = listen_addr(&addr_text)?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or_else(|| file.data_dir.map(|dir| base.join(dir)))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = overrides
            .database_url
            .clone()
            .or(file.database_url)
            .map(DatabaseUrl::parse)
            .transpose()?;
        let keys_file = overrides
            .keys_file
            .clone()
            .or_else(|| file.keys_file.map(|path| base.join(path)));
        let keys = keys_file.as_deref().map(Keys::load).transpose()?;
        if keys.is_none() && !addr.ip().is_loopback() {
            return Err(ConfigError::OpenToNetwork { addr });
        }
        let max_message_bytes = file.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if max_message_bytes == 0 {
            return Err(invalid("max_message_bytes", "must be at least 1"));
        }
        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < MIN_MAX_BODY_BYTES.max(max_message_bytes) {
            return Err(invalid(
                "max_body_bytes",
                format!(
                    "must be at least {} (one event of max_message_bytes must fit)",
                    MIN_MAX_BODY_BYTES.max(max_message_bytes)
                ),
            ));
        }
        let sse_keepalive = match file.sse_keepalive_seconds {
            Some(0) => return Err(invalid("sse_keepalive_seconds", "must be at least 1")),
            Some(seconds) => Duration::from_secs(seconds),
            None => DEFAULT_KEEPALIVE,
        };
        let drain_timeout = file
            .drain_timeout_seconds
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs);
        let mut collapse = CollapsePolicy::default();
        if let Some(mode) = file.collapse_mode {
            collapse.mode = mode
                .parse::<CollapseMode>()
                .map_err(|detail| invalid("collapse_mode", detail))?;
        }
        if let Some(seconds) = file.collapse_window_seconds {
            collapse.window = TimeDelta::try_seconds(seconds)
                .filter(|window| *window >= TimeDelta::zero())
                .ok_or_else(|| {
                    invalid("collapse_window_seconds", "must be a number of seconds ≥ 0")
                })?;
        }
        let mut tail = TailCapacity::default();
        if let Some(records) = file.tail_records {
            if records < MIN_TAIL_RECORDS {
                return Err(invalid(
                    "tail_records",
                    format!(
                        "must be at least {MIN_TAIL_RECORDS} (a context needs recent records to choose from)"
                    ),
                ));
            }
            tail.records = records;
        }
        if let Some(severe) = file.severe_records {
            tail.severe = severe;
        }
        if let Some(size) = file.tail_block_bytes {
            let bytes = size.resolve("tail_block_bytes")?;
            if bytes < MIN_TAIL_BLOCK_BYTES {
                return Err(invalid("tail_block_bytes", "must be at least 64KiB"));
            }
            tail.block_bytes = bytes as u64;
        }
        let cache_text = overrides.cache_bytes.clone().map(ByteSize::Text);
        let cache_bytes = match cache_text.or(file.cache_bytes) {
            None => crate::store::DEFAULT_CACHE_BYTES,
            Some(size) => size.resolve("cache_bytes")?,
        };
        if cache_bytes < MIN_CACHE_BYTES {
            return Err(invalid("cache_bytes", "must be at least 1MiB"));
        }
        let mut notes = NoteLimits::default();
        // One note of the largest message size always fits.
        notes.max_bytes = notes.max_bytes.max(max_message_bytes);
        if let Some(max_notes) = file.max_notes_per_stream {
            if max_notes == 0 {
                return Err(invalid("max_notes_per_stream", "must be at least 1"));
            }
            notes.max_notes = max_notes;
        }
        if let Some(max_bytes) = file.max_note_bytes_per_stream {
            if max_bytes < max_message_bytes {
                return Err(invalid(
                    "max_note_bytes_per_stream",
                    format!(
                        "must be at least max_message_bytes ({max_message_bytes}): one note of the largest size must fit"
                    ),
                ));
            }
            notes.max_bytes = max_bytes;
        }
        let log_format = match overrides.log_format.clone().or(file.log_format) {
            Some(text) => text
                .parse::<LogFormat>()
                .map_err(|detail| invalid("log_format", detail))?,
            None => LogFormat::default(),
        };
        Ok(Config {
            log_format,
            anomaly,
            addr,
            data_dir,
            database_url,
            keys,
            max_body_bytes,
            max_message_bytes,
            sse_keepalive,
            drain_timeout,
            collapse,
            tail,
            notes,
            cache_bytes,
        })
    }

    /// The store's options.
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            collapse: self.collapse,
            tail: self.tail,
            notes: self.notes,
            cache_bytes: self.cache_bytes,
            anomaly: self.anomaly,
            ..StoreOptions::default()
        }
    }

    /// What [`crate::server::serve`] needs.
    pub fn startup(&self) -> Startup {
        Startup {
            addr: self.addr,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            store: self.store_options(),
            server: self.server_options(),
        }
    }

    /// The HTTP layer's options.
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions {
            keys: self.keys.clone(),
            max_body_bytes: self.max_body_bytes,
            limits: EventLimits {
                max_message_bytes: self.max_message_bytes,
            },
            sse_keepalive: self.sse_keepalive,
            drain_timeout: self.drain_timeout,
            ..ServerOptions::default()
        }
    }
}

/// `IP:PORT`, or `HOST:PORT` for a host name this machine resolves (`localhost:7070`). A name
/// with IPv4 and IPv6 addresses binds the IPv4 one, where clients of `localhost` mostly go.
/// The server's anomaly detection: the flag (or environment) says on or off over the file;
/// thresholds come from the file.
fn anomaly_settings(
    overrides: &Overrides,
    file: &FileConfig,
) -> Result<AnomalySettings, ConfigError> {
    let flag = match overrides.anomalies.as_deref().map(str::to_ascii_lowercase) {
        None => None,
        Some(text) => match text.as_str() {
            "on" | "true" | "1" => Some(true),
            "off" | "false" | "0" => Some(false),
            _ => {
                return Err(invalid(
                    "anomalies",
                    format!(
                        "{text:?} is neither on nor off; use --anomalies on or --anomalies off"
                    ),
                ));
            }
        },
    };
    let defaults = AnomalySettings::default();
    let settings = AnomalySettings {
        enabled: flag.or(file.anomalies).unwrap_or(defaults.enabled),
        repeat_actions: file
            .anomaly_repeat_actions
            .unwrap_or(defaults.repeat_actions),
        oscillation_cycles: file
            .anomaly_oscillation_cycles
            .unwrap_or(defaults.oscillation_cycles),
        error_recurrences: file
            .anomaly_error_recurrences
            .unwrap_or(defaults.error_recurrences),
        stall_seconds: file.anomaly_stall_seconds.unwrap_or(defaults.stall_seconds),
    };
    if let Some((name, detail)) = settings.check() {
        let name = match name {
            "repeat_actions" => "anomaly_repeat_actions",
            "oscillation_cycles" => "anomaly_oscillation_cycles",
            "error_recurrences" => "anomaly_error_recurrences",
            _ => "anomaly_stall_seconds",
        };
        return Err(invalid(name, detail));
    }
    Ok(settings)
}

fn listen_addr(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let bad = |why: &str| {
        invalid(
            "addr",
            format!("{text:?} {why}; use IP:PORT or HOST:PORT (e.g. 127.0.0.1:7070)"),
        )
    };
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|error| bad(&format!("does not resolve ({error})")))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| bad("resolves to no address"))
}

fn invalid(name: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_the_embedded_data_dir() {
        let config =
            Config::merge(&Overrides::default(), FileConfig::default(), Path::new("")).unwrap();
        assert_eq!(config.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(config.keys.is_none());
        assert_eq!(config.sse_keepalive, DEFAULT_KEEPALIVE);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn the_log_format_comes_from_the_flag_or_the_file() {
        let file: FileConfig = toml::from_str("log_format = \"json\"").unwrap();
        let config = Config::merge(&Overrides::default(), file.clone(), Path::new("")).unwrap();
        assert_eq!(config.log_format, LogFormat::Json);
        let overrides = Overrides {
            log_format: Some("text".to_owned()),
            ..Overrides::default()
        };
        let config = Config::merge(&overrides, file, Path::new("")).unwrap();
        assert_eq!(config.log_format, LogFormat::Text);
        let overrides = Overrides {
            log_format: Some("xml".to_owned()),
            ..Overrides::default()
        };
        let error = Config::merge(&overrides, FileConfig::default(), Path::new("")).unwrap_err();
        assert!(error.to_string().contains("log_format"), "{error}");
    }

    #[test]
    fn flags_win_over_the_file_and_paths_are_relative_to_it() {
        let file: FileConfig = toml::from_str(
            "addr = \"127.0.0.1:9\"\ndata_dir = \"d\"\ncollapse_mode = \"template\"",
        )
        .unwrap();
        let overrides = Overrides {
            addr: Some("127.0.0.1:8".to_owned()),
            ..Overrides::default()
        };
        let config = Config::merge(&overrides, file, Path::new("/etc/recap")).unwrap();
        assert_eq!(config.addr.port(), 8);
        assert_eq!(config.data_dir, PathBuf::from("/etc/recap/d"));
        assert_eq!(config.collapse.mode, CollapseMode::Template);
    }

    #[test]
    fn anomaly_detection_is_set_by_flag_and_file_and_checked() {
        let file: FileConfig = toml::from_str(
            "anomalies = false\nanomaly_stall_seconds = 0\nanomaly_repeat_actions = 5",
        )
        .unwrap();
        let config = Config::merge(&Overrides::default(), file.clone(), Path::new("")).unwrap();
        assert!(!config.anomaly.enabled);
        assert_eq!(config.anomaly.repeat_actions, 5);
        assert_eq!(config.anomaly.stall(), None);
        assert_eq!(config.store_options().anomaly, config.anomaly);
        let on = Overrides {
            anomalies: Some("ON".to_owned()),
            ..Overrides::default()
        };
        assert!(
            Config::merge(&on, file, Path::new(""))
                .unwrap()
                .anomaly
                .enabled
        );
        let bad = Overrides {
            anomalies: Some("maybe".to_owned()),
            ..Overrides::default()
        };
        let error = Config::merge(&bad, FileConfig::default(), Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("anomalies") && error.contains("--anomalies off"),
            "{error}"
        );
        let file: FileConfig = toml::from_str("anomaly_oscillation_cycles = 1").unwrap();
        let error = Config::merge(&Overrides::default(), file, Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("anomaly_oscillation_cycles"), "{error}");
    }

    #[test]
    fn host_names_resolve_and_garbage_is_named() {
        assert_eq!(
            listen_addr("localhost:7071").unwrap(),
            "127.0.0.1:7071".parse().unwrap()
        );
        let error = listen_addr("7070").unwrap_err().to_string();
        assert!(
            error.contains("\"7070\"") && error.contains("HOST:PORT"),
            "{error}"
        );
    }

    #[test]
    fn refuses_the_network_without_keys_and_bad_values() {
        let overrides = Overrides {
            addr: Some("0.0.0.0:7070".to_owned()),
            ..Overrides::default()
        };
        let error = Config::merge(&overrides, FileConfig::default(), Path::new("")).unwrap_err();
        assert!(error.to_string().contains("without API keys"), "{error}");
        let file: FileConfig = toml::from_str("max_body_bytes = 10").unwrap();
        assert!(Config::merge(&Overrides::default(), file, Path::new("")).is_err());
        assert!(toml::from_str::<FileConfig>("adr = \"x\"").is_err());
    }

    #[test]
    fn cache_budget_reads_units_and_flags_win() {
        let load = |text: &str| {
            let file: FileConfig = toml::from_str(text).unwrap();
            Config::merge(&Overrides::default(), file, Path::new(""))
        };
        assert_eq!(
            load("").unwrap().cache_bytes,
            crate::store::DEFAULT_CACHE_BYTES
        );
        assert_eq!(
            load("cache_bytes = \"64MiB\"").unwrap().cache_bytes,
            64 << 20
        );
        assert_eq!(load("cache_bytes = 2097152").unwrap().cache_bytes, 2 << 20);
        assert_eq!(parse_bytes("2 GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("12k"), Some(12 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(
            load("cache_bytes = \"64 furlongs\"")
                .unwrap_err()
                .to_string(),
            "invalid setting `cache_bytes`: \"64 furlongs\" is not a size; write a number of bytes or one like 64MiB or 2GiB"
        );
        assert!(load("cache_bytes = 1000").is_err());
        let overrides = Overrides {
            cache_bytes: Some("8MiB".into()),
            ..Overrides::default()
        };
        let file: FileConfig = toml::from_str("cache_bytes = \"64MiB\"").unwrap();
        let config = Config::merge(&overrides, file, Path::new(".")).unwrap();
        assert_eq!(config.store_options().cache_bytes, 8 << 20);
    }

    #[test]
    fn tail_sizes_are_configurable_within_bounds() {
        let load = |text: &str| {
            let file: FileConfig = toml::from_str(text).unwrap();
            Config::merge(&Overrides::default(), file, Path::new(""))
        };
        let config =
            load("tail_records = 512\nsevere_records = 16\ntail_block_bytes = \"1MiB\"").unwrap();
        assert_eq!(
            config.store_options().tail,
            TailCapacity {
                records: 512,
                severe: 16,
                block_bytes: 1024 * 1024,
            }
        );
        assert_eq!(
            load("tail_records = 3").unwrap_err().to_string(),
            "invalid setting `tail_records`: must be at least 64 (a context needs recent records to choose from)"
        );
        let config = load("max_notes_per_stream = 10\nmax_note_bytes_per_stream = 100000").unwrap();
        assert_eq!(
            config.store_options().notes,
            NoteLimits {
                max_notes: 10,
                max_bytes: 100_000
            }
        );
        assert_eq!(
            load("max_note_bytes_per_stream = 10")
                .unwrap_err()
                .to_string(),
            "invalid setting `max_note_bytes_per_stream`: must be at least max_message_bytes (65536): one note of the largest size must fit"
        );
        assert!(load("max_notes_per_stream = 0").is_err());
    }
}
