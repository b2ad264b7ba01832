//! The Authenticode hash of a PE image (Microsoft PE/COFF spec, "Calculating the PE Image
//! Hash"): what UEFI firmware and shim measure into PCR 4 for each application they start,
//! a kernel with its EFI stub included. Not the file's hash: the checksum field, the
//! certificate-table directory entry and the certificates themselves are left out, and the
//! sections are hashed in file order.

use crate::tpm::pcr::PcrBank;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("truncated PE image (offset {at})"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("truncated PE image (offset {at})"))
}

fn range(b: &[u8], from: usize, to: usize) -> Result<&[u8], String> {
    b.get(from..to)
        .ok_or_else(|| format!("PE image: range {from}..{to} outside the file"))
}

/// The digest `bank` would record for `image` as an EFI application.
pub fn pe_hash(image: &[u8], bank: PcrBank) -> Result<Vec<u8>, String> {
    if image.get(..2) != Some(b"MZ") {
        return Err("not a PE image (no MZ header)".into());
    }
    let pe = u32_at(image, 0x3c)? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("not a PE image (no PE signature)".into());
    }
    let coff = pe + 4;
    let sections = u16_at(image, coff + 2)? as usize;
    let optional_size = u16_at(image, coff + 16)? as usize;
    let optional = coff + 20;
    let (dirs_count_at, dirs_at) = match u16_at(image, optional)? {
        0x10b => (optional + 92, optional + 96),
        0x20b => (optional + 108, optional + 112),
        m => return Err(format!("unknown PE optional header magic 0x{m:x}")),
    };
    let checksum = optional + 64;
    let size_of_headers = u32_at(image, optional + 60)? as usize;
    let dirs = u32_at(image, dirs_count_at)? as usize;
    // Data directory 4: the certificate table (file offset, size).
    let (cert_entry, cert_size) = if dirs > 4 {
        let at = dirs_at + 4 * 8;
        (Some(at), u32_at(image, at + 4)? as usize)
    } else {
        (None, 0)
    };

    let mut buf = Vec::with_capacity(image.len());
    buf.extend_from_slice(range(image, 0, checksum)?);
    match cert_entry {
        Some(at) => {
            buf.extend_from_slice(range(image, checksum + 4, at)?);
            buf.extend_from_slice(range(image, at + 8, size_of_headers)?);
        }
        None => buf.extend_from_slice(range(image, checksum + 4, size_of_headers)?),
    }
    let table = optional + optional_size;
    let mut raw: Vec<(usize, usize)> = Vec::with_capacity(sections);
    for i in 0..sections {
        let s = table + 40 * i;
        let size = u32_at(image, s + 16)? as usize;
        let pointer = u32_at(image, s + 20)? as usize;
        if size > 0 {
            raw.push((pointer, size));
        }
    }
    raw.sort_unstable();
    let mut hashed = size_of_headers;
    for (pointer, size) in raw {
        buf.extend_from_slice(range(image, pointer, pointer + size)?);
        hashed += size;
    }
    // Whatever follows the sections, minus the certificates at the end.
    let end = image.len().saturating_sub(cert_size);
    if end > hashed {
        buf.extend_from_slice(range(image, hashed, end)?);
    }
    Ok(bank.hash(&buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_pe_image() {
        assert!(pe_hash(b"hello", PcrBank::Sha256).is_err());
        let mut mz = vec![0u8; 0x100];
        mz[0] = b'M';
        mz[1] = b'Z';
        mz[0x3c] = 0x80;
        assert!(
            pe_hash(&mz, PcrBank::Sha256)
                .unwrap_err()
                .contains("PE signature")
        );
    }
}
