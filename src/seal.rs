//! The master key and sealing: secrets the daemon must be able to read back (the plain value of a
//! JWT-signing token, which is its HMAC key) are kept encrypted with AES-256-GCM under a master
//! key that never enters the store.

use crate::domain::credential::{sha256, Plain};
use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use anyhow::Context;
use rand::TryRngCore;
use std::{fmt, path::Path};

const NONCE_LEN: usize = 12;

/// The 256-bit master key. `Debug` never shows it.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value cannot be opened with this master key")]
pub struct OpenError;

impl MasterKey {
    /// Reads the key from `path` (64 hex digits), or, when the file does not exist, generates one
    /// from the OS CSPRNG and writes it there with mode 0600.
    pub fn load_or_create(path: &Path) -> anyhow::Result<MasterKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_hex(text.trim()).with_context(|| {
                format!(
                    "{}: not a master key (64 hex digits expected)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng
                    .try_fill_bytes(&mut key)
                    .map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                if !crate::files::create_secret_file(path, &hex(&key))? {
                    // Another process (a second daemon on this data directory) made it first.
                    return Self::load_or_create(path);
                }
                tracing::info!(path = %path.display(), "master key generated (mode 0600); back it up with the store");
                Ok(MasterKey(key))
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the master key {}", path.display()))
            }
        }
    }

    fn from_hex(s: &str) -> anyhow::Result<MasterKey> {
        anyhow::ensure!(s.len() == 64, "wrong length");
        anyhow::ensure!(s.bytes().all(|b| b.is_ascii_hexdigit()), "not hex digits");
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
        }
        Ok(MasterKey(key))
    }

    /// A fingerprint stored once per store, so a daemon started with a different key refuses to
    /// run instead of failing every JWT later.
    pub fn fingerprint(&self) -> String {
        hex(&sha256(&format!(
            "tokenwarden master key check:{}",
            hex(&self.0)
        )))
    }

    /// Seals `plain`, bound to `context` (the token id): nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, plain: &Plain, context: &str) -> Vec<u8> {
        let cipher = Aes256Gcm::new(&self.0.into());
        let mut nonce = [0u8; NONCE_LEN];
        if rand::rngs::OsRng.try_fill_bytes(&mut nonce).is_err() {
            rand::Rng::fill(&mut rand::rng(), &mut nonce);
        }
        let payload = Payload {
            msg: plain.expose().as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption with a valid key and nonce length cannot fail.
        let sealed = cipher
            .encrypt(&Nonce::from(nonce), payload)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, OpenError> {
        if sealed.len() <= NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        let cipher = Aes256Gcm::new(&self.0.into());
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::credential::new_token;

    #[test]
    fn daemons_starting_together_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| MasterKey::load_or_create(&path).unwrap().fingerprint()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
        let on_disk = MasterKey::load_or_create(&path).unwrap().fingerprint();
        assert_eq!(on_disk, keys[0]);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary files left behind");
    }

    #[test]
    fn a_key_file_of_other_text_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        // 64 bytes, but "é" is two of them: slicing by byte would split it.
        std::fs::write(&path, format!("é{}", "0".repeat(62))).unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err();
        assert!(format!("{e:#}").contains("not a master key"), "{e:#}");
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::load_or_create(&path).unwrap();
        let again = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(
            key.fingerprint(),
            again.fingerprint(),
            "the file is read back"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let t = new_token("tw", "AbCdEf12");
        let sealed = key.seal(&t, "AbCdEf12");
        assert!(!sealed
            .windows(10)
            .any(|w| t.expose().as_bytes().windows(10).any(|x| x == w)));
        assert_eq!(
            again.open(&sealed, "AbCdEf12").unwrap(),
            t.expose().as_bytes()
        );
        assert_eq!(key.open(&sealed, "OtherId1"), Err(OpenError));
        let other = MasterKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.open(&sealed, "AbCdEf12"), Err(OpenError));
        assert_ne!(other.fingerprint(), key.fingerprint());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(key.open(&tampered, "AbCdEf12"), Err(OpenError));
        std::fs::write(dir.path().join("bad.key"), "nothex").unwrap();
        assert!(MasterKey::load_or_create(&dir.path().join("bad.key")).is_err());
    }
}
