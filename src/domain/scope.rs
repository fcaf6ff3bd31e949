//! Scopes: the calls a token may make. Empty means all; a trailing `*` matches any suffix.

use super::ParseError;

/// Most scopes one token may carry.
pub const MAX_SCOPES: usize = 64;
/// Longest scope, in characters (ASCII only).
pub const MAX_LEN: usize = 128;

/// One allowed call or call prefix (`convert:pdf`, `convert:*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(String);

impl Scope {
    /// Parses one scope; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(ParseError::new(
                field,
                format!("must be 1 to {MAX_LEN} characters"),
            ));
        }
        let body = s.strip_suffix('*').unwrap_or(s);
        let ok = body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
        if !ok {
            return Err(ParseError::new(
                field,
                "may hold letters, digits and _ . : / - only, with an optional trailing *",
            ));
        }
        Ok(Scope(s.to_string()))
    }

    /// Whether this scope allows `call`.
    pub fn allows(&self, call: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => call.starts_with(prefix),
            None => self.0 == call,
        }
    }

    /// The scope as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scopes as written.
pub fn to_strings(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.0.clone()).collect()
}

/// Parses a list of scopes, naming the index of a bad one (`scopes[2]`).
pub fn parse_list(items: &[String], field: &str) -> Result<Vec<Scope>, ParseError> {
    if items.len() > MAX_SCOPES {
        return Err(ParseError::new(
            field,
            format!("at most {MAX_SCOPES} scopes"),
        ));
    }
    let mut out: Vec<Scope> = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let scope = Scope::parse(s, &format!("{field}[{i}]"))?;
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    Ok(out)
}

/// Whether `scopes` allow `call` (an empty list allows everything).
pub fn allows(scopes: &[Scope], call: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|s| s.allows(call))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_prefixes_and_exact_scopes_match_exactly() {
        let scopes = parse_list(&["convert:*".into(), "stats".into()], "scopes").unwrap();
        assert!(allows(&scopes, "convert:pdf"));
        assert!(allows(&scopes, "stats"));
        assert!(!allows(&scopes, "stats:export"));
        assert!(!allows(&scopes, "delete"));
        assert!(allows(&[], "anything"));
        assert!(allows(&[Scope::parse("*", "s").unwrap()], "x"));
    }

    #[test]
    fn bad_scopes_name_their_index() {
        let err = parse_list(&["ok".into(), "bad scope".into()], "scopes").unwrap_err();
        assert_eq!(err.field, "scopes[1]");
        assert_eq!(Scope::parse("a*b", "s").unwrap_err().field, "s");
        assert!(Scope::parse("", "s").is_err());
    }
}
