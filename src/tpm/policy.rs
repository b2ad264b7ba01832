//! Policy digests computed in software (TPM 2.0 Part 1 §19.7, Part 3 §23), so a key can be
//! sealed to expected PCR values rather than to whatever the TPM holds right now, and
//! `status` can tell whether a token's policy holds without asking the TPM to unseal.
//! The same assertions sent to the TPM are in `policy_session`.

use sha2::{Digest, Sha256};

use super::pcr::{PcrBank, pcr_selection_bytes};

const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
const TPM_CC_POLICY_NV: u32 = 0x0000_0149;

pub type PolicyDigest = [u8; 32];

/// The policy of a sealed object as sealroot builds it: PolicyPCR over the selected PCRs
/// (omitted when there are none), then PolicyAuthValue when a PIN is set.
pub struct PolicySpec<'a> {
    pub bank: PcrBank,
    /// Ascending PCR indexes paired with their expected values in `bank`.
    pub pcrs: &'a [(u32, Vec<u8>)],
    pub pin: bool,
}

impl PolicySpec<'_> {
    /// The digest in a SHA-256 session (sealroot's objects always use one).
    pub fn digest(&self) -> PolicyDigest {
        let b = PolicyBuilder::new(PcrBank::Sha256).pcr(self.bank, self.pcrs);
        let d = if self.pin { b.auth_value() } else { b }.digest();
        let mut out = [0u8; 32];
        out.copy_from_slice(&d);
        out
    }
}

/// SHA-256 over the PCR values concatenated in ascending index order: the `pcrDigest`
/// argument of TPM2_PolicyPCR.
pub fn pcr_values_digest(pcrs: &[(u32, Vec<u8>)]) -> [u8; 32] {
    let mut sorted: Vec<&(u32, Vec<u8>)> = pcrs.iter().collect();
    sorted.sort_by_key(|(i, _)| *i);
    let mut h = Sha256::new();
    for (_, v) in sorted {
        h.update(v);
    }
    h.finalize().into()
}

/// A policy digest built assertion by assertion in software, for a session of hash `hash`
/// (sealroot and systemd use SHA-256; clevis may use SHA-1).
pub struct PolicyBuilder {
    hash: PcrBank,
    digest: Vec<u8>,
}

impl PolicyBuilder {
    pub fn new(hash: PcrBank) -> PolicyBuilder {
        PolicyBuilder {
            hash,
            digest: vec![0u8; hash.digest_len()],
        }
    }

    fn extend(&mut self, parts: &[&[u8]]) {
        let mut buf = std::mem::take(&mut self.digest);
        for p in parts {
            buf.extend_from_slice(p);
        }
        self.digest = self.hash.hash(&buf);
    }

    /// PolicyPCR over `pcrs` (index, value in `bank`); none: no assertion.
    pub fn pcr(mut self, bank: PcrBank, pcrs: &[(u32, Vec<u8>)]) -> PolicyBuilder {
        if pcrs.is_empty() {
            return self;
        }
        let mut sorted: Vec<&(u32, Vec<u8>)> = pcrs.iter().collect();
        sorted.sort_by_key(|(i, _)| *i);
        let indexes: Vec<u32> = sorted.iter().map(|(i, _)| *i).collect();
        let values: Vec<u8> = sorted.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let values_digest = self.hash.hash(&values);
        self.extend(&[
            &TPM_CC_POLICY_PCR.to_be_bytes(),
            &pcr_selection_bytes(bank, &indexes),
            &values_digest,
        ]);
        self
    }

    /// PolicyAuthorize by the key named `key_name` with `policy_ref`: the digest is reset
    /// to the key's policy, whatever came before.
    pub fn authorize(mut self, key_name: &[u8], policy_ref: &[u8]) -> PolicyBuilder {
        self.digest = vec![0u8; self.hash.digest_len()];
        self.extend(&[&TPM_CC_POLICY_AUTHORIZE.to_be_bytes(), key_name]);
        self.extend(&[policy_ref]);
        self
    }

