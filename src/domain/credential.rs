//! Credential formats: API tokens (`<prefix>_<id><secret><crc>`), account secrets
//! (`<prefix>_sk_<account><secret><crc>`) and the operator credential (`<prefix>_op_<secret><crc>`).
//!
//! The trailing CRC32 (base62) covers everything before it, so a mistyped or truncated value is
//! rejected without a store lookup and secret scanners can recognise a leaked one. Only the
//! SHA-256 of a credential is ever stored.

use super::ids::{
    base62_fixed, is_base62, random_id, random_secret, CHECKSUM_LEN, ENTITY_ID_LEN, SECRET_LEN,
    TOKEN_ID_LEN,
};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// A plain credential value. It is shown once and never logged: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain(String);

impl Plain {
    /// The value itself, for the one response that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the value, the only form that is stored.
    pub fn hash(&self) -> Vec<u8> {
        sha256(&self.0)
    }
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plain(***)")
    }
}

/// SHA-256 of `s`.
pub fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// Constant-time comparison of a presented hash with a stored one.
pub fn hashes_match(presented: &[u8], stored: &[u8]) -> bool {
    presented.len() == stored.len() && bool::from(presented.ct_eq(stored))
}

fn checksum(body: &str) -> String {
    base62_fixed(crc32fast::hash(body.as_bytes()) as u128, CHECKSUM_LEN)
}

fn seal(body: String) -> Plain {
    let sum = checksum(&body);
    Plain(body + &sum)
}

/// Splits off and checks the checksum, returning the body before it.
fn unseal(s: &str) -> Option<&str> {
    if s.len() <= CHECKSUM_LEN || !s.is_ascii() {
        return None;
    }
    let (body, sum) = s.split_at(s.len() - CHECKSUM_LEN);
    bool::from(checksum(body).as_bytes().ct_eq(sum.as_bytes())).then_some(body)
}

/// A new token value for the public id `id`.
pub fn new_token(prefix: &str, id: &str) -> Plain {
    seal(format!("{prefix}_{id}{}", random_secret()))
}

/// Characters a batch of token ids shares at its start.
const BATCH_ID_PREFIX: usize = 2;

/// `n` new public token ids for one creation (`n` = 1 for a single token): a random prefix they share, then distinct random
/// characters. The store's index of ids then takes a batch in one place, a few pages, rather
/// than a page per token scattered over the whole index (which made each creation slower as the
/// tokens grew). Every id is still uniform over all ids; only the batch is seen to belong
/// together, which its creation time shows anyway.
pub fn new_token_ids(n: usize) -> Vec<String> {
    let prefix = random_id(BATCH_ID_PREFIX);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let id = prefix.clone() + &random_id(TOKEN_ID_LEN - BATCH_ID_PREFIX);
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    ids
}

/// A new account secret for `account_id`.
pub fn new_account_secret(prefix: &str, account_id: &str) -> Plain {
    seal(format!("{prefix}_sk_{account_id}{}", random_secret()))
}

/// A new operator credential.
pub fn new_operator_credential(prefix: &str) -> Plain {
    seal(format!("{prefix}_op_{}", random_secret()))
}

/// What a presented credential claims to be, after its format and checksum were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// An API token with this public id.
    Token {
        /// The token's public id.
        id: String,
        /// SHA-256 of the whole value.
        hash: Vec<u8>,
    },
    /// The secret of this account.
    AccountSecret {
        /// The account it claims to belong to.
        account_id: String,
        /// SHA-256 of the whole value.
        hash: Vec<u8>,
    },
    /// The operator credential.
    Operator {
        /// SHA-256 of the whole value.
        hash: Vec<u8>,
    },
}

/// Why a presented value is not a credential of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Not our prefix, wrong length or characters.
    #[error("not a tokenwarden credential")]
    Shape,
    /// Right shape, wrong checksum: mistyped or altered.
    #[error("checksum mismatch")]
    Checksum,
}

