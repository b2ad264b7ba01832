//! The `sealroot-provision` token: what an image's first boot must do to make the instance
//! its own (`sealroot provision` writes it, `firstboot` follows it and records each step in
//! it). It carries the provisioning key in clear: until first boot, the image is only as
//! secret as the image file.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::escrow::Recipient;
use crate::secret::Secret;
use crate::tokens::passphrase_of;
use crate::tpm::pcr::{PCR_COUNT, PcrBank};

pub const TOKEN_TYPE: &str = "sealroot-provision";
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the provisioning key (its keyslot passphrase is the base64, as for sealed keys).
pub const KEY_LEN: usize = 32;

/// The first boot's steps, in order; each is recorded once done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The instance's new volume key exists, in a keyslot the provisioning key opens.
    NewKey,
    /// A secret sealed to this TPM opens a keyslot of the new key; a sealroot token.
    Sealed,
    /// A recovery key opens a keyslot of the new key; its escrow is in the header.
    Escrowed,
    /// The sealed key was unsealed and opens the new key (before the fence).
    Verified,
    /// Re-encryption to the new key is set up in the header.
    ReencryptStarted,
    /// The data is under the new key; the image's keyslots are gone.
    Reencrypted,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::NewKey => "new-key",
            Step::Sealed => "sealed",
            Step::Escrowed => "escrowed",
            Step::Verified => "verified",
            Step::ReencryptStarted => "reencrypt-started",
            Step::Reencrypted => "reencrypted",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Json {
    #[serde(rename = "type")]
    kind: String,
    /// Empty: libcryptsetup drops keyslots from tokens as they go, and the keyslots below
    /// come and go during the first boot.
    keyslots: Vec<String>,
    sealroot_version: u32,
    provisioning_key: String,
    provisioning_keyslot: u32,
    image_keyslots: Vec<u32>,
    pcr_bank: String,
    pcrs: Vec<u32>,
    fence_pcr: Option<u32>,
    escrow_recipient: Option<String>,
    reencrypt: bool,
    #[serde(default)]
    reencrypt_in_initrd: bool,
    #[serde(default)]
    new_keyslot: Option<u32>,
    #[serde(default)]
    pending_keyslot: Option<u32>,
    #[serde(default)]
    done: Vec<Step>,
}

pub struct ProvisionToken {
    pub key: Secret,
    pub provisioning_keyslot: u32,
    /// Every keyslot the image had when it was marked (the builder's passphrase and the
    /// provisioning keyslot): none of them may survive on an instance.
    pub image_keyslots: Vec<u32>,
    pub bank: PcrBank,
    /// Bound to the values this instance's first boot measures (the fence PCR apart).
    pub pcrs: Vec<u32>,
    pub fence_pcr: Option<u32>,
    /// None: no recovery key (the builder said so).
    pub escrow: Option<Recipient>,
    pub reencrypt: bool,
    /// The data pass in the initrd, before the root is mounted (else after switch-root,
    /// by `sealroot finish-provisioning`).
    pub reencrypt_in_initrd: bool,
    /// The provisioning key's keyslot for the new volume key (re-encryption's target).
    pub new_keyslot: Option<u32>,
    /// A keyslot being added: if the first boot stopped before the token that claims it
    /// was written, it opens nothing anyone knows and is removed on the next run.
    pub pending_keyslot: Option<u32>,
    pub done: Vec<Step>,
}

impl ProvisionToken {
    pub fn passphrase(&self) -> Secret {
        passphrase_of(&self.key)
    }

    pub fn is_done(&self, step: Step) -> bool {
        self.done.contains(&step)
    }

