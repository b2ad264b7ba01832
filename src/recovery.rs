//! Recovery keys: 32 random bytes written as 64 "modhex" characters in 8 dash-separated
//! groups (the format of systemd-cryptenroll's recovery keys, so either tool's prompt takes
//! them). The keyslot passphrase is the lowercase dashed form; input is normalized first,
//! so users may type it with or without dashes, in any case, with spaces.

use crate::secret::Secret;

const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";
const KEY_BYTES: usize = 32;
const CHARS: usize = KEY_BYTES * 2;
const GROUP: usize = 8;
const FORMATTED_LEN: usize = CHARS + CHARS / GROUP - 1;

pub fn generate() -> Result<Secret, getrandom::Error> {
    let raw = Secret::random(KEY_BYTES)?;
    let mut out = Secret::with_capacity(FORMATTED_LEN);
    for (i, b) in raw.expose().iter().enumerate() {
        if i > 0 && (i * 2) % GROUP == 0 {
            out.push(b'-');
        }
        out.push(MODHEX[(b >> 4) as usize]);
        out.push(MODHEX[(b & 0xF) as usize]);
    }
    Ok(out)
}

/// The canonical form of `input` if it is a recovery key, else None (then it is treated as
/// an ordinary passphrase).
pub fn normalize(input: &[u8]) -> Option<Secret> {
    let mut out = Secret::with_capacity(FORMATTED_LEN);
    let mut count = 0;
    for &c in input {
        if c == b'-' || c.is_ascii_whitespace() {
            continue;
        }
        let lower = c.to_ascii_lowercase();
        if !MODHEX.contains(&lower) || count == CHARS {
            return None;
        }
        if count > 0 && count % GROUP == 0 {
            out.push(b'-');
        }
        out.push(lower);
        count += 1;
    }
    (count == CHARS).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_canonical() {
        let k = generate().unwrap();
        assert_eq!(k.len(), FORMATTED_LEN);
        assert_eq!(k.expose().iter().filter(|&&c| c == b'-').count(), 7);
        assert!(normalize(k.expose()).unwrap() == k);
    }

    #[test]
    fn accepts_any_case_and_no_dashes() {
        let k = generate().unwrap();
        let undashed: Vec<u8> = k.expose().iter().copied().filter(|&c| c != b'-').collect();
        let upper: Vec<u8> = undashed.iter().map(|c| c.to_ascii_uppercase()).collect();
        assert!(normalize(&undashed).unwrap() == k);
        assert!(normalize(&upper).unwrap() == k);
        let spaced: Vec<u8> = k
            .expose()
            .iter()
            .map(|&c| if c == b'-' { b' ' } else { c })
            .collect();
        assert!(normalize(&spaced).unwrap() == k);
    }

    #[test]
    fn rejects_passphrases() {
        assert!(normalize(b"correct horse battery staple").is_none());
        assert!(normalize(&[b'c'; 63]).is_none());
        assert!(normalize(&[b'c'; 65]).is_none());
    }
}
