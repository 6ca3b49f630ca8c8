//! API keys: who may call, on which streams, to do what (DESIGN section 5).
//!
//! With no keys configured the server binds loopback only (checked in [`super::run`]), and
//! every request is allowed. With a keys file every request but `GET /healthz` needs
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`: 401 without a valid key, 403 when the
//! key lacks the scope or the stream is outside its prefix.
//!
//! Keys are compared in constant time (a timing side channel would let a caller guess a key
//! byte by byte) and never logged: logs show the key's `name`.
//!
//! The keys file is TOML:
//!
//! ```toml
//! [[keys]]
//! name = "team-a agents"     # shown in logs instead of the key
//! key = "ra_4f1c9b1e6f0d2a7c"  # at least 16 characters
//! scopes = ["read", "write"] # read, write, admin (admin allows everything)
//! prefix = "team-a."         # optional: only streams whose names start with this
//! ```

use std::path::{Path, PathBuf};

use http::HeaderMap;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::event::StreamName;

use super::wire::{ApiError, ErrorCode};

/// Shortest key accepted: long enough that guessing is hopeless.
pub const MIN_KEY_LEN: usize = 16;

/// What a request does, for scope checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read history, context, notes, subscriptions, stream stats.
    Read,
    /// Post events and notes, delete notes, import records.
    Write,
    /// Delete streams, set retention; implies read and write.
    Admin,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// One configured key.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A label for logs.
    pub name: String,
    key: String,
    scopes: Vec<Scope>,
    /// Streams this key is confined to (by name prefix); empty for all.
    #[serde(default)]
    pub prefix: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// Whether the key has `scope` (admin has every scope).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes
            .iter()
            .any(|s| *s == scope || *s == Scope::Admin)
    }

    /// Whether `stream` is within the key's prefix.
    pub fn covers(&self, stream: &StreamName) -> bool {
        stream.as_str().starts_with(&self.prefix)
    }

    /// 403 unless the key may do `scope` on `stream` (or on the server, for `None`).
    pub fn authorize(&self, scope: Scope, stream: Option<&StreamName>) -> Result<(), ApiError> {
        if !self.allows(scope) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "key {:?} lacks the {} scope this request needs",
                    self.name,
                    scope.as_str()
                ),
            ));
        }
        if let Some(stream) = stream
            && !self.covers(stream)
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "key {:?} is confined to streams starting with {:?}",
                    self.name, self.prefix
                ),
            ));
        }
        Ok(())
    }
}

/// The configured keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

