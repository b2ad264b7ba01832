//! Bus capture (issue 16): a proxy between sealroot and swtpm (tests/common `BusCapture`)
//! records every command and response of an unlock, with and without a PIN, as a bus
//! sniffer would. Neither the unsealed secret, the keyslot passphrase, the volume key, the
//! PIN nor its authValue crosses in any form (raw, hex, base64, 16-byte fragments); the
//! session is salted with the SRK; Unseal asks for, and gets, an encrypted response whose
//! payload is not the secret. The values come from tpm2-tools and cryptsetup, not sealroot.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{BusCapture, Fixture, Needle, export_token, search, unseal_independently};

const TPM_CC_START_AUTH_SESSION: u32 = 0x176;
const TPM_CC_UNSEAL: u32 = 0x15E;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPMA_SESSION_ENCRYPT: u8 = 0x40;
const SRK_HANDLE: u32 = 0x8100_0001;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The attributes of the first session of an authorization area starting at `at`
/// (handle, nonce, attributes, hmac) — command side.
fn command_session_attributes(cmd: &[u8], at: usize) -> (u32, u8) {
    let handle = u32_at(cmd, at);
    let nonce = usize::from(u16_at(cmd, at + 4));
    (handle, cmd[at + 6 + nonce])
}

fn capture(pin: Option<&str>) {
    let f = Fixture::new();
    let mut unlock_extra = Vec::new();
    let pin_file;
    if let Some(pin) = pin {
        pin_file = f.write("pin", format!("{pin}\n").as_bytes());
        let p = pin_file.to_str().unwrap().to_string();
        f.enroll(&["--pin", "--pin-file", &p]);
        unlock_extra = vec!["--pin-file".to_string(), p];
    } else {
        f.enroll(&[]);
    }
    let secret = unseal_independently(&f, 0, pin.map(str::as_bytes));
    let token = export_token(&f.image, 0);
    let mut needles = vec![
        Needle {
            what: "unsealed secret",
            value: secret.clone(),
        },
        Needle {
            what: "keyslot passphrase",
            value: B64.encode(&secret).into_bytes(),
        },
        Needle {
            what: "volume key",
            value: common::volume_key(&f.image, &f.passfile),
        },
    ];
    if let Some(pin) = pin {
        needles.push(Needle {
            what: "PIN",
            value: pin.as_bytes().to_vec(),
        });
        needles.push(Needle {
            what: "PIN authValue",
            value: common::pin_auth_value(&token, pin.as_bytes()),
        });
    }

    let bus = BusCapture::start(&f.tpm);
    let tcti = bus.tcti();
    let mut args = vec!["--tcti", tcti.as_str()];
    args.extend(unlock_extra.iter().map(String::as_str));
    let r = f.unlock_test(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(f.tpm.read(15), vec![0u8; 32], "the fence was extended");

    let exchanges = bus.exchanges();
    let codes = bus.command_codes();
    assert_eq!(exchanges.len(), codes.len(), "one response per command");
    let bytes = bus.all_bytes();
    let found = search(&needles, &bytes);
    assert!(found.is_empty(), "on the bus: {found:?}");

    // The session is salted with the SRK: StartAuthSession names it as tpmKey and carries
    // an encrypted salt.
    let (start, _) = exchanges
        .iter()
        .find(|(c, _)| u32_at(c, 6) == TPM_CC_START_AUTH_SESSION)
        .expect("a StartAuthSession");
    assert_eq!(u32_at(start, 10), SRK_HANDLE, "salted with the SRK");
    let nonce = usize::from(u16_at(start, 18));
    let salt = usize::from(u16_at(start, 20 + nonce));
    assert!(salt > 0, "StartAuthSession without an encrypted salt");

    // Unseal: the command asks for response encryption, the response has it, and the
    // payload is not the secret.
    let unseals: Vec<_> = exchanges
        .iter()
        .filter(|(c, _)| u32_at(c, 6) == TPM_CC_UNSEAL)
        .collect();
    assert_eq!(unseals.len(), 1, "{codes:x?}");
    let (cmd, resp) = unseals[0];
    assert_eq!(u16_at(cmd, 0), TPM_ST_SESSIONS);
    // header (10), itemHandle (4), authorizationSize (4), then the session.
    let (session, attributes) = command_session_attributes(cmd, 18);
    assert_eq!(session >> 24, 0x03, "a policy session: {session:x}");
    assert_ne!(
        attributes & TPMA_SESSION_ENCRYPT,
        0,
        "Unseal did not ask for an encrypted response"
    );
    assert_eq!(u16_at(resp, 0), TPM_ST_SESSIONS);
    assert_eq!(u32_at(resp, 6), 0, "Unseal failed on the bus");
    // header (10), parameterSize (4), outData (TPM2B), then the response session.
    let parameters = u32_at(resp, 10) as usize;
    let out_len = usize::from(u16_at(resp, 14));
    let out = &resp[16..16 + out_len];
    assert_eq!(out_len, secret.len());
    assert_ne!(out, secret.as_slice(), "the Unseal payload is the secret");
    let auth = 14 + parameters;
    let nonce = usize::from(u16_at(resp, auth));
    let response_attributes = resp[auth + 2 + nonce];
    assert_ne!(
        response_attributes & TPMA_SESSION_ENCRYPT,
        0,
        "the Unseal response is not encrypted"
    );
    eprintln!(
        "bus ({}): {} commands {codes:x?}, {} bytes captured, {} needles ({} patterns): none found; Unseal response encrypted ({out_len} bytes, attributes 0x{response_attributes:02x})",
        if pin.is_some() { "PIN" } else { "no PIN" },
        codes.len(),
        bytes.len(),
        needles.len(),
        needles
            .iter()
            .map(|n| common::forms(&n.value).len())
            .sum::<usize>(),
    );
}

#[test]
fn an_unlock_without_a_pin_shows_the_bus_nothing() {
    capture(None);
}

#[test]
fn an_unlock_with_a_pin_shows_the_bus_nothing() {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    capture(Some(&format!("P{}", hex::encode(b))));
}

/// The control: the same capture and search find the secret when it does cross in clear
/// (tpm2-tools unsealing in a session without parameter encryption).
#[test]
fn a_secret_that_crosses_the_bus_is_found() {
    let f = Fixture::new();
    f.enroll(&[]);
    let bus = BusCapture::start(&f.tpm);
    let secret = common::unseal_independently_via(&f, &bus.tcti(), 0, None);
    let needles = [Needle {
        what: "unsealed secret",
        value: secret,
    }];
    let found = search(&needles, &bus.all_bytes());
    assert!(
        found.iter().any(|(w, _)| w == "unsealed secret (raw)"),
        "{found:?}"
    );
    assert!(bus.command_codes().contains(&TPM_CC_UNSEAL));
}
