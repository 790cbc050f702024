//! Checkpoint signing keys: Ed25519, in PEM files (PKCS#8 for the private
//! key, SubjectPublicKeyInfo for the public key, as `openssl genpkey
//! -algorithm ed25519` writes them) or raw 32-byte files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::codec::{Checkpoint, KEY_ID_BYTES};
use super::AuditError;

/// Length of a raw key file (an Ed25519 secret seed or public key).
pub const RAW_KEY_BYTES: usize = 32;
/// Permission bits a private key file must not have (group and others).
const PRIVATE_KEY_FORBIDDEN_MODE: u32 = 0o077;

/// The id stored in a checkpoint to name the key that signed it.
pub fn key_id(key: &VerifyingKey) -> [u8; KEY_ID_BYTES] {
    let digest = Sha256::digest(key.as_bytes());
    digest[..KEY_ID_BYTES].try_into().expect("8 bytes")
}

/// Signs checkpoints.
pub struct AuditSigner {
    key: SigningKey,
    key_id: [u8; KEY_ID_BYTES],
}

impl std::fmt::Debug for AuditSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        write!(f, "AuditSigner {{ key_id: {} }}", hex(&self.key_id))
    }
}

impl AuditSigner {
    /// A signer with this key.
    pub fn new(key: SigningKey) -> AuditSigner {
        AuditSigner {
            key_id: key_id(&key.verifying_key()),
            key,
        }
    }

    /// Loads the private key file (see [`load_signing_key`]).
    pub fn from_file(path: &Path) -> Result<AuditSigner, AuditError> {
        load_signing_key(path).map(AuditSigner::new)
    }

    /// The id of the key, stored in every checkpoint it signs.
    pub fn key_id(&self) -> [u8; KEY_ID_BYTES] {
        self.key_id
    }

    /// The public key that verifies this signer's checkpoints.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Fills in `checkpoint.key_id` and `checkpoint.signature`.
    pub fn sign(&self, checkpoint: &mut Checkpoint) {
        checkpoint.key_id = self.key_id;
        checkpoint.signature = [0; 64];
        checkpoint.signature = self.key.sign(&checkpoint.signed_message()).to_bytes();
    }
}

/// Checks a checkpoint's signature with the one of `keys` whose id it
/// names (several keys: a log whose signing key was rotated).
pub fn verify_checkpoint(keys: &[VerifyingKey], checkpoint: &Checkpoint) -> Result<(), String> {
    let Some(key) = keys.iter().find(|key| key_id(key) == checkpoint.key_id) else {
        let given: Vec<String> = keys.iter().map(|key| hex(&key_id(key))).collect();
        return Err(format!(
            "signed by another key (key id {}; the given public keys have ids {})",
            hex(&checkpoint.key_id),
            given.join(", ")
        ));
    };
    let signature = ed25519_dalek::Signature::from_bytes(&checkpoint.signature);
    key.verify_strict(&checkpoint.signed_message(), &signature)
        .map_err(|_| "the signature does not verify".to_string())
}

/// Generates a key pair: the private key at `out` (PKCS#8 PEM, created with
/// mode 0600, never overwriting) and the public key at `out` + `.pub` (PEM).
/// Returns the public key file's path.
pub fn generate_key_files(out: &Path) -> Result<PathBuf, AuditError> {
    let mut seed = [0u8; RAW_KEY_BYTES];
    getrandom::fill(&mut seed).map_err(|error| AuditError::Key {
        path: out.to_path_buf(),
        detail: format!("the operating system's random source failed: {error}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|error| AuditError::Key {
            path: out.to_path_buf(),
            detail: format!("cannot encode the key: {error}"),
        })?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|error| AuditError::Key {
            path: out.to_path_buf(),
            detail: format!("cannot encode the public key: {error}"),
        })?;
    let mut public_path = out.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    write_new_file(out, private.as_bytes(), 0o600)?;
    write_new_file(&public_path, public.as_bytes(), 0o644)?;
    Ok(public_path)
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AuditError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                AuditError::Key {
                    path: path.to_path_buf(),
                    detail: "exists already; keygen never overwrites a key, choose another path"
                        .into(),
                }
            } else {
                AuditError::io("create", path, error)
            }
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|error| AuditError::io("write", path, error))
}

/// Loads a private key: PKCS#8 PEM or 32 raw bytes. Refuses a file that
/// group or others may read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, AuditError> {
    let mode = fs::metadata(path)
        .map_err(|error| AuditError::io("read", path, error))?
        .permissions()
        .mode();
    if mode & PRIVATE_KEY_FORBIDDEN_MODE != 0 {
        return Err(AuditError::Key {
            path: path.to_path_buf(),
            detail: format!(
                "has mode {:04o}: group or others may read the private key; run `chmod 600` on it (and consider it leaked if others could read it)",
                mode & 0o7777
            ),
        });
    }
    let bytes = fs::read(path).map_err(|error| AuditError::io("read", path, error))?;
    if let Ok(raw) = <[u8; RAW_KEY_BYTES]>::try_from(bytes.as_slice()) {
        return Ok(SigningKey::from_bytes(&raw));
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("");
    SigningKey::from_pkcs8_pem(text).map_err(|error| AuditError::Key {
        path: path.to_path_buf(),
        detail: format!(
            "is neither an Ed25519 private key in PKCS#8 PEM (BEGIN PRIVATE KEY) nor 32 raw bytes ({error}); create one with `starling audit keygen --out FILE`"
        ),
    })
}

/// Loads a public key: SubjectPublicKeyInfo PEM or 32 raw bytes.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, AuditError> {
    let bytes = fs::read(path).map_err(|error| AuditError::io("read", path, error))?;
    let bad = |detail: String| AuditError::Key {
        path: path.to_path_buf(),
        detail,
    };
    if let Ok(raw) = <[u8; RAW_KEY_BYTES]>::try_from(bytes.as_slice()) {
        return VerifyingKey::from_bytes(&raw)
            .map_err(|error| bad(format!("is not a valid Ed25519 public key: {error}")));
    }
    let text = std::str::from_utf8(&bytes).unwrap_or("");
    VerifyingKey::from_public_key_pem(text).map_err(|error| {
        bad(format!(
            "is neither an Ed25519 public key in PEM (BEGIN PUBLIC KEY) nor 32 raw bytes ({error}); give the `.pub` file that `starling audit keygen` wrote"
        ))
    })
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
