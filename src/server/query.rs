//! Query strings: decoded once, unknown parameters refused (a typo such as `budjet=` is an error
//! the client sees, not a default it never asked for), values parsed with errors that name the
//! parameter.

use std::collections::BTreeSet;
use std::str::FromStr;

use crate::event::{Kind, Severity, Timestamp, parse_timestamp};

use super::wire::ApiError;

/// Parameters that hold lists: they may be given more than once.
const LISTS: [&str; 1] = ["kinds"];
/// Parameters whose empty value means something: the empty prefix matches every stream. Any
/// other parameter given empty (`?offset=`) is refused rather than read as absent, which is
/// what a typed parameter's description says (and a client that meant a value learns it sent
/// none).
pub(super) const EMPTY_ALLOWED: [&str; 1] = ["prefix"];

/// The decoded query string of one request.
#[derive(Debug, Default)]
pub(super) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `query`, refusing parameters not in `allowed`.
    pub(super) fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, _)| !allowed.contains(&name.as_str()))
        {
            let message = if allowed.is_empty() {
                format!("unknown query parameter {name:?}; this route takes none")
            } else {
                format!(
                    "unknown query parameter {name:?}; this route takes {}",
                    allowed.join(", ")
                )
            };
            return Err(ApiError::parameter(name, message));
        }
        // Which of two values was meant is a guess: say so rather than pick one. Lists may
        // repeat (their values add up).
        let mut seen = BTreeSet::new();
        let mut repeated = |name: &str| !LISTS.contains(&name) && !seen.insert(name.to_owned());
        if let Some((name, _)) = pairs.iter().find(|(name, _)| repeated(name)) {
            return Err(ApiError::parameter(
                name,
                format!(
                    "query parameter {name:?} is given more than once; give it once (lists are comma-separated: kinds=tool,llm)"
                ),
            ));
        }
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, value)| value.is_empty() && !EMPTY_ALLOWED.contains(&name.as_str()))
        {
            return Err(ApiError::parameter(
                name,
                format!("query parameter {name:?} is empty; give it a value or leave it out"),
            ));
        }
        Ok(Query { pairs })
    }

    /// The value given for `name`, if any.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// A number.
    pub(super) fn number<T: FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .map(|value| {
                value.parse().map_err(|_| {
                    ApiError::parameter(name, format!("{name}={value:?} is not a whole number ≥ 0"))
                })
            })
            .transpose()
    }

    /// A severity (aliases and any case accepted, as for events).
    pub(super) fn severity(&self, name: &str) -> Result<Option<Severity>, ApiError> {
        self.get(name)
            .map(|value| {
                value.parse::<Severity>().map_err(|error| {
                    ApiError::parameter(name, error.to_string().replace("field `severity`", name))
                })
            })
            .transpose()
    }

    /// A timestamp.
    pub(super) fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.get(name)
            .map(|value| {
                parse_timestamp(value).map_err(|error| {
                    ApiError::parameter(name, error.to_string().replace("field `ts`", name))
                })
            })
            .transpose()
    }

    /// A comma-separated set of kinds (the parameter may also repeat).
    pub(super) fn kinds(&self, name: &str) -> Result<Option<BTreeSet<Kind>>, ApiError> {
        let mut kinds = BTreeSet::new();
        for (_, value) in self.pairs.iter().filter(|(n, _)| n == name) {
            for kind in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                kinds.insert(Kind::new(kind).map_err(|error| {
                    ApiError::parameter(name, error.to_string().replace("field `kind`", name))
                })?);
            }
        }
        Ok((!kinds.is_empty()).then_some(kinds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_parameter_given_twice_unless_it_is_a_list() {
        let error = Query::parse(Some("budget=10&budget=20"), &["budget"]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("budget"));
        assert!(
            error.message.contains("more than once"),
            "{}",
            error.message
        );
        assert!(Query::parse(Some("kinds=a&kinds=b"), &["kinds"]).is_ok());
    }

    #[test]
    fn refuses_an_empty_value_unless_it_means_something() {
        for name in [
            "offset",
            "limit",
            "min_severity",
            "kinds",
            "format",
            "after",
        ] {
            let error = Query::parse(Some(&format!("{name}=")), &[name]).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(name));
            assert!(error.message.contains("is empty"), "{}", error.message);
        }
        let query = Query::parse(Some("prefix="), &["prefix"]).unwrap();
        assert_eq!(query.get("prefix"), Some(""));
    }

    #[test]
    fn refuses_unknown_parameters_by_name() {
        let error = Query::parse(Some("budjet=10"), &["budget"]).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("budjet"));
        assert_eq!(error.code, super::super::wire::ErrorCode::InvalidParameter);
    }

    #[test]
    fn parses_values_and_names_bad_ones() {
        let query = Query::parse(
            Some("limit=5&kinds=tool,LLM&kinds=retry&min_severity=WARN&since=2024-05-01T10:00:00Z"),
            &["limit", "kinds", "min_severity", "since"],
        )
        .unwrap();
        assert_eq!(query.number::<usize>("limit").unwrap(), Some(5));
        let kinds: Vec<String> = query
            .kinds("kinds")
            .unwrap()
            .unwrap()
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(kinds, ["llm", "retry", "tool"]);
        assert_eq!(
            query.severity("min_severity").unwrap(),
            Some(Severity::Warning)
        );
        assert!(query.timestamp("since").unwrap().is_some());

        let bad = Query::parse(
            Some("limit=-1&min_severity=loud"),
            &["limit", "min_severity"],
        )
        .unwrap();
        assert_eq!(
            bad.number::<usize>("limit").unwrap_err().field.as_deref(),
            Some("limit")
        );
        let severity = bad.severity("min_severity").unwrap_err();
        assert!(
            severity
                .message
                .contains("debug, info, warning, error, critical"),
            "{}",
            severity.message
        );
    }
}
