//! The software policy digest equals what the TPM computes in a trial session, for the
//! exact policies enroll writes.

mod common;

use common::{Fixture, export_token};
use sealroot::tpm::pcr::PcrBank;
use sealroot::tpm::policy::PolicySpec;

/// The policy digest tpm2-tools gets from the TPM in a trial session: PolicyPCR with the
/// given values (concatenated in index order), then PolicyAuthValue with a PIN.
fn trial_digest(f: &Fixture, bank: PcrBank, pcrs: &[(u32, Vec<u8>)], pin: bool) -> Vec<u8> {
    let session = f.path("trial.ctx");
    let policy = f.path("policy.bin");
    let values = f.path("pcr-values.bin");
    let (session, policy_s) = (session.to_str().unwrap(), policy.to_str().unwrap());
    f.tpm.tools(&["tpm2_startauthsession", "-S", session]);
    if !pcrs.is_empty() {
        let list: Vec<String> = pcrs.iter().map(|(i, _)| i.to_string()).collect();
        let bytes: Vec<u8> = pcrs.iter().flat_map(|(_, v)| v.clone()).collect();
        std::fs::write(&values, bytes).unwrap();
        f.tpm.tools(&[
            "tpm2_policypcr",
            "-S",
            session,
            "-l",
            &format!("{}:{}", bank.name(), list.join(",")),
            "-f",
            values.to_str().unwrap(),
            "-L",
            policy_s,
        ]);
    }
    if pin {
        f.tpm
            .tools(&["tpm2_policyauthvalue", "-S", session, "-L", policy_s]);
    }
    f.tpm.tools(&["tpm2_flushcontext", session]);
    std::fs::read(&policy).unwrap()
}

#[test]
fn software_digest_matches_trial_session() {
    let f = Fixture::new();
    f.tpm.extend(7, b"some secure boot state");
    for bank in [PcrBank::Sha256, PcrBank::Sha1, PcrBank::Sha384] {
        let mut pcrs: Vec<(u32, Vec<u8>)> =
            [4, 7, 9].map(|i| (i, f.tpm.read_bank(bank, i))).to_vec();
        pcrs.push((15, vec![0u8; bank.digest_len()]));
        for pin in [false, true] {
            let software = PolicySpec {
                bank,
                pcrs: &pcrs,
                pin,
            }
            .digest();
            assert_eq!(
                trial_digest(&f, bank, &pcrs, pin),
                software.to_vec(),
                "{bank} pin={pin}"
            );
        }
    }
}

#[test]
fn enrolled_token_policy_matches_trial_session() {
    let f = Fixture::new();
    f.tpm.extend(7, b"some secure boot state");
    let pin = f.write("pin", b"1234");
    f.enroll(&["--pin", "--pin-file", pin.to_str().unwrap()]);
    let token = export_token(&f.image, 0);
    let pcr7 = hex::decode(token["tpm2_pcr_values"]["7"].as_str().unwrap()).unwrap();
    assert_eq!(
        pcr7,
        f.tpm.read(7),
        "enroll must record PCR 7's current value"
    );
    let expected = trial_digest(&f, PcrBank::Sha256, &[(7, pcr7), (15, vec![0u8; 32])], true);
    assert_eq!(
        hex::encode(expected),
        token["tpm2_policy_hash"].as_str().unwrap()
    );
}