    pub fn to_json(&self) -> Value {
        let json = Json {
            kind: TOKEN_TYPE.into(),
            keyslots: Vec::new(),
            sealroot_version: FORMAT_VERSION,
            provisioning_key: B64.encode(self.key.expose()),
            provisioning_keyslot: self.provisioning_keyslot,
            image_keyslots: self.image_keyslots.clone(),
            pcr_bank: self.bank.name().into(),
            pcrs: self.pcrs.clone(),
            fence_pcr: self.fence_pcr,
            escrow_recipient: self.escrow.as_ref().map(|r| r.as_str().to_string()),
            reencrypt: self.reencrypt,
            reencrypt_in_initrd: self.reencrypt_in_initrd,
            new_keyslot: self.new_keyslot,
            pending_keyslot: self.pending_keyslot,
            done: self.done.clone(),
        };
        serde_json::to_value(json).unwrap_or(Value::Null)
    }

    pub fn from_json(id: u32, value: &Value) -> Result<ProvisionToken, String> {
        let bad = |why: String| format!("{TOKEN_TYPE} token {id} is corrupt: {why}");
        let json: Json = serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
        if json.kind != TOKEN_TYPE {
            return Err(bad(format!("type is '{}'", json.kind)));
        }
        if json.sealroot_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported by this sealroot; update sealroot",
                json.sealroot_version
            )));
        }
        let key = B64
            .decode(&json.provisioning_key)
            .ok()
            .filter(|k| k.len() == KEY_LEN)
            .map(|mut k| {
                let s = Secret::from_slice(&k);
                zeroize::Zeroize::zeroize(&mut k);
                s
            })
            .ok_or_else(|| bad(format!("provisioning_key is not {KEY_LEN} bytes of base64")))?;
        let bank: PcrBank = json.pcr_bank.parse().map_err(bad)?;
        if json.pcrs.iter().any(|&p| p >= PCR_COUNT) {
            return Err(bad(format!("pcrs {:?} are not PCRs 0-23", json.pcrs)));
        }
        if let Some(f) = json.fence_pcr
            && (f >= PCR_COUNT || json.pcrs.contains(&f))
        {
            return Err(bad(format!("fence PCR {f} is out of range or also bound")));
        }
        let escrow = json
            .escrow_recipient
            .as_deref()
            .map(Recipient::parse)
            .transpose()
            .map_err(bad)?;
        Ok(ProvisionToken {
            key,
            provisioning_keyslot: json.provisioning_keyslot,
            image_keyslots: json.image_keyslots,
            bank,
            pcrs: json.pcrs,
            fence_pcr: json.fence_pcr,
            escrow,
            reencrypt: json.reencrypt,
            reencrypt_in_initrd: json.reencrypt_in_initrd,
            new_keyslot: json.new_keyslot,
            pending_keyslot: json.pending_keyslot,
            done: json.done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let t = ProvisionToken {
            key: Secret::from_slice(&[7u8; KEY_LEN]),
            provisioning_keyslot: 1,
            image_keyslots: vec![0, 1],
            bank: PcrBank::Sha256,
            pcrs: vec![4, 9],
            fence_pcr: Some(15),
            escrow: None,
            reencrypt: true,
            reencrypt_in_initrd: false,
            new_keyslot: Some(2),
            pending_keyslot: None,
            done: vec![Step::NewKey],
        };
        let json = t.to_json();
        assert_eq!(json["done"], serde_json::json!(["new-key"]));
        let back = ProvisionToken::from_json(3, &json).unwrap();
        assert_eq!(back.key.expose(), t.key.expose());
        assert_eq!(back.done, t.done);
        let mut bad = json.clone();
        bad["provisioning_key"] = "AAAA".into();
        assert!(
            ProvisionToken::from_json(3, &bad)
                .err()
                .unwrap()
                .contains("32 bytes")
        );
        let mut bad = json.clone();
        bad["fence_pcr"] = 9.into();
        assert!(
            ProvisionToken::from_json(3, &bad)
                .err()
                .unwrap()
                .contains("fence PCR 9")
        );
        let mut bad = json;
        bad["escrow_recipient"] = "age1nope".into();
        assert!(ProvisionToken::from_json(3, &bad).is_err());
    }
}
