//! How the node's keys are protected at rest (`security.tpm`).
//!
//! With a TPM, the secrets directory holds one random 256-bit key-encryption key sealed by
//! the TPM (`tpm.sealed`: the sealed object's public and private parts, the private part
//! encrypted by the TPM with a key that never leaves it), and every protected secret file
//! (storage keys, the CA keys, the token-signing and other secret keys) holds its content
//! encrypted with it (AES-256-GCM, the file's name as associated data, so files cannot be
//! swapped). The files alone, or copied to another machine, or opened after the TPM was
//! cleared, are useless. Without a TPM the files are the secrets themselves, mode 0600 in a
//! 0700 directory, and every service says so at start and in its `/health`.
//!
//! A node that gains a TPM seals on its next start: each plain secret file is rewritten
//! encrypted the first time it is read (atomically, so a crash leaves one form or the
//! other). A secrets directory with a `tpm.sealed` is never opened without its TPM: keys are
//! not regenerated, which would orphan the data they protect.
//!
//! The key-encryption key is unsealed once per process and secrets directory and kept in
//! memory, as the storage keys themselves are.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ring::aead;

use crate::StorageError;
use crate::tpm::{Sealed, Tcti, Tpm};

/// The file holding the sealed key-encryption key, in the secrets directory.
pub const SEALED_FILE: &str = "tpm.sealed";
const SEALED_HEADER: &str = "outpost-tpm-sealed-v1";
/// How a protected file's content starts when it is encrypted.
const WRAPPED: &str = "outpost-sealed-v1:";

/// `security.tpm`: where the TPM is, or whether to look for one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Setting {
    /// The kernel's TPM (`/dev/tpmrm0`) when the node has one this user may open; key files
    /// otherwise.
    #[default]
    Auto,
    /// Key files only. A secrets directory sealed by a TPM is refused.
    Off,
    /// This TPM, required.
    Tpm(Tcti),
}

impl Setting {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            tcti => Tcti::parse(tcti)
                .map(Self::Tpm)
                .map_err(|e| format!("{e}, or auto, or off")),
        }
    }
}

/// The protection in force for a secrets directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InForce {
    Tpm(Tcti),
    Files,
}

impl std::fmt::Display for InForce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InForce::Tpm(t) => write!(f, "sealed by the TPM ({t})"),
            InForce::Files => f.write_str("key files only (mode 0600, no TPM)"),
        }
    }
}

static SETTING: OnceLock<Setting> = OnceLock::new();

/// Chooses the protection for this process (from `security.tpm`), before any secret is
/// read. Without it, secrets are plain files and sealed ones are refused.
pub fn install(setting: Setting) {
    if SETTING.set(setting.clone()).is_err() && SETTING.get() != Some(&setting) {
        tracing::warn!("the key protection was chosen already; keeping the first choice");
    }
}

fn setting() -> &'static Setting {
    SETTING.get().unwrap_or(&Setting::Off)
}

struct State {
    in_force: InForce,
    kek: Option<aead::LessSafeKey>,
}

type Resolved = Arc<State>;

/// The key-encryption key of each secrets directory, once unsealed.
fn cache() -> &'static Mutex<HashMap<PathBuf, Resolved>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Resolved>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

