//! An event's payload: a JSON object kept as compact text, never parsed into a tree.
//!
//! recap stores and returns payloads but never renders them, so it has no use for their
//! structure. A parsed `serde_json::Value` costs many times its text (an array of small numbers
//! about 32 bytes per number: one 1 MiB body could take 40 MiB while it was decoded); the text
//! costs its length. The object is checked when it arrives and minified (whitespace outside
//! strings removed); its keys keep the order the client sent them in.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON object as compact text.
#[derive(Clone)]
pub struct Payload(Box<RawValue>);

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

impl Payload {
    /// The payload of a JSON object.
    pub fn from_object(object: &Map<String, Value>) -> Payload {
        // A map of JSON values always serializes, to compact text.
        let text = serde_json::to_string(object).unwrap_or_else(|_| "{}".to_owned());
        Payload(RawValue::from_string(text).expect("serde_json writes valid JSON"))
    }

    /// The payload of a value that serializes as a JSON object (a struct or a map), written to
    /// compact text once: unlike [`Payload::from_object`], no map is built and the text is not
    /// read back to be checked.
    pub fn from_fields<T: Serialize>(fields: &T) -> Payload {
        // Structs with `Serialize` derived and maps with string keys always serialize.
        let raw = serde_json::value::to_raw_value(fields).expect("the fields serialize");
        debug_assert!(raw.get().starts_with('{'), "a payload is an object");
        Payload(raw)
    }

    /// Reads a payload from JSON text: an object, minified. `Err` names what the text is if it
    /// is not an object.
    pub fn from_json(text: &str) -> Result<Payload, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// A payload read back from the store, where it was written by [`Payload::as_str`]; checked
    /// again (without building a tree), since a damaged file must not pass for JSON.
    pub fn from_stored(text: &str) -> Result<Payload, serde_json::Error> {
        let raw = RawValue::from_string(text.to_owned())?;
        Payload::from_raw(raw).map_err(|found| {
            <serde_json::Error as de::Error>::invalid_type(found.unexpected(), &"a JSON object")
        })
    }

    /// `{"key": value}`.
    pub fn number(key: &str, value: u64) -> Payload {
        Payload::from_object(&Map::from_iter([(key.to_owned(), Value::from(value))]))
    }

    /// The object with its top-level `key` set to `value`.
    pub fn with_number(self, key: &str, value: u64) -> Payload {
        let mut object = self.to_object();
        object.insert(key.to_owned(), Value::from(value));
        Payload::from_object(&object)
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Length of the text in bytes.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Whether the object has no keys.
    pub fn is_empty(&self) -> bool {
        self.as_str() == "{}"
    }

    /// The object, parsed (for the few callers that look inside: the OpenIntent mapping).
    pub fn to_object(&self) -> Map<String, Value> {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }

    /// The text, given up.
    pub fn into_string(self) -> String {
        let text: Box<str> = self.0.into();
        text.into()
    }

    /// Whether the object has `key` at its top level.
    pub fn contains_key(&self, key: &str) -> bool {
        // A quick test first: nearly no payload mentions the key at all.
        self.as_str().contains(key) && self.top_level(key).is_some()
    }

    /// The top-level `key` as an unsigned integer, if it is one (the last, if repeated).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        top_level_u64(self.as_str(), key)
    }

    /// The object with `key: value` put first, unless it has `key` already.
    pub fn with_key_if_absent(self, key: &str, value: &RawValue) -> Payload {
        if self.contains_key(key) {
            return self;
        }
        let rest = &self.as_str()[1..];
        let separator = if self.is_empty() { "" } else { "," };
        let key = serde_json::to_string(key).expect("a string serializes");
        let text = format!("{{{key}:{}{separator}{rest}", value.get());
        Payload(RawValue::from_string(text).expect("a key and a value put into an object"))
    }

    /// The raw text of the last top-level `key`.
    pub fn top_level(&self, key: &str) -> Option<Box<RawValue>> {
        top_level(self.as_str(), key)
    }

    /// A payload of `raw` if it is an object (minified), or what it is instead.
    fn from_raw(raw: Box<RawValue>) -> Result<Payload, Found> {
        match raw.get().as_bytes().first() {
            Some(b'{') => {}
            Some(b'[') => return Err(Found::Array),
            Some(b'"') => return Err(Found::String),
            Some(b't' | b'f') => return Err(Found::Boolean),
            Some(b'n') => return Err(Found::Null),
            _ => return Err(Found::Number),
        }
        Ok(Payload(minify(raw)))
    }
}

/// The top-level `key` of the JSON object `text` as an unsigned integer, if it is one.
pub fn top_level_u64(text: &str, key: &str) -> Option<u64> {
    // A quick test first: nearly no payload mentions the key at all.
    if !text.contains(key) {
        return None;
    }
    serde_json::from_str::<u64>(top_level(text, key)?.get()).ok()
}

