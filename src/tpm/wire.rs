//! Wire helpers: ESAPI return codes, TPM2B structures, PCR selections, ESYS_TR
//! serialization.

use tss_esapi_sys::{
    TPM2B_AUTH, TPM2B_DIGEST, TPM2B_ENCRYPTED_SECRET, TPM2B_PRIVATE, TPM2B_PUBLIC,
    TPML_PCR_SELECTION, TPMS_PCR_SELECTION, TSS2_RC, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal,
    Tss2_MU_TPM2B_PRIVATE_Unmarshal, Tss2_MU_TPM2B_PUBLIC_Unmarshal,
};

use super::error::TpmError;
use super::object::name_of;
use super::pcr::PcrBank;

/// IESYSC_KEY_RSRC: the resource type of a key in a serialized ESYS_TR.
const IESYSC_KEY_RSRC: u32 = 1;

pub(super) fn check(op: &'static str, rc: TSS2_RC) -> Result<(), (&'static str, u32)> {
    if rc == 0 { Ok(()) } else { Err((op, rc)) }
}

pub(super) fn generic((op, rc): (&'static str, u32)) -> TpmError {
    crate::tpm::error::from_rc(op, rc)
}

/// The ESAPI serialization of a key's ESYS_TR (IESYS_RESOURCE): `u32 handle ‖ TPM2B_NAME ‖
/// u32 IESYSC_KEY_RSRC ‖ TPM2B_PUBLIC` — systemd stores the same bytes as `tpm2_srk`.
pub fn serialized_key_resource(handle: u32, public_tpm2b: &[u8]) -> Result<Vec<u8>, TpmError> {
    let name = name_of(public_tpm2b)?;
    let mut out = Vec::with_capacity(12 + name.len() + public_tpm2b.len());
    out.extend_from_slice(&handle.to_be_bytes());
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(&name);
    out.extend_from_slice(&IESYSC_KEY_RSRC.to_be_bytes());
    out.extend_from_slice(public_tpm2b);
    Ok(out)
}

/// The parts of a serialized key ESYS_TR: (handle, Name, TPM2B_PUBLIC). The Name must be
/// the public area's, or ESAPI would trust a Name the public area does not have.
pub fn parse_key_resource(bytes: &[u8]) -> Result<(u32, Vec<u8>, Vec<u8>), TpmError> {
    let bad = |what: &str| TpmError::Invalid(format!("serialized key: {what}"));
    let take = <[u8]>::split_at_checked;
    let (handle, rest) = take(bytes, 4).ok_or_else(|| bad("truncated"))?;
    let (size, rest) = take(rest, 2).ok_or_else(|| bad("truncated"))?;
    let (name, rest) = take(rest, usize::from(u16::from_be_bytes([size[0], size[1]])))
        .ok_or_else(|| bad("truncated name"))?;
    let (kind, public) = take(rest, 4).ok_or_else(|| bad("truncated"))?;
    if kind != IESYSC_KEY_RSRC.to_be_bytes() {
        return Err(bad("not a key"));
    }
    if name_of(public)? != name {
        return Err(bad("its Name is not its public area's"));
    }
    let handle = u32::from_be_bytes([handle[0], handle[1], handle[2], handle[3]]);
    Ok((handle, name.to_vec(), public.to_vec()))
}

pub(super) type Unmarshal<T> = unsafe extern "C" fn(*const u8, u64, *mut u64, *mut T) -> TSS2_RC;

/// A TPM structure from wire bytes, all of them.
pub(super) fn unmarshal<T>(bytes: &[u8], f: Unmarshal<T>, what: &str) -> Result<T, TpmError> {
    // SAFETY: only instantiated with TPM2B_*/TPMT_* structs: plain data, all zeros is valid.
    let mut out: T = unsafe { std::mem::zeroed() };
    let mut offset = 0u64;
    // SAFETY: the buffer and output are live; the MU function checks bounds.
    let rc = unsafe { f(bytes.as_ptr(), bytes.len() as u64, &mut offset, &mut out) };
    if rc != 0 || offset != bytes.len() as u64 {
        return Err(TpmError::Invalid(format!("bad {what}")));
    }
    Ok(out)
}

// Public for the fuzz targets: the parsers of the wire bytes a token carries.
pub fn unmarshal_private(bytes: &[u8]) -> Result<TPM2B_PRIVATE, TpmError> {
    unmarshal(bytes, Tss2_MU_TPM2B_PRIVATE_Unmarshal, "TPM2B_PRIVATE")
}

pub fn unmarshal_public(bytes: &[u8]) -> Result<TPM2B_PUBLIC, TpmError> {
    unmarshal(bytes, Tss2_MU_TPM2B_PUBLIC_Unmarshal, "TPM2B_PUBLIC")
}

/// The import seed of an object sealed offline.
pub fn unmarshal_encrypted_secret(bytes: &[u8]) -> Result<TPM2B_ENCRYPTED_SECRET, TpmError> {
    unmarshal(
        bytes,
        Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal,
        "TPM2B_ENCRYPTED_SECRET",
    )
}

pub(super) type Marshal<T> = unsafe extern "C" fn(*const T, *mut u8, u64, *mut u64) -> TSS2_RC;

/// Wire bytes of a TPM structure.
pub(super) fn marshal<T>(value: &T, f: Marshal<T>, what: &str) -> Result<Vec<u8>, TpmError> {
    // Large enough for any TPM2B_PUBLIC or TPM2B_PRIVATE.
    let mut buf = vec![0u8; 4096];
    let mut offset = 0u64;
    // SAFETY: value and buf are live; the MU function checks bounds.
    let rc = unsafe { f(value, buf.as_mut_ptr(), buf.len() as u64, &mut offset) };
    if rc != 0 {
        return Err(TpmError::Invalid(format!(
            "cannot marshal {what} (0x{rc:x})"
        )));
    }
    buf.truncate(offset as usize);
    Ok(buf)
}

pub(super) fn tpm2b_digest(bytes: &[u8]) -> Result<TPM2B_DIGEST, TpmError> {
    let mut d = TPM2B_DIGEST {
        size: 0,
        buffer: [0u8; 64],
    };
    if bytes.len() > d.buffer.len() {
        return Err(TpmError::Invalid("digest too long".into()));
    }
    d.size = bytes.len() as u16;
    d.buffer[..bytes.len()].copy_from_slice(bytes);
    Ok(d)
}

pub(super) fn tpm2b_auth(bytes: &[u8]) -> Result<TPM2B_AUTH, TpmError> {
    tpm2b_digest(bytes)
}

pub(super) fn pcr_selection(bank: PcrBank, pcrs: &[u32]) -> TPML_PCR_SELECTION {
    let mut sel = TPMS_PCR_SELECTION {
        hash: bank.alg_id(),
        sizeofSelect: 3,
        pcrSelect: [0; 4],
    };
    for &i in pcrs {
        sel.pcrSelect[(i / 8) as usize] |= 1 << (i % 8);
    }
    // SAFETY: plain data; all zeros is valid.
    let mut list: TPML_PCR_SELECTION = unsafe { std::mem::zeroed() };
    list.count = 1;
    list.pcrSelections[0] = sel;
    list
}

/// A pointer filled by ESAPI, freed with Esys_Free when dropped.
pub(super) struct EsysBox<T>(pub(super) *mut T);

impl<T> EsysBox<T> {
    pub(super) fn null() -> EsysBox<T> {
        EsysBox(std::ptr::null_mut())
    }

    /// The value, if ESAPI filled it.
    pub(super) fn get(&self) -> Option<&T> {
        // SAFETY: null or a valid allocation by ESAPI, alive until drop.
        unsafe { self.0.as_ref() }
    }

    pub(super) fn get_mut(&mut self) -> Option<&mut T> {
        // SAFETY: as above.
        unsafe { self.0.as_mut() }
    }
}

impl<T> Drop for EsysBox<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by ESAPI, freed once.
            unsafe { tss_esapi_sys::Esys_Free(self.0.cast()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn key_resource_matches_systemd_tpm2_srk_vector() {
        // tokens-systemd.md §3.3: a tpm2_srk field written by systemd (= Esys_TR_Serialize).
        let vector = base64::engine::general_purpose::STANDARD
            .decode("gQAAAQAiAAv5sLge1GM24g8z8nGVwj63AzM3lF2hByQxbh7A0TfsJwAAAAEAWgAjAAsAAwRyAAAABgCAAEMAEAADABAAIFsbfkcs48O3R29GrqlI9KOrqZPkoXQQb6WcYwwN4NibACDM5iwqa8lnLk89PJ10t0O6cpBaKn3nEayvLDm/8KVV8w==")
            .unwrap();
        let public = &vector[4 + 2 + 34 + 4..];
        assert_eq!(
            serialized_key_resource(0x8100_0001, public).unwrap(),
            vector
        );
    }

    #[test]
    fn key_resource_parses_back() {
        let vector = base64::engine::general_purpose::STANDARD
            .decode("gQAAAQAiAAv5sLge1GM24g8z8nGVwj63AzM3lF2hByQxbh7A0TfsJwAAAAEAWgAjAAsAAwRyAAAABgCAAEMAEAADABAAIFsbfkcs48O3R29GrqlI9KOrqZPkoXQQb6WcYwwN4NibACDM5iwqa8lnLk89PJ10t0O6cpBaKn3nEayvLDm/8KVV8w==")
            .unwrap();
        let (handle, _, public) = parse_key_resource(&vector).unwrap();
        assert_eq!(handle, 0x8100_0001);
        assert_eq!(serialized_key_resource(handle, &public).unwrap(), vector);
        let mut lying = vector.clone();
        lying[10] ^= 1; // inside the Name
        assert!(parse_key_resource(&lying).is_err());
        assert!(parse_key_resource(&vector[..20]).is_err());
    }

    #[test]
    fn selection_layout() {
        let s = pcr_selection(PcrBank::Sha256, &[4, 9, 15]);
        assert_eq!(s.count, 1);
        assert_eq!(s.pcrSelections[0].hash, 0x000B);
        assert_eq!(s.pcrSelections[0].pcrSelect, [0x10, 0x82, 0, 0]);
    }
}
