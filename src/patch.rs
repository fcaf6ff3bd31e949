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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(default)]
        a: Patch<i64>,
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
