//! docs/configuration.md documents exactly the keys the config file accepts.
//!
//! The keys come from the code, not from a list kept here: `Config`'s own `Deserialize` impl is
//! driven by a probing deserializer that records the field names serde passes to
//! `deserialize_struct` (the names `deny_unknown_fields` accepts, after any `rename`). Nested
//! tables (a field whose type is a struct, `Option` of one, or a list of them) are probed the same
//! way and reported as `table.key` (the table itself keeps its own row). A new field shows up
//! here without touching this file.
//!
//! In the document, a key is the first cell of a table row written as `` `key` `` (nested ones as
//! `` `table.key` ``), as in `| `max_connections` | integer | `1024` | … |`.

use std::collections::BTreeSet;
use std::fmt;

use apopd::config::Config;
use serde::Deserialize;
use serde::de::value::{Error, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

const DOC: &str = "docs/configuration.md";

/// The fields of the struct reached by following `path` (field names) from `Config`, or `None`
/// when that value is not a struct (a string, a number, a list of strings…).
fn struct_fields(path: &[&str]) -> Option<Vec<&'static str>> {
    let mut found = None;
    // The probe always ends in an error (it never produces a value); what it saw is in `found`.
    let _ = Config::deserialize(Probe { path, found: &mut found });
    found
}

/// A deserializer that walks down `path` and, at its end, records the fields of the struct there.
struct Probe<'p, 'f> {
    path: &'p [&'p str],
    found: &'f mut Option<Vec<&'static str>>,
}

impl<'de> de::Deserializer<'de> for Probe<'_, '_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("not a table"))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list of tables (`[[name]]`): probe its one element.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneElement(Some(self)))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.path.split_first() {
            None => {
                *self.found = Some(fields.to_vec());
                Err(de::Error::custom("recorded"))
            }
            Some((&key, rest)) => {
                visitor.visit_map(OneEntry { key: Some(key), value: Some(Probe { path: rest, found: self.found }) })
            }
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

/// A map with one key, whose value is probed further.
struct OneEntry<'p, 'f> {
    key: Option<&'p str>,
    value: Option<Probe<'p, 'f>>,
}

impl<'de> MapAccess<'de> for OneEntry<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.key.take() {
            Some(key) => {
                let key: StrDeserializer<'_, Error> = key.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(self.value.take().expect("one value per key"))
    }
}

/// A sequence of one element, which is probed further.
struct OneElement<'p, 'f>(Option<Probe<'p, 'f>>);

impl<'de> SeqAccess<'de> for OneElement<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        match self.0.take() {
            Some(probe) => seed.deserialize(probe).map(Some),
            None => Ok(None),
        }
    }
}

/// Every key of the config file: top-level ones as `key`, nested ones as `table.key`.
fn code_keys() -> BTreeSet<String> {
    fn walk(path: &mut Vec<&'static str>, keys: &mut BTreeSet<String>) {
        let Some(fields) = struct_fields(path) else { return };
        for field in fields {
            path.push(field);
            keys.insert(path.join("."));
            if path.len() < 4 {
                walk(path, keys);
            }
            path.pop();
        }
    }
    let mut keys = BTreeSet::new();
    walk(&mut Vec::new(), &mut keys);
    keys
}

/// The keys the document lists: first cells of table rows that are one backquoted key name.
fn doc_keys(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let cell = line.trim().strip_prefix('|')?.split('|').next()?.trim();
            let key = cell.strip_prefix('`')?.strip_suffix('`')?;
            let is_key = !key.is_empty()
                && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
            is_key.then(|| key.to_owned())
        })
        .collect()
}

struct Keys<'a>(&'a BTreeSet<String>);

impl fmt::Display for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(String::as_str).collect();
        write!(f, "{}", names.join(", "))
    }
}

#[test]
fn the_probe_finds_the_config_keys() {
    let keys = code_keys();
    for key in ["listen", "mail_root", "tls_cert", "max_connections", "run_as_group"] {
        assert!(keys.contains(key), "{key} missing from {}", Keys(&keys));
    }
    assert!(!keys.iter().any(|k| k.starts_with("listen.")), "a list of addresses is not a table: {}", Keys(&keys));
}

#[test]
fn configuration_md_documents_every_config_key_and_no_other() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let code = code_keys();
    let doc = doc_keys(&text);
    let missing: BTreeSet<String> = code.difference(&doc).cloned().collect();
    let stale: BTreeSet<String> = doc.difference(&code).cloned().collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{DOC} is out of step with src/config.rs.\n\
         Keys the config accepts but {DOC} has no table row for (add a row `| `key` | type | default | meaning |`): {}\n\
         Keys {DOC} lists that the config does not accept (remove or rename them): {}",
        Keys(&missing),
        Keys(&stale)
    );
}
