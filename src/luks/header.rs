//! The LUKS2 on-disk header, byte for byte: to replace the JSON metadata of a header
//! backup (`crypt_header_backup`) before libcryptsetup restores it, for the one header
//! write its API does not offer (finishing a re-encryption cut off in its last commit), and
//! to read the tokens before libcryptsetup has loaded the header (the boot's early unseal).
//! libcryptsetup validates a restored result, and its own reading of the tokens decides
//! what an early unseal is used for; nothing here writes a device.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// The binary part of each header copy; the JSON area follows it.
const BINARY_SIZE: usize = 4096;
const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_CSUM_ALG: usize = 72;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const CSUM_FIELD: usize = 64;
/// Where a secondary header can start (LUKS2 allows these header sizes only).
const HDR_SIZES: [usize; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

fn checksum(copy: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&copy[..OFF_CSUM]);
    h.update([0u8; CSUM_FIELD]);
    h.update(&copy[OFF_CSUM + CSUM_FIELD..]);
    h.finalize().into()
}

/// The binary header at `offset` if its fields are sane: (header size, sequence id).
fn intact_binary(image: &[u8], offset: usize, magic: &[u8; 6]) -> Option<(usize, u64)> {
    let bin = image.get(offset..offset + BINARY_SIZE)?;
    if &bin[..6] != magic || bin[6..8] != [0, 2] {
        return None;
    }
    let size = usize::try_from(be64(bin, OFF_HDR_SIZE)).ok()?;
    if !HDR_SIZES.contains(&size) || be64(bin, OFF_HDR_OFFSET) != offset as u64 {
        return None;
    }
    let alg = &bin[OFF_CSUM_ALG..OFF_CSUM_ALG + 32];
    if alg.split(|&b| b == 0).next() != Some(b"sha256".as_slice()) {
        return None;
    }
    Some((size, be64(bin, OFF_SEQID)))
}

/// The header copy at `offset` if it is intact: (header size, sequence id).
fn intact(image: &[u8], offset: usize, magic: &[u8; 6]) -> Option<(usize, u64)> {
    let (size, _) = intact_binary(image, offset, magic)?;
    let bin = image.get(offset..offset + BINARY_SIZE)?;
    let copy = image.get(offset..offset + size)?;
    let stored = &copy[OFF_CSUM..OFF_CSUM + CSUM_FIELD];
    (stored[..32] == checksum(copy) && stored[32..].iter().all(|&b| b == 0))
        .then(|| (size, be64(bin, OFF_SEQID)))
}

/// The newest intact copy: (offset, header size, sequence id). A kill while libcryptsetup
/// (or a restore) wrote one copy leaves the other intact.
fn newest(image: &[u8]) -> Option<(usize, usize, u64)> {
    let primary = intact(image, 0, MAGIC_PRIMARY).map(|(s, q)| (0, s, q));
    let secondary = HDR_SIZES
        .iter()
        .find_map(|&at| intact(image, at, MAGIC_SECONDARY).filter(|(s, _)| *s == at))
        .map(|(s, q)| (s, s, q));
    match (primary, secondary) {
        (Some(p), Some(s)) => Some(if s.2 > p.2 { s } else { p }),
        (p, s) => p.or(s),
    }
}

/// Header copies larger than this are left to libcryptsetup (16 KiB is the default).
const PEEK_MAX: usize = 0x10000;

/// The tokens of a device's newest intact header copy, read without libcryptsetup (None
/// if anything is amiss): the unlock starts the TPM with them while libcryptsetup loads
/// the header, and uses the result only if libcryptsetup's tokens are the same.
pub fn peek_tokens(device: &std::path::Path) -> Option<Vec<super::volume::TokenEntry>> {
    use std::io::Read;
    let mut file = std::fs::File::open(device).ok()?;
    let mut image = vec![0u8; BINARY_SIZE];
    file.read_exact(&mut image).ok()?;
    let (size, _) = intact_binary(&image, 0, MAGIC_PRIMARY)?;
    if size > PEEK_MAX {
        return None;
    }
    image.resize(2 * size, 0);
    file.read_exact(&mut image[BINARY_SIZE..]).ok()?;
    let md: serde_json::Value = serde_json::from_slice(json(&image).ok()?).ok()?;
    let mut out: Vec<_> = md
        .get("tokens")?
        .as_object()?
        .iter()
        .map(|(k, v)| {
            Some(super::volume::TokenEntry {
                id: k.parse().ok()?,
                json: v.clone(),
            })
        })
        .collect::<Option<_>>()?;
    out.sort_by_key(|t| t.id);
    Some(out)
}

/// The JSON metadata of the newest intact header copy in a header backup.
pub fn json(image: &[u8]) -> Result<&[u8], String> {
    let (at, size, _) = newest(image).ok_or("no intact LUKS2 header copy")?;
    let area = &image[at + BINARY_SIZE..at + size];
    Ok(area.split(|&b| b == 0).next().unwrap_or_default())
}

