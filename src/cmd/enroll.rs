//! `sealroot enroll`: seal a fresh secret to the TPM and add a keyslot and token for it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use crate::approval::{self, PolicyKey};
use crate::console;
use crate::error::{Error, Result};
use crate::input;
use crate::local_key;
use crate::luks::Volume;
use crate::pcr_values::{self, PcrValues};
use crate::pin;
use crate::recovery;
use crate::secret::Secret;
use crate::tokens::passphrase_of;
use crate::tokens::sealroot::{PinParams, RECOVERY_TOKEN_TYPE, SealrootToken};
use crate::tpm::LazyTpm;
use crate::tpm::duplicate::{StorageKey, seal_offline};
use crate::tpm::pcr::PcrBank;
use crate::tpm::policy::PolicySpec;
use crate::tpm::srk::{SRK_HANDLE, Srk};

pub struct EnrollOptions {
    pub device: PathBuf,
    /// PCRs bound to their current values (the fence PCR is added separately).
    pub pcrs: Vec<u32>,
    /// None: sha256, or the bank of the offline target's values.
    pub bank: Option<PcrBank>,
    /// Seal offline for another machine's TPM instead of this one's.
    pub offline: Option<OfflineTarget>,
    /// A policy key (PEM): approvals it signs decide the PCR values (`sealroot approve`).
    pub policy_key: Option<PathBuf>,
    /// A local approval key instead: made here, its private half kept in the token
    /// encrypted under the sealed secret and left by each unlock in root's keyring, so the
    /// booted system approves its own updates (`update-approvals`); `pcrs` are what the
    /// approvals cover, and the first approval is for their current values.
    pub local_approval: bool,
    /// With a policy key: an NV counter on this TPM, so `sealroot revoke` can retire
    /// approvals.
    pub revocable: bool,
    pub pin: bool,
    pub pin_file: Option<PathBuf>,
    pub unlock_key_file: Option<PathBuf>,
    pub recovery_key: bool,
    pub fence_pcr: Option<u32>,
    pub tcti: Option<String>,
}

/// `--srk-public FILE --pcr-values SPEC`.
pub struct OfflineTarget {
    pub srk_public: PathBuf,
    /// Required unless a policy key is given.
    pub pcr_values: Option<String>,
}

/// Where the sealed object comes from: this machine's TPM (TPM2_Create), or software for
/// a TPM known by its storage key (`duplicate`).
enum Target {
    ThisTpm {
        bank: PcrBank,
        bound: Vec<u32>,
    },
    Offline {
        srk: Srk,
        key: StorageKey,
        values: PcrValues,
    },
}

impl Target {
    fn new(o: &EnrollOptions) -> Result<Target> {
        let Some(offline) = &o.offline else {
            // With a policy key the approvals bind the PCRs; the object binds only the fence.
            let bound = o
                .pcrs
                .iter()
                .copied()
                .filter(|&p| Some(p) != o.fence_pcr && !o.signed())
                .collect();
            return Ok(Target::ThisTpm {
                bank: o.bank.unwrap_or(PcrBank::Sha256),
                bound,
            });
        };
        let path = &offline.srk_public;
        let public = std::fs::read(path).map_err(|e| {
            Error::Usage(format!("--srk-public: cannot read {}: {e}", path.display()))
        })?;
        let key = StorageKey::parse(&public)
            .map_err(|e| Error::Usage(format!("--srk-public {}: {e}", path.display())))?;
        let mut values = match (&offline.pcr_values, &o.policy_key) {
            (Some(spec), None) => pcr_values::parse(spec, o.bank).map_err(Error::Usage)?,
            (None, Some(_)) => PcrValues {
                bank: o.bank.unwrap_or(PcrBank::Sha256),
                values: Vec::new(),
            },
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "with --policy-key the PCR values go into approvals (`sealroot approve --pcr-values`), not into the token".into(),
                ));
            }
            (None, None) => {
                return Err(Error::Usage(
                    "--srk-public needs --pcr-values (or --policy-key)".into(),
                ));
            }
        };
        if let Some(f) = o.fence_pcr {
            // The fence PCR is always expected at its reset value; given as such it is fine.
            let zeros = vec![0u8; values.bank.digest_len()];
            if values.values.iter().any(|(i, v)| *i == f && *v != zeros) {
                return Err(Error::Usage(format!(
                    "--pcr-values gives PCR {f}, the fence PCR, a value other than zeros: the fence is expected at its reset value; leave it out"
                )));
            }
            values.values.retain(|(i, _)| *i != f);
        }
        Ok(Target::Offline {
            srk: Srk {
                handle: SRK_HANDLE,
                public,
            },
            key,
            values,
        })
    }

    fn bank(&self) -> PcrBank {
        match self {
            Target::ThisTpm { bank, .. } => *bank,
            Target::Offline { values, .. } => values.bank,
        }
    }
}