    /// PolicyNV(index == value) on an 8-byte counter named `nv_name`, offset 0.
    pub fn nv_equals(mut self, nv_name: &[u8], value: u64) -> PolicyBuilder {
        let mut args = value.to_be_bytes().to_vec();
        args.extend_from_slice(&0u16.to_be_bytes()); // offset
        args.extend_from_slice(&0u16.to_be_bytes()); // TPM_EO_EQ
        let args = self.hash.hash(&args);
        self.extend(&[&TPM_CC_POLICY_NV.to_be_bytes(), &args, nv_name]);
        self
    }

    pub fn auth_value(mut self) -> PolicyBuilder {
        self.extend(&[&TPM_CC_POLICY_AUTH_VALUE.to_be_bytes()]);
        self
    }

    pub fn digest(self) -> Vec<u8> {
        self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Vectors captured from systemd-cryptenroll 252 and clevis 19 against swtpm
    // (shared/reference/tokens-systemd.md §11, tokens-clevis.md §11).
    #[test]
    fn systemd_pcr7_zero() {
        let pcrs = [(7, vec![0u8; 32])];
        let spec = PolicySpec {
            bank: PcrBank::Sha256,
            pcrs: &pcrs,
            pin: false,
        };
        assert_eq!(
            spec.digest().to_vec(),
            hex("8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b")
        );
    }

    #[test]
    fn systemd_pcr0_7_with_pin() {
        let pcrs = [(0, vec![0u8; 32]), (7, vec![0u8; 32])];
        let spec = PolicySpec {
            bank: PcrBank::Sha256,
            pcrs: &pcrs,
            pin: true,
        };
        assert_eq!(
            spec.digest().to_vec(),
            hex("a459f3351d48706d42b6a920938f56e28b7356602a02784cf0f37b6f5aeb068c")
        );
    }

    #[test]
    fn clevis_sha1_bank_pcr7() {
        let pcrs = [(7, hex("ce84b09003dfa89b8e8bc7d9e4812047ec5c4682"))];
        let spec = PolicySpec {
            bank: PcrBank::Sha1,
            pcrs: &pcrs,
            pin: false,
        };
        assert_eq!(
            spec.digest().to_vec(),
            hex("e5949c41eafd0f94041c6b8995be624e914083d886e28a9b3f7a0838f80f0adf")
        );
    }

    #[test]
    fn builder_matches_the_vectors() {
        let pcrs = [(7, hex("ce84b09003dfa89b8e8bc7d9e4812047ec5c4682"))];
        assert_eq!(
            PolicyBuilder::new(PcrBank::Sha256)
                .pcr(PcrBank::Sha1, &pcrs)
                .digest(),
            hex("e5949c41eafd0f94041c6b8995be624e914083d886e28a9b3f7a0838f80f0adf")
        );
        let zeros = [(0, vec![0u8; 32]), (7, vec![0u8; 32])];
        assert_eq!(
            PolicyBuilder::new(PcrBank::Sha256)
                .pcr(PcrBank::Sha256, &zeros)
                .auth_value()
                .digest(),
            hex("a459f3351d48706d42b6a920938f56e28b7356602a02784cf0f37b6f5aeb068c")
        );
    }

    #[test]
    fn authorize_matches_the_systemd_vector() {
        // tokens-systemd.md §11.4: PolicyAuthorize with the v252 signing key, empty ref.
        let name = hex("000b5b79b900c9f5d693ba806fad40f663369a4c1b2a580829fec0e6067ef007778d");
        let d = PolicyBuilder::new(PcrBank::Sha256)
            .authorize(&name, &[])
            .digest();
        assert_eq!(
            d,
            hex("8098af72bb5d9937d444c1d9d158941ffd6de3a8bdb77fdcf6846736aefb72f8")
        );
    }

    #[test]
    fn order_of_values_is_by_index() {
        let a = [(7, vec![1u8; 32]), (15, vec![0u8; 32])];
        let b = [(15, vec![0u8; 32]), (7, vec![1u8; 32])];
        assert_eq!(pcr_values_digest(&a), pcr_values_digest(&b));
    }

    #[test]
    fn empty_policy_is_zero() {
        let spec = PolicySpec {
            bank: PcrBank::Sha256,
            pcrs: &[],
            pin: false,
        };
        assert_eq!(spec.digest(), [0u8; 32]);
    }
}