/// Why a keys file was refused (at startup).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The file could not be read.
    #[error("cannot read the keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the keys file {path} is not valid: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl Keys {
    /// Reads and checks a keys file.
    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        Keys::parse(&text).map_err(|detail| KeysError::Invalid {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses and checks keys from TOML text.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let keys: Keys = toml::from_str(text).map_err(|error| error.to_string())?;
        if keys.keys.is_empty() {
            return Err(
                "it has no [[keys]]; add at least one, or run without a keys file on loopback"
                    .to_owned(),
            );
        }
        for (index, key) in keys.keys.iter().enumerate() {
            if key.key.len() < MIN_KEY_LEN {
                return Err(format!(
                    "key {:?} is shorter than {MIN_KEY_LEN} characters",
                    key.name
                ));
            }
            if key.scopes.is_empty() {
                return Err(format!(
                    "key {:?} has no scopes; give it read, write and/or admin",
                    key.name
                ));
            }
            if keys.keys[..index].iter().any(|other| other.key == key.key) {
                return Err(format!("key {:?} repeats an earlier key", key.name));
            }
        }
        Ok(keys)
    }

    /// What an operator should hear about these keys at startup: prefixes that end inside a
    /// name segment, which confine a key less than they seem to (`team-c` also matches
    /// `team-corp.secret`). Prefixes match by plain string start; ending one with `.` or `:`
    /// makes it a whole segment.
    pub fn warnings(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter(|key| !key.prefix.is_empty() && !key.prefix.ends_with(['.', ':']))
            .map(|key| {
                format!(
                    "key {:?} has prefix {:?}, which also matches streams that merely start with it (such as {:?}); end it with '.' or ':' to confine the key to one name segment",
                    key.name,
                    key.prefix,
                    format!("{}x.y", key.prefix)
                )
            })
            .collect()
    }

    /// The key a request presents, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&ApiKey, ApiError> {
        let presented = presented_key(headers).ok_or_else(|| {
            ApiError::new(
            ErrorCode::Unauthorized,
            "this server needs an API key: send Authorization: Bearer <key> or X-API-Key: <key>",
            )
        })?;
        // Compare with every key without stopping early, so the time taken does not say which
        // key (or how much of one) matched.
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.key.as_bytes().ct_eq(presented)) {
                found = Some(key);
            }
        }
        found.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the API key is not valid; check the key you were given",
            )
        })
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get("x-api-key") {
        return Some(value.as_bytes());
    }
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let scheme = b"bearer ";
    (value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| value[scheme.len()..].trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = r#"
        [[keys]]
        name = "team a"
        key = "aaaaaaaaaaaaaaaa-team-a"
        scopes = ["read", "write"]
        prefix = "team-a."

        [[keys]]
        name = "reader"
        key = "rrrrrrrrrrrrrrrr-reader"
        scopes = ["read"]
    "#;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_or_x_api_key() {
        let keys = Keys::parse(KEYS).unwrap();
        let key = keys
            .authenticate(&headers("authorization", "Bearer aaaaaaaaaaaaaaaa-team-a"))
            .unwrap();
        assert_eq!(key.name, "team a");
        let key = keys
            .authenticate(&headers("x-api-key", "rrrrrrrrrrrrrrrr-reader"))
            .unwrap();
        assert_eq!(key.name, "reader");
        assert_eq!(
            keys.authenticate(&HeaderMap::new()).unwrap_err().status(),
            401
        );
        assert_eq!(
            keys.authenticate(&headers("x-api-key", "nope"))
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn prefixes_inside_a_name_segment_are_warned_about() {
        let keys = Keys::parse(
            r#"
            [[keys]]
            name = "loose"
            key = "0123456789abcdef0123456789abcdef"
            scopes = ["read"]
            prefix = "team-c"
            [[keys]]
            name = "tight"
            key = "fedcba9876543210fedcba9876543210"
            scopes = ["read"]
            prefix = "team-c."
            "#,
        )
        .unwrap();
        let warnings = keys.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(r#"key "loose" has prefix "team-c""#),
            "{warnings:?}"
        );
    }

    #[test]
    fn scopes_and_prefixes() {
        let keys = Keys::parse(KEYS).unwrap();
        let team_a = keys
            .authenticate(&headers("x-api-key", "aaaaaaaaaaaaaaaa-team-a"))
            .unwrap();
        let mine = StreamName::new("team-a.x").unwrap();
        let theirs = StreamName::new("team-b.x").unwrap();
        assert!(team_a.authorize(Scope::Write, Some(&mine)).is_ok());
        assert_eq!(
            team_a
                .authorize(Scope::Read, Some(&theirs))
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            team_a
                .authorize(Scope::Admin, Some(&mine))
                .unwrap_err()
                .status(),
            403
        );
        let reader = keys
            .authenticate(&headers("x-api-key", "rrrrrrrrrrrrrrrr-reader"))
            .unwrap();
        assert!(reader.authorize(Scope::Read, Some(&theirs)).is_ok());
        assert_eq!(
            reader
                .authorize(Scope::Write, Some(&theirs))
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn refuses_weak_or_empty_files_and_hides_keys() {
        assert!(Keys::parse("keys = []").is_err());
        assert!(
            Keys::parse("[[keys]]\nname = \"x\"\nkey = \"short\"\nscopes = [\"read\"]").is_err()
        );
        assert!(
            Keys::parse("[[keys]]\nname = \"x\"\nkey = \"long-enough-key-123\"\nscopes = []")
                .is_err()
        );
        let keys = Keys::parse(KEYS).unwrap();
        assert!(!format!("{keys:?}").contains("aaaaaaaaaaaaaaaa"));
    }
}
