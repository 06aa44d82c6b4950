//! The shared-key challenge: Python `multiprocessing.connection`'s `deliver_challenge` and
//! `answer_challenge`, byte for byte, in both of CPython's dialects.
//!
//! The server delivers a challenge (`#CHALLENGE#` + random bytes), the client answers with an
//! HMAC of those bytes under the key, the server says `#WELCOME#` or `#FAILURE#`; then the same
//! the other way round, so each side proves the key to the other.
//!
//! CPython up to 3.11 sends 20 random bytes and expects a raw 16-byte HMAC-MD5. CPython 3.12+
//! sends `{sha256}` + 40 random bytes and expects `{sha256}` + HMAC-SHA256 of the whole message
//! (prefix included, so the digest cannot be downgraded), and still accepts a raw HMAC-MD5 from
//! an old client. We deliver the modern form and accept what CPython 3.12 accepts; we answer
//! either form. Comparisons are constant-time (`hmac`'s `verify_slice`).

use hmac::{Hmac, Mac};

pub(crate) const CHALLENGE: &[u8] = b"#CHALLENGE#";
pub(crate) const WELCOME: &[u8] = b"#WELCOME#";
pub(crate) const FAILURE: &[u8] = b"#FAILURE#";
/// Random bytes in a challenge we deliver (CPython 3.12's `MESSAGE_LENGTH`).
const MESSAGE_LENGTH: usize = 40;
/// Largest handshake message read (CPython's `recv_bytes(256)`).
pub(crate) const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// The legacy dialect: an unprefixed 20-byte challenge or 16-byte MD5 answer.
const LEGACY_LENGTHS: [usize; 2] = [20, 16];

/// A digest CPython may name in a `{...}` prefix that we can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Digest {
    Md5,
    Sha256,
    Sha384,
}

impl Digest {
    fn from_name(name: &[u8]) -> Option<Digest> {
        match name {
            b"md5" => Some(Digest::Md5),
            b"sha256" => Some(Digest::Sha256),
            b"sha384" => Some(Digest::Sha384),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
        }
    }

    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }

    /// Constant-time check of `tag` against the HMAC of `message`.
    fn verify(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message, tag),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message, tag),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message, tag),
        }
    }
}

/// Why a challenge exchange failed (the protocol half; I/O errors are the caller's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChallengeError {
    #[error("digest received was wrong")]
    WrongDigest,
    #[error("digest sent was rejected")]
    Rejected,
    #[error("protocol error: expected a challenge")]
    NotAChallenge,
    #[error("challenge too short: {0} bytes")]
    TooShort(usize),
    #[error("unsupported message length, missing digest prefix, or unsupported digest")]
    UnsupportedDigest,
}

/// Splits a challenge or answer into its digest (`None` in the legacy dialect) and payload.
fn digest_and_payload(message: &[u8]) -> Result<(Option<Digest>, &[u8]), ChallengeError> {
    if LEGACY_LENGTHS.contains(&message.len()) {
        return Ok((None, message));
    }
    // CPython looks for the '}' within the longest allowed name ("sha3_384") + 2.
    if message.first() == Some(&b'{')
        && let Some(close) = message.iter().take(10).skip(1).position(|&b| b == b'}')
    {
        let close = close + 1;
        if let Some(d) = Digest::from_name(&message[1..close]) {
            return Ok((Some(d), &message[close + 1..]));
        }
    }
    Err(ChallengeError::UnsupportedDigest)
}

/// A fresh challenge to deliver: the full frame (`#CHALLENGE#{sha256}` + 40 random bytes) and
/// the message part the answer must authenticate.
pub(crate) fn new_challenge() -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut random = [0u8; MESSAGE_LENGTH];
    multiproc_core::transport::endpoint::random_bytes(&mut random)?;
    let mut message = b"{sha256}".to_vec();
    message.extend_from_slice(&random);
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    Ok((frame, message))
}

