//! Random public identifiers and secrets, base62 encoded at fixed width.

use rand::{distr::Alphanumeric, rngs::OsRng, Rng, TryRngCore};

/// Length of a token's public id.
pub const TOKEN_ID_LEN: usize = 8;
/// Length of an account or user id.
pub const ENTITY_ID_LEN: usize = 10;
/// Length of the secret part of any credential: 22 base62 digits hold a 128-bit value.
pub const SECRET_LEN: usize = 22;
/// Length of the base62 CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;

/// `n` encoded in base62 (0-9, A-Z, a-z), left-padded with zeros to `width` digits, so every
/// credential of a kind has the same length.
pub fn base62_fixed(n: u128, width: usize) -> String {
    format!("{:0>width$}", base62::encode(n))
}

/// A random base62 string of `len` characters (ids: uniqueness, not secrecy).
pub fn random_id(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// 128 bits from the operating system's CSPRNG, as 22 base62 digits.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    // The OS generator failing is not recoverable; fall back to the thread RNG (also a CSPRNG,
    // seeded from the OS) rather than issuing nothing.
    if OsRng.try_fill_bytes(&mut bytes).is_err() {
        rand::rng().fill(&mut bytes);
    }
    base62_fixed(u128::from_le_bytes(bytes), SECRET_LEN)
}

/// Whether `s` is all base62 digits.
pub fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_encoding_pads_and_holds_the_maximum() {
        assert_eq!(base62_fixed(0, 4), "0000");
        assert_eq!(base62_fixed(61, 2), "0z");
        assert_eq!(
            base62_fixed(u32::MAX as u128, CHECKSUM_LEN).len(),
            CHECKSUM_LEN
        );
        assert_eq!(base62_fixed(u128::MAX, SECRET_LEN).len(), SECRET_LEN);
        assert_ne!(
            base62_fixed(u128::MAX, SECRET_LEN),
            base62_fixed(u128::MAX - 1, SECRET_LEN)
        );
    }

    #[test]
    fn secrets_differ_and_are_base62() {
        let a = random_secret();
        let b = random_secret();
        assert_ne!(a, b);
        assert!(is_base62(&a) && a.len() == SECRET_LEN);
        assert_eq!(random_id(TOKEN_ID_LEN).len(), TOKEN_ID_LEN);
    }
}
