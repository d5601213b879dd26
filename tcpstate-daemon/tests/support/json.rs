//! JSON through `serde_json`, with what the tests need beyond it: a parse that rejects an object
//! holding a member twice (`serde_json` keeps the last silently: a dashboard with a duplicate
//! must fail its test, not lose a setting), the items of a value that may not be an array, and
//! every value of a tree.

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, SeqAccess, Visitor},
};
pub use serde_json::Value;

/// Parses `text`, rejecting objects that hold a member twice.
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|Strict(value)| value)
}

/// The items of an array; none for any other value.
pub fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// Every value in this tree, depth first (this one included).
pub fn walk(value: &Value) -> Vec<&Value> {
    let mut out = vec![value];
    match value {
        Value::Array(items) => items.iter().for_each(|item| out.extend(walk(item))),
        Value::Object(members) => members.values().for_each(|item| out.extend(walk(item))),
        _ => {}
    }
    out
}

/// A [`Value`] read by [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// Builds a [`Value`] as `serde_json` does, but fails on a member named twice.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = sequence.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if members.contains_key(&name) {
                return Err(de::Error::custom(format_args!("duplicate member `{name}`")));
            }
            members.insert(name, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parse_rejects_a_member_named_twice() {
        let nested = r#"{"panels": [{"id": 1, "title": "a", "id": 2}]}"#;
        let error = parse_strict(nested).unwrap_err().to_string();
        assert!(error.contains("duplicate member `id`"), "{error}");
        let value = parse_strict(r#"{"a": [1, -2, 2.5, "x\u00e9", true, null], "b": {}}"#).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": [1, -2, 2.5, "xé", true, null], "b": {}})
        );
        assert_eq!(walk(&value).len(), 9);
        assert_eq!(items(&value["a"]).len(), 6);
        assert!(items(&value["b"]).is_empty());
        assert!(parse_strict("{\"a\": 1} x").is_err());
    }
}