fn key_error(path: &Path, why: impl Into<String>) -> StorageError {
    StorageError::Key {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// The protection in force for `secrets` (unsealing its key if needed).
pub fn in_force(secrets: &Path) -> Result<InForce, StorageError> {
    resolve(secrets).map(|s| s.in_force.clone())
}

fn resolve(secrets: &Path) -> Result<Resolved, StorageError> {
    // One resolution at a time: it may create the sealed key, and talks to the TPM.
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = cache.get(secrets) {
        return Ok(Arc::clone(s));
    }
    let state = Arc::new(resolve_uncached(secrets, setting())?);
    cache.insert(secrets.to_path_buf(), Arc::clone(&state));
    Ok(state)
}

fn resolve_uncached(secrets: &Path, setting: &Setting) -> Result<State, StorageError> {
    let sealed_path = secrets.join(SEALED_FILE);
    let files = State {
        in_force: InForce::Files,
        kek: None,
    };
    let tcti = match setting {
        Setting::Tpm(t) => t.clone(),
        Setting::Off if sealed_path.exists() => {
            return Err(key_error(
                &sealed_path,
                "the node's keys are sealed by a TPM but security.tpm is off: set it to auto \
                 or to the TPM (device:/dev/tpmrm0, swtpm:host=H,port=P)",
            ));
        }
        Setting::Off => return Ok(files),
        Setting::Auto => {
            let t = Tcti::default_device();
            if !sealed_path.exists()
                && let Err(e) = Tpm::open(&t)
            {
                if matches!(&t, Tcti::Device(p) if p.exists()) {
                    tracing::warn!(error = %e, "a TPM is present but cannot be used; the keys stay in files");
                }
                return Ok(files);
            }
            t
        }
    };
    crate::ensure_private_dir(secrets)?;
    loop {
        match fs::read_to_string(&sealed_path) {
            Ok(text) => {
                let sealed = parse_sealed(&text).ok_or_else(|| {
                    key_error(&sealed_path, "not a sealed key of this version of Outpost")
                })?;
                let kek = Tpm::open(&tcti)
                    .and_then(|mut tpm| tpm.unseal(&sealed))
                    .map_err(|e| {
                        let why = if e.is_foreign_object() {
                            format!(
                                "cannot unseal the node's keys with the TPM at {tcti}: they were \
                                 sealed by another TPM, or this one was cleared since; the data \
                                 under this data dir opens only with that TPM ({e})"
                            )
                        } else {
                            format!("cannot unseal the node's keys: {e}")
                        };
                        key_error(&sealed_path, why)
                    })?;
                return Ok(State {
                    in_force: InForce::Tpm(tcti),
                    kek: Some(aead_key(&sealed_path, &kek)?),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io(
                    format!("read {}", sealed_path.display()),
                    e,
                ));
            }
        }
        // Sealed files without their sealed key: a new key would leave them unreadable for
        // good (and the original, if it is restored, could not open what the new one sealed).
        if let Some(orphan) = sealed_files(secrets).first() {
            return Err(key_error(
                &sealed_path,
                format!(
                    "it is missing while {} is sealed: restore it (from a backup of this data \
                     dir); no new key is made",
                    orphan.display()
                ),
            ));
        }
        // First use with this TPM: seal a new key, and check it unseals before anything is
        // encrypted with it.
        let kek = crate::Key::generate()?;
        let made = Tpm::open(&tcti).and_then(|mut tpm| {
            let sealed = tpm.seal(&kek.0)?;
            let back = tpm.unseal(&sealed)?;
            Ok((sealed, back))
        });
        let sealed = match made {
            Ok(s) => s,
            // `auto` on a TPM that cannot seal (an owner password, lockout, no ECC):
            // nothing is sealed yet, so the key files stay as they are.
            Err(e) if *setting == Setting::Auto => {
                tracing::warn!(tpm = %tcti, error = %e, "the TPM cannot seal the node's keys; they stay in files");
                return Ok(files);
            }
            Err(e) => return Err(key_error(&sealed_path, format!("cannot seal a key: {e}"))),
        };
        if sealed.1 != kek.0 {
            return Err(key_error(&sealed_path, "the TPM unsealed something else"));
        }
        match crate::write_secret_file(&sealed_path, format_sealed(&sealed.0).as_bytes()) {
            Ok(()) => {
                tracing::info!(tpm = %tcti, "sealed the node's keys by the TPM");
                return Ok(State {
                    in_force: InForce::Tpm(tcti),
                    kek: Some(aead_key(&sealed_path, &kek.0)?),
                });
            }
            // Another process sealed first: use its key.
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
}

/// The files of `secrets` that are sealed, or keys being rotated in.
fn sealed_files(secrets: &Path) -> Vec<PathBuf> {
    fs::read_dir(secrets)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| is_sealed(p) || p.to_string_lossy().ends_with(PENDING))
                .collect()
        })
        .unwrap_or_default()
}

fn aead_key(path: &Path, bytes: &[u8]) -> Result<aead::LessSafeKey, StorageError> {
    aead::UnboundKey::new(&aead::AES_256_GCM, bytes)
        .map(aead::LessSafeKey::new)
        .map_err(|_| key_error(path, "the sealed key is not 256 bits"))
}

fn format_sealed(s: &Sealed) -> String {
    format!(
        "{SEALED_HEADER}\n{}\n{}\n",
        hex::encode(&s.public),
        hex::encode(&s.private)
    )
}

fn parse_sealed(text: &str) -> Option<Sealed> {
    let mut lines = text.lines();
    if lines.next()? != SEALED_HEADER {
        return None;
    }
    let public = hex::decode(lines.next()?).ok()?;
    let private = hex::decode(lines.next()?).ok()?;
    Some(Sealed { public, private })
}

/// The secrets directory a key file belongs to: the nearest ancestor named `secrets` (a
/// service's own keys are in a directory of their own beneath it), else its directory.
fn secrets_dir(path: &Path) -> &Path {
    path.ancestors()
        .skip(1)
        .find(|a| a.file_name().is_some_and(|n| n == "secrets"))
        .or_else(|| path.parent())
        .unwrap_or(Path::new("."))
}

/// What protects the key file `path` ([`in_force`] of its secrets directory).
pub fn in_force_for(path: &Path) -> Result<InForce, StorageError> {
    in_force(secrets_dir(path))
}

/// The name a file's content is bound to: its own, a key being rotated in (`K.next`)
/// bound to the name it will have (`K`).
fn aad(path: &Path) -> aead::Aad<Vec<u8>> {
    let name = path.file_name().map(|n| n.as_encoded_bytes());
    let name = name.unwrap_or_default();
    let name = name.strip_suffix(PENDING.as_bytes()).unwrap_or(name);
    aead::Aad::from(name.to_vec())
}

/// The suffix of a key being rotated in ([`pending`]).
const PENDING: &str = ".next";

/// Where the key replacing `path` waits while `outpost keys rotate` re-encrypts what
/// `path` protects (`core-data.key.next`).
pub fn pending(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(PENDING);
    path.with_file_name(name)
}

fn wrap(state: &State, path: &Path, plain: &[u8]) -> Result<Vec<u8>, StorageError> {
    let Some(kek) = &state.kek else {
        return Ok(plain.to_vec());
    };
    let mut nonce = [0u8; aead::NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| key_error(path, format!("no randomness: {e}")))?;
    let mut buf = plain.to_vec();
    kek.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aad(path),
        &mut buf,
    )
    .map_err(|_| key_error(path, "cannot encrypt"))?;
    let mut out = Vec::with_capacity(nonce.len() + buf.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    Ok(format!("{WRAPPED}{}\n", hex::encode(out)).into_bytes())
}

fn unwrap_content(state: &State, path: &Path, hexed: &str) -> Result<Vec<u8>, StorageError> {
    let Some(kek) = &state.kek else {
        return Err(key_error(
            path,
            format!(
                "it is sealed by a TPM, but {} is missing: restore it, or the data under this \
                 data dir cannot be opened",
                secrets_dir(path).join(SEALED_FILE).display()
            ),
        ));
    };
    let mut raw = hex::decode(hexed.trim()).map_err(|_| key_error(path, "not a sealed secret"))?;
    if raw.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
        return Err(key_error(path, "not a sealed secret"));
    }
    let mut nonce = [0u8; aead::NONCE_LEN];
    nonce.copy_from_slice(&raw[..aead::NONCE_LEN]);
    let plain = kek
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aad(path),
            &mut raw[aead::NONCE_LEN..],
        )
        .map_err(|_| {
            key_error(
                path,
                "it does not decrypt with the node's sealed key (tampered with, or from another node)",
            )
        })?;
    Ok(plain.to_vec())
}

