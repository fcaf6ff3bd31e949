//! Email addresses of users: a plain `local@domain` check, enough to refuse obvious mistakes.

use super::ParseError;

/// Checks and normalises an email address: trimmed and lowercased, so that one mailbox is one
/// user however it was typed (mail systems treat local parts case-insensitively in practice).
pub fn parse(s: &str, field: &str) -> Result<String, ParseError> {
    let s = s.trim();
    let err = || ParseError::new(field, format!("`{s}` is not an email address"));
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(err)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.contains('@') || local.len() > 64 || !domain_ok {
        return Err(err());
    }
    Ok(format!("{local}@{domain}").to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_pass_and_mistakes_do_not() {
        assert_eq!(
            parse(" Ops@Acme.Example ", "email"),
            Ok("ops@acme.example".into())
        );
        for bad in [
            "",
            "ops",
            "ops@",
            "@acme.example",
            "ops@acme",
            "o ps@acme.example",
            "a@b@c.d",
        ] {
            assert_eq!(parse(bad, "email").unwrap_err().field, "email", "{bad}");
        }
    }
}
