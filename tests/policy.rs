//! The software policy digest equals what the TPM computes in a trial session, for the
//! exact policies enroll writes.

mod common;

use common::{Fixture, export_token};
use sealroot::tpm::pcr::{PcrBank, selection_list};
use sealroot::tpm::policy::{PolicySpec, pcr_values_digest};
use tss_esapi::constants::SessionType;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{Digest, SymmetricDefinition};

fn trial_digest(f: &Fixture, bank: PcrBank, pcrs: &[(u32, Vec<u8>)], pin: bool) -> Vec<u8> {
    let mut ctx = f.tpm.context();
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Trial,
            SymmetricDefinition::Null,
            HashingAlgorithm::Sha256,
        )
        .unwrap()
        .unwrap();
    let policy = PolicySession::try_from(session).unwrap();
    let indexes: Vec<u32> = pcrs.iter().map(|(i, _)| *i).collect();
    if !pcrs.is_empty() {
        ctx.policy_pcr(
            policy,
            Digest::try_from(pcr_values_digest(pcrs).to_vec()).unwrap(),
            selection_list(bank, &indexes).unwrap(),
        )
        .unwrap();
    }
    if pin {
        ctx.policy_auth_value(policy).unwrap();
    }
    let d = ctx.policy_get_digest(policy).unwrap().value().to_vec();
    sealroot::tpm::session::flush(&mut ctx, session);
    d
}

#[test]
fn software_digest_matches_trial_session() {
    let f = Fixture::new();
    f.tpm.extend(7, b"some secure boot state");
    for bank in [PcrBank::Sha256, PcrBank::Sha1, PcrBank::Sha384] {
        let now = {
            let mut ctx = f.tpm.context();
            sealroot::tpm::pcr::read(&mut ctx, bank, &[4, 7, 9]).unwrap()
        };
        let mut pcrs: Vec<(u32, Vec<u8>)> = now.into_iter().collect();
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