/// Classifies and checks a presented credential without touching the store.
pub fn parse(prefix: &str, s: &str) -> Result<Presented, Malformed> {
    let rest = s
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .ok_or(Malformed::Shape)?;
    let hash = || sha256(s);
    if let Some(r) = rest.strip_prefix("sk_") {
        expect_shape(r, ENTITY_ID_LEN + SECRET_LEN)?;
        unseal(s).ok_or(Malformed::Checksum)?;
        return Ok(Presented::AccountSecret {
            account_id: r[..ENTITY_ID_LEN].to_string(),
            hash: hash(),
        });
    }
    if let Some(r) = rest.strip_prefix("op_") {
        expect_shape(r, SECRET_LEN)?;
        unseal(s).ok_or(Malformed::Checksum)?;
        return Ok(Presented::Operator { hash: hash() });
    }
    expect_shape(rest, TOKEN_ID_LEN + SECRET_LEN)?;
    unseal(s).ok_or(Malformed::Checksum)?;
    Ok(Presented::Token {
        id: rest[..TOKEN_ID_LEN].to_string(),
        hash: hash(),
    })
}

fn expect_shape(rest: &str, body_len: usize) -> Result<(), Malformed> {
    if rest.len() == body_len + CHECKSUM_LEN && is_base62(rest) {
        Ok(())
    } else {
        Err(Malformed::Shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn a_batch_of_ids_shares_its_start_and_holds_no_duplicate() {
        let ids = new_token_ids(5000);
        assert_eq!(ids.len(), 5000);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5000);
        let start = &ids[0][..BATCH_ID_PREFIX];
        for id in &ids {
            assert_eq!(id.len(), TOKEN_ID_LEN);
            assert!(is_base62(id), "{id}");
            assert_eq!(&id[..BATCH_ID_PREFIX], start);
        }
        // The rest varies from id to id: every position takes many values.
        for pos in BATCH_ID_PREFIX..TOKEN_ID_LEN {
            let seen: HashSet<u8> = ids.iter().map(|id| id.as_bytes()[pos]).collect();
            assert!(seen.len() > 50, "position {pos}: {}", seen.len());
        }
    }

    #[test]
    fn a_new_token_parses_back_to_its_id_and_hash() {
        let t = new_token("tw", "AbCdEf12");
        assert!(t.expose().starts_with("tw_AbCdEf12"));
        assert_eq!(t.expose().len(), 3 + 8 + 22 + 6);
        match parse("tw", t.expose()).unwrap() {
            Presented::Token { id, hash } => {
                assert_eq!(id, "AbCdEf12");
                assert_eq!(hash, t.hash());
            }
            other => panic!("wrong kind {other:?}"),
        }
    }

    #[test]
    fn one_changed_character_fails_the_checksum() {
        let t = new_token("tw", "AbCdEf12");
        let mut chars: Vec<char> = t.expose().chars().collect();
        chars[15] = if chars[15] == 'a' { 'b' } else { 'a' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(parse("tw", &typo), Err(Malformed::Checksum));
    }

    #[test]
    fn wrong_prefix_length_or_alphabet_is_a_shape_error() {
        let t = new_token("tw", "AbCdEf12");
        assert_eq!(parse("xx", t.expose()), Err(Malformed::Shape));
        assert_eq!(parse("tw", &t.expose()[..20]), Err(Malformed::Shape));
        assert_eq!(
            parse("tw", "tw_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"),
            Err(Malformed::Shape)
        );
        assert_eq!(parse("tw", ""), Err(Malformed::Shape));
        assert_eq!(parse("tw", "tw_ÄÖÜ"), Err(Malformed::Shape));
    }

    #[test]
    fn secrets_and_operator_credentials_are_told_apart() {
        let s = new_account_secret("tw", "acct000001");
        assert!(matches!(
            parse("tw", s.expose()),
            Ok(Presented::AccountSecret { account_id, .. }) if account_id == "acct000001"
        ));
        let o = new_operator_credential("tw");
        assert!(matches!(
            parse("tw", o.expose()),
            Ok(Presented::Operator { .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_value() {
        let t = new_token("tw", "AbCdEf12");
        assert!(!format!("{t:?}").contains("AbCdEf12"));
    }

    #[test]
    fn hash_comparison() {
        assert!(hashes_match(&sha256("a"), &sha256("a")));
        assert!(!hashes_match(&sha256("a"), &sha256("b")));
        assert!(!hashes_match(&sha256("a"), &[]));
    }
}
