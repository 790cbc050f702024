//! Time-based one-time passwords (RFC 6238): HMAC-SHA1, 30-second steps,
//! six digits, one step of clock drift either way. A code is accepted only
//! for a step later than the last one used, so no code works twice.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::random_bytes;

/// Seconds per time step.
pub const TOTP_STEP_S: u64 = 30;
/// Digits per code.
pub const TOTP_DIGITS: u32 = 6;
/// Steps of clock drift accepted before and after the current one.
pub const TOTP_DRIFT_STEPS: u64 = 1;
/// Bytes of a shared secret (160 bits, as RFC 4226 recommends).
pub const TOTP_SECRET_BYTES: usize = 20;

/// A new random secret.
pub fn new_secret() -> Vec<u8> {
    random_bytes::<TOTP_SECRET_BYTES>().to_vec()
}

/// The secret as authenticator apps take it (RFC 4648 base32, no padding).
pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// Decodes a base32 secret.
pub fn secret_from_base32(text: &str) -> Option<Vec<u8>> {
    data_encoding::BASE32_NOPAD.decode(text.as_bytes()).ok()
}

/// The code for time step `step` (RFC 4226 dynamic truncation).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value =
        u32::from_be_bytes(digest[offset..offset + 4].try_into().expect("4 bytes")) & 0x7fff_ffff;
    value % 10u32.pow(TOTP_DIGITS)
}

/// Checks `code` at Unix time `now_s`. Returns the step it belongs to when it
/// is right and that step is later than `last_used_step` (so a code, or an
/// older one, cannot be replayed).
pub fn check(secret: &[u8], code: &str, now_s: u64, last_used_step: u64) -> Option<u64> {
    if code.len() != TOTP_DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u32 = code.parse().ok()?;
    let current = now_s / TOTP_STEP_S;
    (current.saturating_sub(TOTP_DRIFT_STEPS)..=current + TOTP_DRIFT_STEPS)
        .filter(|&step| step > last_used_step)
        .find(|&step| code_at(secret, step) == code)
}

/// The `otpauth://` URI an authenticator app scans (as a QR code) to enrol.
pub fn otpauth_uri(issuer: &str, user: &str, secret: &[u8]) -> String {
    let label = |text: &str| {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_S}",
        label(issuer),
        label(user),
        secret_base32(secret),
        label(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows, last six digits.
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59u64, 287_082u32),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(code_at(secret, time / TOTP_STEP_S), code, "at {time}");
        }
    }

    #[test]
    fn a_code_works_once_within_the_drift() {
        let secret = new_secret();
        let now = 1_700_000_000;
        let code = format!("{:06}", code_at(&secret, now / TOTP_STEP_S));
        let step = check(&secret, &code, now, 0).expect("right code");
        assert_eq!(step, now / TOTP_STEP_S);
        assert_eq!(check(&secret, &code, now, step), None, "no replay");
        assert_eq!(
            check(&secret, &code, now + 31, 0),
            Some(step),
            "one step late"
        );
        assert_eq!(check(&secret, &code, now + 95, 0), None, "too late");
        assert_eq!(check(&secret, "12345", now, 0), None);
        let uri = otpauth_uri("Starling", "alice@example", &secret);
        assert!(
            uri.starts_with("otpauth://totp/Starling:alice%40example?secret="),
            "{uri}"
        );
        assert_eq!(secret_from_base32(&secret_base32(&secret)).unwrap(), secret);
    }
}