/// Checks a client's answer to `message` (CPython 3.12's `_verify_challenge`).
pub(crate) fn verify(key: &[u8], message: &[u8], answer: &[u8]) -> Result<(), ChallengeError> {
    let (digest, tag) = digest_and_payload(answer)?;
    let digest = digest.unwrap_or(Digest::Md5);
    if digest.verify(key, message, tag) {
        Ok(())
    } else {
        Err(ChallengeError::WrongDigest)
    }
}

/// The answer to a challenge frame (CPython 3.12's `answer_challenge` + `_create_response`).
pub(crate) fn answer(key: &[u8], frame: &[u8]) -> Result<Vec<u8>, ChallengeError> {
    let message = frame
        .strip_prefix(CHALLENGE)
        .ok_or(ChallengeError::NotAChallenge)?;
    if message.len() < 20 {
        return Err(ChallengeError::TooShort(message.len()));
    }
    match digest_and_payload(message)?.0 {
        None => Ok(Digest::Md5.mac(key, message)),
        Some(d) => {
            let mut out = format!("{{{}}}", d.name()).into_bytes();
            out.extend_from_slice(&d.mac(key, message));
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_round_trip_and_wrong_key() {
        let (frame, message) = new_challenge().unwrap();
        assert!(frame.starts_with(b"#CHALLENGE#{sha256}"));
        let reply = answer(b"secret", &frame).unwrap();
        assert!(reply.starts_with(b"{sha256}"));
        assert_eq!(reply.len(), 8 + 32);
        assert_eq!(verify(b"secret", &message, &reply), Ok(()));
        assert_eq!(
            verify(b"other", &message, &reply),
            Err(ChallengeError::WrongDigest)
        );
        // An empty key is a key like any other.
        let reply = answer(b"", &frame).unwrap();
        assert_eq!(verify(b"", &message, &reply), Ok(()));
        assert!(verify(b"x", &message, &reply).is_err());
    }

    #[test]
    fn legacy_dialect() {
        // Python 3.11's deliver_challenge: 20 raw bytes, an unprefixed HMAC-MD5 answer.
        let message = [7u8; 20];
        let mut frame = CHALLENGE.to_vec();
        frame.extend_from_slice(&message);
        let reply = answer(b"k", &frame).unwrap();
        assert_eq!(reply.len(), 16);
        assert_eq!(verify(b"k", &message, &reply), Ok(()));
        // A 3.11 client answering our modern challenge with raw MD5 is accepted, as 3.12 does.
        let (frame, message) = new_challenge().unwrap();
        let raw_md5 = Digest::Md5.mac(b"k", &frame[CHALLENGE.len()..]);
        assert_eq!(verify(b"k", &message, &raw_md5), Ok(()));
    }

    #[test]
    fn known_hmac_vectors() {
        // RFC 2202 / RFC 4231 test case 2.
        let md5 = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            md5,
            [
                0x75, 0x0c, 0x78, 0x3e, 0x6a, 0xb0, 0xb5, 0x03, 0xea, 0xa8, 0x6e, 0x31, 0x0a, 0x5d,
                0xb7, 0x38
            ]
        );
        let sha = Digest::Sha256.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(&sha[..4], &[0x5b, 0xdc, 0xc1, 0x46]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(answer(b"k", b"hello"), Err(ChallengeError::NotAChallenge));
        assert_eq!(
            answer(b"k", b"#CHALLENGE#abc"),
            Err(ChallengeError::TooShort(3))
        );
        assert_eq!(
            answer(b"k", b"#CHALLENGE#{sha3_999}0123456789012345678901234"),
            Err(ChallengeError::UnsupportedDigest)
        );
        assert!(verify(b"k", b"m", b"").is_err());
        assert!(verify(b"k", b"m", b"{").is_err());
        assert!(verify(b"k", b"m", b"{sha256}").is_err());
    }
}