/// Reads a protected secret file (refusing one others can read), decrypting it if it is
/// sealed; a plain one is sealed in place when a TPM protects the directory. A key whose
/// rotation did not finish is refused: what it protects may be under its successor already.
pub fn read(path: &Path) -> Result<Vec<u8>, StorageError> {
    if pending(path).exists() {
        return Err(key_error(
            path,
            "its rotation did not finish (part of what it protects may be under the new key): \
             run `outpost keys rotate` again with the node stopped",
        ));
    }
    read_rotating(path)
}

/// [`read`] for the rotation itself, which reads a key and its successor.
pub fn read_rotating(path: &Path) -> Result<Vec<u8>, StorageError> {
    crate::check_private_file(path)?;
    let text =
        fs::read(path).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;
    let state = resolve(secrets_dir(path))?;
    if let Some(hexed) = text.strip_prefix(WRAPPED.as_bytes()) {
        let hexed =
            std::str::from_utf8(hexed).map_err(|_| key_error(path, "not a sealed secret"))?;
        return unwrap_content(&state, path, hexed);
    }
    if state.kek.is_some() {
        let sealed = wrap(&state, path, &text)?;
        crate::replace_secret_file(path, &sealed)?;
        tracing::info!(path = %path.display(), "sealed a key file by the TPM");
    }
    Ok(text)
}