pub struct Enrolled {
    pub token: u32,
    pub keyslot: u32,
    pub recovery_keyslot: Option<u32>,
}

impl EnrollOptions {
    fn signed(&self) -> bool {
        self.policy_key.is_some() || self.local_approval
    }
}

pub fn run(o: &EnrollOptions) -> Result<Enrolled> {
    if o.local_approval && (o.policy_key.is_some() || o.offline.is_some()) {
        return Err(Error::Usage(
            "--local-approval makes its own policy key on this machine: not with --policy-key or --srk-public".into(),
        ));
    }
    if o.revocable && (o.policy_key.is_none() || o.offline.is_some()) {
        return Err(Error::Usage(
            "--revocable needs --policy-key and this machine's TPM (an NV counter cannot be made offline)".into(),
        ));
    }
    let target = Target::new(o)?;
    if let (Some(f), Target::ThisTpm { .. }) = (o.fence_pcr, &target) {
        crate::trust::check_fence(f, &o.pcrs).map_err(Error::Usage)?;
    }
    let mut vol = Volume::open(&o.device)?;
    vol.check_writable()?;
    let existing = match &o.unlock_key_file {
        Some(p) => input::read_key_file(p)?,
        None => input::read_terminal(&format!("Passphrase that opens {}: ", o.device.display()))?,
    };
    // Fail on a wrong passphrase before the TPM is touched or anything is written.
    let (_, volume_key) = vol.volume_key(None, existing.expose())?;

    let pin_secret = if o.pin { Some(read_new_pin(o)?) } else { None };

    // Offline, no TPM is opened at all: the target's TPM is elsewhere.
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let bank = target.bank();
    let (srk, mut pcrs) = match &target {
        Target::ThisTpm { bound, .. } => {
            let ctx = tpm.get()?;
            let srk = ctx.srk()?;
            let current = ctx.pcr_read(bank, bound)?;
            (srk, current.into_iter().collect::<Vec<_>>())
        }
        Target::Offline { srk, values, .. } => (srk.clone(), values.values.clone()),
    };
    let bound: Vec<u32> = pcrs.iter().map(|(i, _)| *i).collect();
    if let Some(f) = o.fence_pcr {
        // The fence PCR is expected at its reset value: it is extended right after the
        // initrd unlocks, so only the initrd of a freshly reset TPM can unseal.
        pcrs.push((f, vec![0u8; bank.digest_len()]));
    }
    pcrs.sort_by_key(|(i, _)| *i);
    let how = match target {
        Target::ThisTpm { .. } => "with --pcrs (e.g. 7,9)",
        Target::Offline { .. } => "with --pcr-values",
    };
    if o.policy_key.is_some() {
        console::error(
            "note: approvals signed by the policy key decide which boots unseal: nothing unlocks until `sealroot approve` has approved PCR values for this token",
        );
    }
    // With a policy key the approvals bind the PCRs; the fence is still this token's own.
    if !o.signed() || o.fence_pcr.is_none() {
        warn_about_bindings(&bound, o.fence_pcr, how);
    }
    // The local key's first approval: this boot's values of the PCRs asked for.
    let approved_now = if o.local_approval {
        let wanted: Vec<u32> = o
            .pcrs
            .iter()
            .copied()
            .filter(|&p| Some(p) != o.fence_pcr)
            .collect();
        if wanted.is_empty() {
            return Err(Error::Usage(
                "--local-approval needs --pcrs for the approvals to cover (e.g. 4,9)".into(),
            ));
        }
        warn_about_bindings(&wanted, o.fence_pcr, how);
        Some(tpm.get()?.pcr_read(bank, &wanted)?)
    } else {
        None
    };
    warn_about_unfenced_tokens(&mut vol, o.fence_pcr)?;

    let pin_params = match &pin_secret {
        Some(_) => Some(PinParams {
            salt: Secret::random(pin::SALT_LEN)
                .map_err(|e| Error::Other(format!("no randomness: {e}")))?
                .expose()
                .to_vec(),
            iterations: pin::DEFAULT_ITERATIONS,
        }),
        None => None,
    };
    let auth = match (&pin_secret, &pin_params) {
        (Some(p), Some(params)) => Some(pin::auth_value(p, &params.salt, params.iterations)),
        _ => None,
    };
    let local_scalar = if o.local_approval {
        Some(local_key::generate().map_err(Error::Other)?)
    } else {
        None
    };
    let policy_key = match &o.policy_key {
        None => match &local_scalar {
            Some((_, public)) => Some((public.clone(), new_policy_ref()?)),
            None => None,
        },
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Usage(format!("--policy-key: cannot read {}: {e}", path.display()))
            })?;
            let key = PolicyKey::from_pem(&text)
                .map_err(|e| Error::Usage(format!("--policy-key {}: {e}", path.display())))?;
            Some((key, new_policy_ref()?))
        }
    };
    let policy = match &policy_key {
        Some((key, policy_ref)) => {
            approval::static_policy(key, policy_ref, bank, &pcrs, auth.is_some())
        }
        None => PolicySpec {
            bank,
            pcrs: &pcrs,
            pin: auth.is_some(),
        }
        .digest(),
    };

    let secret = Secret::random(32).map_err(|e| Error::Other(format!("no randomness: {e}")))?;
    let sealed = match &target {
        Target::ThisTpm { .. } => tpm.get()?.seal(&srk, &secret, &policy, auth.as_ref())?,
        Target::Offline { key, .. } => seal_offline(key, &secret, &policy, auth.as_ref())?,
    };
    let (local_key, local_key_vk) = match (&local_scalar, &policy_key) {
        (Some((scalar, _)), Some((_, policy_ref))) => {
            let wrap =
                |ikm: &[u8], by| local_key::wrap(ikm, by, policy_ref, scalar).map_err(Error::Other);
            (
                Some(wrap(secret.expose(), local_key::WrappedBy::SealedSecret)?),
                Some(wrap(volume_key.expose(), local_key::WrappedBy::VolumeKey)?),
            )
        }
        _ => (None, None),
    };
    let passphrase = passphrase_of(&secret);
    let counter = if o.revocable {
        Some(tpm.get()?.define_counter()?)
    } else {
        None
    };

    // From here on the header changes; each step undoes the previous one if it fails.
    let keyslot = vol.add_keyslot(existing.expose(), passphrase.expose())?;
    let token = SealrootToken {
        keyslot,
        sealed,
        srk_handle: srk.handle,
        srk_public: srk.public,
        bank,
        pcrs,
        policy_digest: policy,
        fence_pcr: o.fence_pcr,
        pin: pin_params,
        policy_key,
        counter,
        local_key,
        local_key_vk,
    };
    let token_id = match vol.add_token(&token.to_json()) {
        Ok(id) => id,
        Err(e) => {
            let _ = vol.destroy_keyslot(keyslot);
            return Err(e.into());
        }
    };
    let mut approval_id = None;
    if let (Some((scalar, _)), Some(values), Some((_, policy_ref))) =
        (&local_scalar, &approved_now, &token.policy_key)
    {
        let first = first_approval(scalar, policy_ref, bank, values)
            .and_then(|json| Ok(vol.add_token(&json)?));
        match first {
            Ok(id) => approval_id = Some(id),
            Err(e) => {
                let _ = vol.remove_token(token_id);
                let _ = vol.destroy_keyslot(keyslot);
                return Err(e);
            }
        }
    }

    // All or nothing: without its recovery key (when one was asked for) the new token and
    // keyslot go again, and the volume is as it was.
    let recovery_keyslot = if o.recovery_key {
        match add_recovery_key(&mut vol, &existing) {
            Ok(slot) => Some(slot),
            Err(e) => {
                if let Some(id) = approval_id {
                    let _ = vol.remove_token(id);
                }
                let _ = vol.remove_token(token_id);
                let _ = vol.destroy_keyslot(keyslot);
                return Err(e);
            }
        }
    } else {
        None
    };
    // Enrolled: the enrolling root may approve updates before the next boot, too.
    if let Some((scalar, _)) = &local_scalar {
        let published = vol
            .uuid()
            .map_err(|e| e.to_string())
            .and_then(|uuid| local_key::publish(&uuid, scalar).map_err(|e| e.to_string()));
        if let Err(e) = published {
            console::error(&format!(
                "warning: cannot leave the local approval key in root's keyring ({e}); the next unlock by the TPM does"
            ));
        }
    }
    Ok(Enrolled {
        token: token_id,
        keyslot,
        recovery_keyslot,
    })
}