/// Rewrites both header copies of a header backup with `json` as their metadata, one
/// sequence id above the newest copy (so that libcryptsetup takes them over any copy
/// left on the device), and zeroes each `wipe` range (byte offset, length: keyslot areas
/// of keyslots `json` drops, as libcryptsetup wipes a destroyed keyslot's area). Returns
/// the byte range of the copy that was not the newest intact one: the one to write first.
pub fn rewrite(image: &mut [u8], json: &[u8], wipe: &[(u64, u64)]) -> Result<Range<usize>, String> {
    let (at, size, seqid) = newest(image).ok_or("no intact LUKS2 header copy")?;
    if json.len() >= size - BINARY_SIZE || json.contains(&0) {
        return Err("the new metadata does not fit the JSON area".into());
    }
    if image.len() < 2 * size {
        return Err("the header backup is shorter than its two header copies".into());
    }
    // The sequence id is the header's (attacker input): at its maximum there is no newer.
    let next = seqid
        .checked_add(1)
        .ok_or("the header's sequence id is at its maximum")?;
    let mut template = image[at..at + BINARY_SIZE].to_vec();
    template[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&next.to_be_bytes());
    for (offset, magic) in [(0, MAGIC_PRIMARY), (size, MAGIC_SECONDARY)] {
        let copy = &mut image[offset..offset + size];
        copy[..BINARY_SIZE].copy_from_slice(&template);
        copy[..6].copy_from_slice(magic);
        copy[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&(offset as u64).to_be_bytes());
        copy[OFF_CSUM..OFF_CSUM + CSUM_FIELD].fill(0);
        let area = &mut copy[BINARY_SIZE..];
        area.fill(0);
        area[..json.len()].copy_from_slice(json);
        let sum = checksum(copy);
        copy[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
    }
    for &(offset, len) in wipe {
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(o, l)| Some(o..o.checked_add(l)?))
            .filter(|r| r.start >= 2 * size && r.end <= image.len())
            .ok_or("a keyslot area lies outside the keyslots area")?;
        image[range].fill(0);
    }
    Ok(if at == 0 { size..2 * size } else { 0..size })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two copies of a 16 KiB header and 16 KiB of keyslots area.
    fn image(seqid: u64) -> Vec<u8> {
        let mut img = vec![0xAAu8; 3 * 0x4000];
        img[..2 * 0x4000].fill(0);
        for (offset, magic) in [(0usize, MAGIC_PRIMARY), (0x4000, MAGIC_SECONDARY)] {
            let c = &mut img[offset..offset + 0x4000];
            c[..6].copy_from_slice(magic);
            c[6..8].copy_from_slice(&[0, 2]);
            c[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&0x4000u64.to_be_bytes());
            c[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&seqid.to_be_bytes());
            c[OFF_CSUM_ALG..OFF_CSUM_ALG + 6].copy_from_slice(b"sha256");
            c[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&(offset as u64).to_be_bytes());
            c[BINARY_SIZE..BINARY_SIZE + 2].copy_from_slice(b"{}");
            let sum = checksum(c);
            c[OFF_CSUM..OFF_CSUM + 32].copy_from_slice(&sum);
        }
        img
    }

    #[test]
    fn rewrites_both_copies_with_a_higher_seqid() {
        let mut img = image(7);
        let first = rewrite(&mut img, br#"{"a":1}"#, &[(0x8000, 16)]).expect("rewrite");
        assert_eq!(first, 0x4000..0x8000);
        assert_eq!(intact(&img, 0, MAGIC_PRIMARY), Some((0x4000, 8)));
        assert_eq!(intact(&img, 0x4000, MAGIC_SECONDARY), Some((0x4000, 8)));
        assert_eq!(json(&img).expect("json"), br#"{"a":1}"#);
        assert!(img[0x8000..0x8010].iter().all(|&b| b == 0));
        assert_eq!(img[0x8010], 0xAA);
    }

    #[test]
    fn a_torn_primary_is_replaced_from_the_secondary() {
        let mut img = image(3);
        img[BINARY_SIZE + 1] = b'x';
        assert_eq!(newest(&img), Some((0x4000, 0x4000, 3)));
        assert_eq!(rewrite(&mut img, b"{}", &[]), Ok(0..0x4000));
        assert_eq!(newest(&img), Some((0, 0x4000, 4)));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let mut img = image(1);
        assert!(rewrite(&mut img, &[b' '; 0x4000], &[]).is_err());
        assert!(rewrite(&mut img, b"{}", &[(0x100, 16)]).is_err());
        assert!(rewrite(&mut vec![0u8; 0x8000], b"{}", &[]).is_err());
    }
}
