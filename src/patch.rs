//! `Patch<T>`: a field that may be absent, explicitly `null`, or a value, so that an update can
//! tell "leave it" from "clear it" (`"description": null` clears a note; absence keeps it).

use serde::{Deserialize, Deserializer};

/// Absent, null, or a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    /// The field was not given.
    #[default]
    Absent,
    /// The field was given as `null`.
    Null,
    /// The field was given a value.
    Value(T),
}

impl<T> Patch<T> {
    /// `Some(None)` for null, `Some(Some(v))` for a value, `None` when absent.
    pub fn given(self) -> Option<Option<T>> {
        match self {
            Patch::Absent => None,
            Patch::Null => Some(None),
            Patch::Value(v) => Some(Some(v)),
        }
    }

    /// Checks a given value with `f`: `None` when absent, `Some(None)` for null,
    /// `Some(Some(checked))` for a value.
    pub fn try_given<U, E>(
        self,
        f: impl FnOnce(T) -> Result<U, E>,
    ) -> Result<Option<Option<U>>, E> {
        Ok(match self {
            Patch::Absent => None,
            Patch::Null => Some(None),
            Patch::Value(v) => Some(Some(f(v)?)),
        })
    }

    /// A patch from an optional value: `None` is absent.
    pub fn from_option(v: Option<T>) -> Self {
        v.map_or(Patch::Absent, Patch::Value)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the field is present (absent fields take the Default).
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(v) => Patch::Value(v),
        })
    }
}

/// For optional fields where `null` means nothing sensible: absent is `None`, a value is
/// `Some`, and `null` is an error naming the field (`#[serde(default, deserialize_with = "non_null")]`).
pub fn non_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Whole numbers in request bodies. JSON has one number type, and a client (or a generator
/// working from the OpenAPI document, where `1.0` is an integer) may write a whole number as
/// `1.0`: these read `5`, `5.0` and `5e0` alike, and refuse `5.5` or a string, naming the field.
pub mod whole {
    use super::Patch;
    use crate::domain::limits::Whole;
    use serde::{Deserialize, Deserializer};

    /// An optional whole number (`#[serde(default, deserialize_with = "whole::option")]`):
    /// absent and `null` are `None`.
    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
    }

    /// An optional whole number that may not be `null`
    /// (`#[serde(default, deserialize_with = "whole::non_null")]`).
    pub fn non_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Whole::deserialize(d).map(|w| Some(w.0))
    }

    /// A whole number that may be absent, `null` or a value
    /// (`#[serde(default, deserialize_with = "whole::patch")]`).
    pub fn patch<'de, D: Deserializer<'de>>(d: D) -> Result<Patch<i64>, D::Error> {
        Ok(match Option::<Whole>::deserialize(d)? {
            None => Patch::Null,
            Some(w) => Patch::Value(w.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        a: Patch<i64>,
    }

    #[derive(Deserialize)]
    struct W {
        #[serde(default, deserialize_with = "whole::option")]
        o: Option<i64>,
        #[serde(default, deserialize_with = "whole::patch")]
        p: Patch<i64>,
    }

    #[test]
    fn whole_numbers_read_however_written() {
        let w: W = serde_json::from_str(r#"{"o": 5.0, "p": 1e3}"#).unwrap();
        assert_eq!((w.o, w.p), (Some(5), Patch::Value(1000)));
        let w: W = serde_json::from_str(r#"{"o": null, "p": null}"#).unwrap();
        assert_eq!((w.o, w.p), (None, Patch::Null));
        let w: W = serde_json::from_str(r#"{"o": -7}"#).unwrap();
        assert_eq!((w.o, w.p), (Some(-7), Patch::Absent));
        for bad in [
            r#"{"o": 1.5}"#,
            r#"{"o": "5"}"#,
            r#"{"p": 1e19}"#,
            r#"{"o": 18446744073709551615}"#,
            r#"{"p": true}"#,
        ] {
            assert!(serde_json::from_str::<W>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absent_null_and_value_differ() {
        assert_eq!(serde_json::from_str::<P>("{}").unwrap().a, Patch::Absent);
        assert_eq!(
            serde_json::from_str::<P>(r#"{"a":null}"#).unwrap().a,
            Patch::Null
        );
        assert_eq!(
            serde_json::from_str::<P>(r#"{"a":3}"#).unwrap().a,
            Patch::Value(3)
        );
    }
}