fn new_policy_ref() -> Result<Vec<u8>> {
    let nonce = Secret::random(16).map_err(|e| Error::Other(format!("no randomness: {e}")))?;
    Ok([approval::POLICY_REF_PREFIX, nonce.expose()].concat())
}

/// The local key's approval of the values read at enrollment.
fn first_approval(
    scalar: &Secret,
    policy_ref: &[u8],
    bank: PcrBank,
    values: &BTreeMap<u32, Vec<u8>>,
) -> Result<serde_json::Value> {
    let key = local_key::signing_key(scalar).map_err(Error::Other)?;
    let set: Vec<(u32, Vec<u8>)> = values.iter().map(|(i, v)| (*i, v.clone())).collect();
    // The first approval of a new token: nothing to be newer than.
    let signed = approval::sign_with(
        &key,
        policy_ref,
        bank,
        &[set],
        approval::next_serial(0),
        None,
    )
    .map_err(Error::Other)?;
    serde_json::to_value(&signed).map_err(|e| Error::Other(e.to_string()))
}

/// Requirement 11 of the trust model: say what the PCRs leave open.
fn warn_about_bindings(bound: &[u32], fence: Option<u32>, how: &str) {
    if bound.is_empty() {
        console::error(
            "warning: no PCRs selected: any boot of this machine, with any kernel and command line, can unseal the key",
        );
    }
    if !bound.iter().any(|p| [8, 9, 12].contains(p)) {
        console::error(&format!(
            "warning: PCRs {bound:?} do not bind the kernel command line (it is measured into PCR 9 by the EFI stub, PCR 8 by GRUB, PCR 12 by systemd-stub): whoever is at the console can boot this initrd with `break=premount` or `rd.break` and reach a root shell before the fence, where the key unseals; bind the right one {how}"
        ));
    }
    if fence.is_none() {
        console::error(
            "warning: no fence: after this boot's initrd, anything on this machine can unseal the key again",
        );
    }
}

