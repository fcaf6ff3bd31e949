//! Allowed client addresses: single IPs or CIDR blocks, IPv4 and IPv6.

use super::ParseError;
use ipnet::IpNet;
use std::net::IpAddr;

/// Most address rules one token may carry.
pub const MAX_RULES: usize = 100;

/// Parses one IP or CIDR; a plain address becomes a /32 or /128 and host bits are cleared.
pub fn parse_rule(s: &str, field: &str) -> Result<IpNet, ParseError> {
    let s = s.trim();
    let bad = || ParseError::new(field, format!("`{s}` is not an IP address or CIDR block"));
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    // The address as `IpAddr` reads it (no leading zero in an IPv4 octet), the prefix in plain
    // decimal: the rule of `schema::ip_rule_pattern`.
    let ip = addr.parse::<IpAddr>().map_err(|_| bad())?;
    let Some(prefix) = prefix else {
        return Ok(IpNet::from(ip));
    };
    let plain = !prefix.is_empty()
        && prefix.len() <= 3
        && prefix.bytes().all(|b| b.is_ascii_digit())
        && (prefix == "0" || !prefix.starts_with('0'));
    let len = prefix
        .parse::<u8>()
        .ok()
        .filter(|_| plain)
        .ok_or_else(bad)?;
    IpNet::new(ip, len).map(|n| n.trunc()).map_err(|_| bad())
}

/// Parses a list of rules, naming the index of a bad one (`allowed_ips[1]`).
pub fn parse_list(items: &[String], field: &str) -> Result<Vec<IpNet>, ParseError> {
    if items.len() > MAX_RULES {
        return Err(ParseError::new(
            field,
            format!("at most {MAX_RULES} entries"),
        ));
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let net = parse_rule(s, &format!("{field}[{i}]"))?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// Whether `ip` is inside `rule`. An IPv4 client seen through an IPv6 socket is still that IPv4
/// client.
pub fn rule_allows(rule: &IpNet, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    rule.contains(&ip)
}

/// Whether `ip` is allowed by `rules` (an empty list allows any address).
pub fn allows(rules: &[IpNet], ip: IpAddr) -> bool {
    rules.is_empty() || rules.iter().any(|n| rule_allows(n, ip))
}

/// Whether `ip` is inside one of `rules` (an empty list allows nothing): for trust lists.
pub fn allows_nonempty(rules: &[IpNet], ip: IpAddr) -> bool {
    !rules.is_empty() && allows(rules, ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_blocks() {
        let rules = parse_list(
            &[
                "10.1.2.3".into(),
                "192.168.0.0/16".into(),
                "2001:db8::/32".into(),
            ],
            "ips",
        )
        .unwrap();
        assert!(allows(&rules, "10.1.2.3".parse().unwrap()));
        assert!(!allows(&rules, "10.1.2.4".parse().unwrap()));
        assert!(allows(&rules, "192.168.77.1".parse().unwrap()));
        assert!(allows(&rules, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(allows(&rules, "2001:db8::1".parse().unwrap()));
        assert!(allows(&[], "8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_cleared_and_bad_entries_are_named() {
        assert_eq!(
            parse_rule("10.1.2.3/8", "f").unwrap().to_string(),
            "10.0.0.0/8"
        );
        let err = parse_list(&["1.2.3.4".into(), "1.2.3.400".into()], "allowed_ips").unwrap_err();
        assert_eq!(err.field, "allowed_ips[1]");
        assert!(parse_rule("10.0.0.0/33", "f").is_err());
    }
}
