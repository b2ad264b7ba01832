//! Escrow of a recovery key to an `age` X25519 recipient (age-encryption.org/v1, armored),
//! so that whoever holds the identity decrypts it with the stock `age -d -i KEY`. sealroot
//! only encrypts: the identity never comes near the machine.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::OsRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::Secret;

const INTRO: &str = "age-encryption.org/v1";
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
const CHUNK: usize = 64 * 1024;
const RECIPIENT_HRP: &str = "age";

/// An age X25519 recipient, `age1…` (bech32).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    key: [u8; 32],
    text: String,
}

impl Recipient {
    pub fn parse(text: &str) -> Result<Recipient, String> {
        let bad = |why: &str| {
            format!("'{text}' is not an age X25519 recipient (age1…, from age-keygen): {why}")
        };
        if !text.to_ascii_lowercase().starts_with("age1") {
            return Err(bad("the prefix is not age1"));
        }
        let (hrp, data) = bech32_decode(text).map_err(|e| bad(&e))?;
        if hrp != RECIPIENT_HRP {
            return Err(bad("the prefix is not age1"));
        }
        let key: [u8; 32] = data.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(Recipient {
            key,
            text: text.to_ascii_lowercase(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Encrypts `plaintext` to `recipient`; returns the armored age file.
pub fn encrypt(recipient: &Recipient, plaintext: &[u8]) -> Result<String, String> {
    let file_key = Secret::random(16).map_err(|e| format!("no randomness: {e}"))?;
    let ephemeral = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let nonce = Secret::random(16).map_err(|e| format!("no randomness: {e}"))?;
    encrypt_with(recipient, plaintext, &file_key, &ephemeral, nonce.expose())
}

fn encrypt_with(
    recipient: &Recipient,
    plaintext: &[u8],
    file_key: &Secret,
    ephemeral: &x25519_dalek::StaticSecret,
    nonce: &[u8],
) -> Result<String, String> {
    let their = x25519_dalek::PublicKey::from(recipient.key);
    let share = x25519_dalek::PublicKey::from(ephemeral);
    let shared = ephemeral.diffie_hellman(&their);
    if !shared.was_contributory() {
        return Err("the recipient key is a low-order point".into());
    }
    let mut salt = share.as_bytes().to_vec();
    salt.extend_from_slice(&recipient.key);
    let wrap_key = hkdf(&salt, shared.as_bytes(), X25519_INFO);
    let body = ChaCha20Poly1305::new(Key::from_slice(&wrap_key[..]))
        .encrypt(Nonce::from_slice(&[0u8; 12]), file_key.expose())
        .map_err(|_| "cannot wrap the file key".to_string())?;

    let mut header = format!(
        "{INTRO}\n-> X25519 {}\n{}\n---",
        STANDARD_NO_PAD.encode(share.as_bytes()),
        STANDARD_NO_PAD.encode(&body)
    );
    let mac_key = hkdf(&[], file_key.expose(), b"header");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key[..])
        .map_err(|_| "bad header key".to_string())?;
    mac.update(header.as_bytes());
    header += &format!(" {}\n", STANDARD_NO_PAD.encode(mac.finalize().into_bytes()));

    let payload_key = hkdf(nonce, file_key.expose(), b"payload");
    let aead = ChaCha20Poly1305::new(Key::from_slice(&payload_key[..]));
    let mut out = header.into_bytes();
    out.extend_from_slice(nonce);
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![&[]]
    } else {
        plaintext.chunks(CHUNK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&(i as u64).to_be_bytes());
        n[11] = u8::from(i + 1 == chunks.len());
        let sealed = aead
            .encrypt(Nonce::from_slice(&n), *chunk)
            .map_err(|_| "cannot encrypt the payload".to_string())?;
        out.extend_from_slice(&sealed);
    }
    Ok(armor(&out))
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = Hkdf::<Sha256>::new(Some(salt), ikm).expand(info, &mut out[..]);
    out
}

fn armor(bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    let mut out = String::from("-----BEGIN AGE ENCRYPTED FILE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END AGE ENCRYPTED FILE-----\n");
    out
}

const BECH32_CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

/// BIP-173 bech32: the human-readable part and the data, checksum verified.
fn bech32_decode(text: &str) -> Result<(String, Vec<u8>), String> {
    if text.chars().any(|c| c.is_ascii_uppercase()) && text.chars().any(|c| c.is_ascii_lowercase())
    {
        return Err("mixed case".into());
    }
    let text = text.to_ascii_lowercase();
    let sep = text.rfind('1').ok_or("no separator")?;
    let (hrp, data) = (&text[..sep], &text[sep + 1..]);
    if hrp.is_empty() || data.len() < 6 {
        return Err("too short".into());
    }
    let values: Vec<u8> = data
        .bytes()
        .map(|c| {
            BECH32_CHARSET
                .iter()
                .position(|&x| x == c)
                .map(|p| p as u8)
                .ok_or("a character outside the bech32 set")
        })
        .collect::<Result<_, _>>()?;
    let mut check: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    check.push(0);
    check.extend(hrp.bytes().map(|b| b & 31));
    check.extend_from_slice(&values);
    if polymod(&check) != 1 {
        return Err("bad checksum".into());
    }
    let mut bytes = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &v in &values[..values.len() - 6] {
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    if bits >= 5 || (acc & ((1 << bits) - 1)) != 0 {
        return Err("bad padding".into());
    }
    Ok((hrp.to_string(), bytes))
}

fn polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk = 1u32;
    for &v in values {
        let top = chk >> 25;
        chk = ((chk & 0x1ffffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_checked() {
        // A key from age-keygen decodes; a changed character breaks the checksum.
        let good = "age1uvkwqystaqn973fs02htqpuyuhapauusktutz3gw28euwpqsh39spm397g";
        let r = Recipient::parse(good).unwrap();
        assert_eq!(r.as_str(), good);
        let bad = good.replace("uvkw", "uvkx");
        assert!(Recipient::parse(&bad).unwrap_err().contains("checksum"));
        assert!(Recipient::parse("age1").is_err());
        assert!(
            Recipient::parse("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
                .unwrap_err()
                .contains("prefix")
        );
    }

    #[test]
    fn armor_is_pem_shaped() {
        let r = Recipient::parse("age1uvkwqystaqn973fs02htqpuyuhapauusktutz3gw28euwpqsh39spm397g")
            .unwrap();
        let text = encrypt(&r, b"secret").unwrap();
        assert!(text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert!(text.ends_with("-----END AGE ENCRYPTED FILE-----\n"));
        assert!(!text.contains("secret"));
    }
}