/// Requirement 12: a foreign TPM token that does not bind the fence stays usable after it.
fn warn_about_unfenced_tokens(vol: &mut Volume, fence: Option<u32>) -> Result<()> {
    let Some(fence) = fence else {
        return Ok(());
    };
    for entry in vol.tokens()? {
        if let Some(Ok(plan)) = crate::tokens::plan(entry.id, &entry.json)
            && plan.outlives_fence(fence)
        {
            console::error(&format!(
                "warning: {} does not bind the fence PCR {fence}: anything in the booted system can use it while its PCRs hold, which undoes this token's fence; remove it (systemd-cryptenroll --wipe-slot=tpm2, clevis luks unbind) to keep the fence",
                plan.label()
            ));
        }
    }
    Ok(())
}

fn read_new_pin(o: &EnrollOptions) -> Result<Secret> {
    let pin = match &o.pin_file {
        Some(p) => input::read_line_file(p)?,
        None => {
            let first = input::read_terminal("New PIN: ")?;
            let again = input::read_terminal("Repeat PIN: ")?;
            if first != again {
                return Err(Error::Usage("the PINs differ; nothing was changed".into()));
            }
            first
        }
    };
    if pin.is_empty() {
        return Err(Error::Usage("the PIN is empty; nothing was changed".into()));
    }
    Ok(pin)
}

fn add_recovery_key(vol: &mut Volume, existing: &Secret) -> Result<u32> {
    let key = recovery::generate().map_err(|e| Error::Other(format!("no randomness: {e}")))?;
    let slot = vol.add_keyslot(existing.expose(), key.expose())?;
    let marker = serde_json::json!({
        "type": RECOVERY_TOKEN_TYPE,
        "keyslots": [slot.to_string()],
    });
    let marker_id = match vol.add_token(&marker) {
        Ok(id) => id,
        Err(e) => {
            let _ = vol.destroy_keyslot(slot);
            return Err(e.into());
        }
    };
    // The one time the key is shown: on stdout, so it can be captured; never logged. The
    // slot stays only if the key was written out.
    eprintln!("sealroot: recovery key for keyslot {slot} (shown once; store it safely):");
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(key.expose())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush());
    if let Err(e) = written {
        let _ = vol.remove_token(marker_id);
        let _ = vol.destroy_keyslot(slot);
        return Err(Error::Other(format!(
            "cannot write the recovery key out ({e}); nothing was enrolled"
        )));
    }
    Ok(slot)
}