/// The raw text of the last top-level `key` of the JSON object `text`.
fn top_level(text: &str, key: &str) -> Option<Box<RawValue>> {
    struct Find<'k>(&'k str);
    impl<'de> Visitor<'de> for Find<'_> {
        type Value = Option<Box<RawValue>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == self.0 {
                    found = Some(map.next_value::<Box<RawValue>>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer.deserialize_map(Find(key)).ok().flatten()
}
#[derive(Clone, Copy)]
enum Found {
    Array,
    String,
    Boolean,
    Null,
    Number,
}

impl Found {
    fn unexpected(self) -> Unexpected<'static> {
        match self {
            Found::Array => Unexpected::Seq,
            Found::String => Unexpected::Other("string"),
            Found::Boolean => Unexpected::Other("boolean"),
            Found::Null => Unexpected::Unit,
            Found::Number => Unexpected::Other("number"),
        }
    }
}

/// `raw` without whitespace outside strings (serde_json's raw values keep the text as sent,
/// leading whitespace excepted). Text that has none is kept as it is.
fn minify(raw: Box<RawValue>) -> Box<RawValue> {
    let text = raw.get();
    let mut in_string = false;
    let mut escaped = false;
    let mut outside_space = false;
    for &byte in text.as_bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte.is_ascii_whitespace() {
            outside_space = true;
            break;
        }
    }
    if !outside_space {
        return raw;
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in text.chars() {
        if in_string {
            match (escaped, ch) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            out.push(ch);
        } else if ch == '"' {
            in_string = true;
            out.push(ch);
        } else if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
            out.push(ch);
        }
    }
    RawValue::from_string(out).expect("minified JSON is JSON")
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Payload::from_raw(raw)
            .map_err(|found| de::Error::invalid_type(found.unexpected(), &"a map"))
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn objects_are_kept_compact_in_their_order_and_others_refused() {
        let payload = Payload::from_json(" { \"b\" : [1, 2] ,\n \"a\": \"x y\\\" z\" } ").unwrap();
        assert_eq!(payload.as_str(), r#"{"b":[1,2],"a":"x y\" z"}"#);
        for (text, found) in [
            ("[1]", "sequence"),
            ("\"s\"", "string"),
            ("true", "boolean"),
            ("3", "number"),
        ] {
            let error = Payload::from_json(text).unwrap_err().to_string();
            assert!(
                error.contains(&format!("invalid type: {found}, expected a map")),
                "{error}"
            );
        }
        assert!(Payload::from_stored("{\"a\":").is_err());
        assert!(Payload::from_stored("[]").is_err());
    }

    #[test]
    fn keys_are_found_at_the_top_level_only() {
        let payload =
            Payload::from_json(r#"{"x":{"note_id":1},"note_id":7,"s":"note_id"}"#).unwrap();
        assert_eq!(payload.get_u64("note_id"), Some(7));
        let nested = Payload::from_json(r#"{"x":{"note_id":1},"s":"note_id"}"#).unwrap();
        assert_eq!(nested.get_u64("note_id"), None);
        assert!(!nested.contains_key("note_id"));
        let seven = RawValue::from_string("7".into()).unwrap();
        let with = nested.clone().with_key_if_absent("note_id", &seven);
        assert_eq!(with.get_u64("note_id"), Some(7));
        assert_eq!(
            with.as_str(),
            r#"{"note_id":7,"x":{"note_id":1},"s":"note_id"}"#
        );
        let empty = Payload::from_json("{}")
            .unwrap()
            .with_key_if_absent("note_id", &seven);
        assert_eq!(empty.as_str(), r#"{"note_id":7}"#);
        assert_eq!(with.clone().with_key_if_absent("note_id", &seven), with);
    }

    proptest! {
        /// Minifying keeps the value: the text parses to the same tree as what was sent, and
        /// has no whitespace outside strings.
        #[test]
        fn minified_payloads_mean_what_was_sent(
            keys in prop::collection::vec("[a-z \\\\\"\n]{0,6}", 0..6),
            spaces in prop::collection::vec(prop::sample::select(vec!["", " ", "\n\t", "  \r\n"]), 8),
        ) {
            let mut text = format!("{}{{", spaces[0]);
            for (index, key) in keys.iter().enumerate() {
                if index > 0 {
                    text.push_str(spaces[index % 8]);
                    text.push(',');
                }
                let key = serde_json::to_string(key).unwrap();
                text.push_str(&format!("{}{key}{}:{}[{key}, 15, null]", spaces[1], spaces[2], spaces[3]));
            }
            text.push_str(spaces[4]);
            text.push('}');
            let payload = Payload::from_json(&text).unwrap();
            let sent: Value = serde_json::from_str(&text).unwrap();
            let kept: Value = serde_json::from_str(payload.as_str()).unwrap();
            prop_assert_eq!(sent, kept);
            let reserialized = serde_json::to_string(&serde_json::from_str::<Value>(payload.as_str()).unwrap()).unwrap();
            prop_assert!(payload.len() <= text.len());
            // Whitespace left is inside strings only: the compact form of a tree of the same
            // keys in the same order is the same length.
            if keys.iter().collect::<std::collections::BTreeSet<_>>().len() == keys.len() {
                prop_assert_eq!(payload.len(), reserialized.len());
            }
        }
    }
}