/// Creates the protected secret file `path` (failing if it exists, so a concurrent creator
/// is never overwritten).
pub fn create(path: &Path, plain: &[u8]) -> Result<(), StorageError> {
    let state = resolve(secrets_dir(path))?;
    crate::write_secret_file(path, &wrap(&state, path, plain)?)
}

/// Replaces the protected secret file `path` atomically.
pub fn replace(path: &Path, plain: &[u8]) -> Result<(), StorageError> {
    let state = resolve(secrets_dir(path))?;
    crate::replace_secret_file(path, &wrap(&state, path, plain)?)
}

/// Reads a secret file that may be sealed (decrypting it then) or plain (as it is): for keys
/// written sealed or not depending on what they are.
pub fn read_if_sealed(path: &Path) -> Result<Vec<u8>, StorageError> {
    let text =
        fs::read(path).map_err(|e| StorageError::io(format!("read {}", path.display()), e))?;
    match text.strip_prefix(WRAPPED.as_bytes()) {
        Some(hexed) => {
            let state = resolve(secrets_dir(path))?;
            let hexed =
                std::str::from_utf8(hexed).map_err(|_| key_error(path, "not a sealed secret"))?;
            unwrap_content(&state, path, hexed)
        }
        None => Ok(text),
    }
}

/// The keys in `secrets` whose rotation did not finish (their successor waits beside them).
pub fn unfinished_rotations(secrets: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(secrets)
        .map(|it| {
            it.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(PENDING))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether `path` holds a sealed secret (for checks and tests).
pub fn is_sealed(path: &Path) -> bool {
    fs::read(path).is_ok_and(|t| t.starts_with(WRAPPED.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> State {
        State {
            in_force: InForce::Files,
            kek: None,
        }
    }

    fn keyed(byte: u8) -> State {
        State {
            in_force: InForce::Tpm(Tcti::default_device()),
            kek: Some(aead_key(Path::new("k"), &[byte; 32]).unwrap()),
        }
    }

    #[test]
    fn settings_parse() {
        assert_eq!(Setting::parse("auto").unwrap(), Setting::Auto);
        assert_eq!(Setting::parse("off").unwrap(), Setting::Off);
        assert_eq!(
            Setting::parse("device:/dev/tpm0").unwrap(),
            Setting::Tpm(Tcti::Device("/dev/tpm0".into()))
        );
        let e = Setting::parse("on").unwrap_err();
        assert!(e.contains("auto, or off"), "{e}");
    }

    #[test]
    fn a_wrapped_secret_opens_only_with_its_key_and_under_its_name() {
        let (a, b) = (keyed(1), keyed(2));
        let path = Path::new("/s/core-data.key");
        let sealed = String::from_utf8(wrap(&a, path, b"secret").unwrap()).unwrap();
        let hexed = sealed.strip_prefix(WRAPPED).unwrap();
        assert!(!sealed.contains("secret"));
        assert_eq!(unwrap_content(&a, path, hexed).unwrap(), b"secret");
        assert!(unwrap_content(&b, path, hexed).is_err(), "another key");
        let other = Path::new("/s/gateway-jwt.key");
        assert!(
            unwrap_content(&a, other, hexed).is_err(),
            "another file's name"
        );
        let e = unwrap_content(&files(), path, hexed)
            .unwrap_err()
            .to_string();
        assert!(e.contains(SEALED_FILE), "{e}");
        // Files without a TPM are the secret itself.
        assert_eq!(wrap(&files(), path, b"x").unwrap(), b"x");
    }

    #[test]
    fn the_sealed_file_round_trips() {
        let s = Sealed {
            public: vec![0, 2, 1, 2],
            private: vec![0, 1, 9],
        };
        assert_eq!(parse_sealed(&format_sealed(&s)), Some(s));
        assert_eq!(parse_sealed("other\n00\n00\n"), None);
    }
}
