//! Email addresses of users: a plain `local@domain` check, enough to refuse obvious mistakes.

use super::ParseError;

/// Most characters an address may have, as written (surrounding white space included).
pub const MAX_LEN: usize = 254;

/// Checks and normalises an email address: trimmed and lowercased, so that one mailbox is one
/// user however it was typed (mail systems treat local parts case-insensitively in practice).
/// The domain is written in ASCII (an internationalised one in its `xn--` form). The rule is
/// the pattern of `schema::email`.
pub fn parse(s: &str, field: &str) -> Result<String, ParseError> {
    let too_long = s.chars().count() > MAX_LEN;
    let s = s.trim();
    let err = || ParseError::new(field, format!("`{s}` is not an email address"));
    if too_long || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(err)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.contains('@') || local.chars().count() > 64 || !domain_ok {
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
