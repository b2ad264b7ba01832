//! `sealroot unlock`: unseal each volume's key with the TPM, open the volumes, then fence.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::LazyEsys;
use super::enroll::passphrase_of;
use crate::console;
use crate::error::{Error, Result};
use crate::input;
use crate::luks::{LuksError, Volume};
use crate::pin;
use crate::secret::Secret;
use crate::token::{SealrootToken, TOKEN_TYPE, token_type};
use crate::tokens::{ForeignPlan, ParentSpec, clevis, systemd};
use crate::tpm::TpmError;
use crate::tpm::esys::{Esys, Parent, Unseal};
use crate::tpm::fence::{self, DEFAULT_FENCE_PCR};
use crate::tpm::pcr::PcrBank;

/// PIN attempts on a terminal before giving up on a token.
const PIN_TRIES: usize = 3;

pub struct UnlockOptions {
    /// (device, mapping name) pairs.
    pub targets: Vec<(PathBuf, String)>,
    /// Verify the key against the keyslot without activating.
    pub test: bool,
    pub tcti: Option<String>,
    pub pin_file: Option<PathBuf>,
    /// Program that asks for a PIN: run as `PROG "PROMPT"`, its stdout is the PIN.
    pub askpass: Option<PathBuf>,
    /// Signature file for signed PCR policies (else systemd's usual places).
    pub signature: Option<PathBuf>,
    pub no_fence: bool,
}

/// One line per volume that failed, already printed; the exit code of the worst.
pub struct UnlockReport {
    pub failures: Vec<(PathBuf, Error)>,
    pub fence_error: Option<TpmError>,
}

pub fn run(o: &UnlockOptions) -> UnlockReport {
    let mut tpm = LazyEsys::new(o.tcti.as_deref());
    let mut pin_cache: Option<Secret> = None;
    let mut measurements = Vec::new();
    let mut fence_pcrs = BTreeSet::new();
    let mut saw_token = false;
    let mut failures = Vec::new();

    for (device, name) in &o.targets {
        let mut ctx = Attempt {
            tpm: &mut tpm,
            pin_file: o.pin_file.as_ref(),
            askpass: o.askpass.as_ref(),
            signature: o.signature.as_ref(),
            pin_cache: &mut pin_cache,
            fence_pcrs: &mut fence_pcrs,
            saw_token: &mut saw_token,
        };
        match unlock_volume(&mut ctx, device, name, o.test) {
            Ok((uuid, volume_key)) => {
                measurements.push(fence::unlocked_measurement(
                    volume_key.expose(),
                    name,
                    &uuid,
                ));
                console::progress(&format!(
                    "{} {} as {name}",
                    device.display(),
                    if o.test {
                        "verified (--test)"
                    } else {
                        "unlocked"
                    }
                ));
            }
            Err((uuid, e)) => {
                let uuid = uuid.unwrap_or_else(|| device.display().to_string());
                measurements.push(fence::failed_measurement(name, &uuid));
                failures.push((device.clone(), e));
            }
        }
    }

    let mut fence_error = None;
    if !o.no_fence {
        if !saw_token {
            fence_pcrs.insert(DEFAULT_FENCE_PCR);
        }
        for pcr in fence_pcrs {
            let r = tpm
                .get()
                .and_then(|ctx| ctx.pcr_event(pcr, &fence::event(&measurements)));
            if let Err(e) = r {
                fence_error = Some(e);
            } else {
                console::progress(&format!("fence PCR {pcr} extended"));
            }
        }
    }
    UnlockReport {
        failures,
        fence_error,
    }
}

struct Attempt<'a> {
    tpm: &'a mut LazyEsys,
    pin_file: Option<&'a PathBuf>,
    askpass: Option<&'a PathBuf>,
    signature: Option<&'a PathBuf>,
    pin_cache: &'a mut Option<Secret>,
    fence_pcrs: &'a mut BTreeSet<u32>,
    saw_token: &'a mut bool,
}

type VolumeResult = std::result::Result<(String, Secret), (Option<String>, Error)>;

fn unlock_volume(
    a: &mut Attempt<'_>,
    device: &std::path::Path,
    name: &str,
    test: bool,
) -> VolumeResult {
    log::debug!("{}: opening", device.display());
    let mut vol = Volume::open(device).map_err(|e| (None, e.into()))?;
    log::debug!("{}: LUKS2 header loaded", device.display());
    let uuid = vol.uuid().map_err(|e| (None, e.into()))?;
    let fail = |e: Error| (Some(uuid.clone()), e);
    let entries = vol.tokens().map_err(|e| fail(e.into()))?;
    let ours: Vec<_> = entries
        .iter()
        .filter(|t| token_type(&t.json) == TOKEN_TYPE)
        .collect();
    // Then, in token order, what systemd-cryptenroll and clevis enrolled.
    let foreign: Vec<_> = entries
        .iter()
        .filter(|t| {
            matches!(
                token_type(&t.json),
                systemd::TOKEN_TYPE | clevis::TOKEN_TYPE
            )
        })
        .collect();
    if ours.is_empty() && foreign.is_empty() {
        return Err(fail(Error::NoUsableToken(format!(
            "no sealroot, systemd-tpm2 or clevis token on {}; enroll one with `sealroot enroll`, or use `sealroot recover`",
            device.display()
        ))));
    }
    let mut best: Option<Error> = None;
    for entry in ours {
        let attempt = SealrootToken::from_json(entry.id, &entry.json)
            .map_err(|e| {
                Error::NoUsableToken(format!("{e}; use `sealroot recover`, then re-enroll"))
            })
            .and_then(|token| {
                *a.saw_token = true;
                if let Some(f) = token.fence_pcr {
                    a.fence_pcrs.insert(f);
                }
                unlock_with_token(a, &mut vol, &token, name, test).map_err(|e| Error::Token {
                    id: entry.id,
                    source: Box::new(e),
                })
            });
        match attempt {
            Ok(vk) => return Ok((uuid, vk)),
            Err(e) => {
                log::info!("{}: {e}", device.display());
                if best.as_ref().is_none_or(|b| e.rank() > b.rank()) {
                    best = Some(e);
                }
            }
        }
    }
    for entry in foreign {
        let planned = match token_type(&entry.json) {
            systemd::TOKEN_TYPE => systemd::plan(entry.id, &entry.json),
            _ => clevis::plan(entry.id, &entry.json),
        };
        let attempt = planned
            .map_err(|e| Error::NoUsableToken(e.to_string()))
            .map(|mut plan| {
                add_signatures(&mut plan, a.signature);
                plan
            })
            .and_then(|plan| unlock_with_plan(a, &mut vol, &plan, name, test));
        match attempt {
            Ok(vk) => return Ok((uuid, vk)),
            Err(e) => {
                console::progress(&format!("{}: {e}", device.display()));
                if best.as_ref().is_none_or(|b| e.rank() > b.rank()) {
                    best = Some(e);
                }
            }
        }
    }
    Err(fail(best.unwrap_or_else(|| {
        Error::NoUsableToken("no token could be used".into())
    })))
}

fn unlock_with_token(
    a: &mut Attempt<'_>,
    vol: &mut Volume,
    token: &SealrootToken,
    name: &str,
    test: bool,
) -> Result<Secret> {
    a.tpm.get()?;
    log::debug!("TPM open");
    let secret = unseal_token(a, vol, token, name).map_err(|e| match e {
        Error::Tpm(TpmError::PolicyMismatch { .. }) => match a.tpm.get() {
            Ok(ctx) => Error::Tpm(TpmError::PolicyMismatch {
                detail: mismatch_detail(ctx, token),
            }),
            Err(_) => e,
        },
        other => other,
    })?;
    log::debug!("token unsealed");
    let passphrase = passphrase_of(&secret);
    drop(secret);
    let (_, volume_key) = vol
        .volume_key(Some(token.keyslot), passphrase.expose())
        .map_err(|e| match e {
            LuksError::WrongPassphrase { .. } => Error::NoUsableToken(format!(
                "the unsealed key does not open keyslot {} (token and keyslot out of sync); use `sealroot recover`, then re-enroll",
                token.keyslot
            )),
            other => other.into(),
        })?;
    log::debug!("keyslot {} opened", token.keyslot);
    if !test {
        vol.activate(name, &volume_key)?;
        log::debug!("{name} activated");
    }
    Ok(volume_key)
}

/// Names the PCRs that differ from the token (read only on this failure path, so a normal
/// unlock sends no extra commands).
fn mismatch_detail(ctx: &mut Esys, token: &SealrootToken) -> String {
    let Ok(now) = ctx.pcr_read(token.bank, &token.pcr_indexes()) else {
        return String::new();
    };
    let differ: Vec<u32> = token
        .pcrs
        .iter()
        .filter(|(i, v)| now.get(i) != Some(v))
        .map(|(i, _)| *i)
        .collect();
    let fence = token.fence_pcr.filter(|f| differ.contains(f));
    let others: Vec<String> = differ
        .iter()
        .filter(|&&i| Some(i) != fence)
        .map(u32::to_string)
        .collect();
    match (others.len(), fence) {
        (0, Some(f)) => format!(
            "fence PCR {f} is already extended: this boot has unlocked once; reboot to unlock with the TPM again, or use `sealroot recover`"
        ),
        (0, None) => String::new(),
        (n, _) => format!(
            "{} {} {} {} since enrollment; use `sealroot recover`, then re-enroll",
            token.bank,
            if n == 1 { "PCR" } else { "PCRs" },
            others.join(", "),
            if n == 1 { "differs" } else { "differ" }
        ),
    }
}

fn unseal_token(
    a: &mut Attempt<'_>,
    vol: &Volume,
    token: &SealrootToken,
    name: &str,
) -> Result<Secret> {
    let pcrs = token.pcr_indexes();
    fn request<'r>(
        token: &'r SealrootToken,
        pcrs: &'r [u32],
        auth: Option<&'r Secret>,
    ) -> Unseal<'r> {
        Unseal {
            parent: Parent::Recorded {
                handle: token.srk_handle,
                public: &token.srk_public,
            },
            object: &token.sealed,
            session_hash: PcrBank::Sha256,
            bank: token.bank,
            pcrs,
            expected_pcr_digest: Some(token.expected_pcr_digest().to_vec()),
            expected_policy: None,
            signed: None,
            auth,
        }
    }
    let Some(params) = &token.pin else {
        return Ok(a.tpm.get()?.unseal(&request(token, &pcrs, None))?);
    };
    let pcrs = &pcrs;
    Ok(unseal_with_pin(
        a,
        vol,
        name,
        &mut |esys: &mut Esys, pin: &Secret| {
            let auth = pin::auth_value(pin, &params.salt, params.iterations);
            esys.unseal(&request(token, pcrs, Some(&auth)))
        },
    )??)
}

/// Unseals with a PIN from the cache (one that served another volume), the PIN file,
/// askpass or the terminal — up to PIN_TRIES times when asking. The outer error is a PIN
/// that could not be read; the inner one what the TPM said (a wrong PIN after the tries).
fn unseal_with_pin(
    a: &mut Attempt<'_>,
    vol: &Volume,
    name: &str,
    unseal: &mut dyn FnMut(&mut Esys, &Secret) -> std::result::Result<Secret, TpmError>,
) -> Result<std::result::Result<Secret, TpmError>> {
    let tries = if a.pin_file.is_some() || a.pin_cache.is_some() {
        1
    } else {
        PIN_TRIES
    };
    for attempt in 0..tries {
        let pin = match a.pin_cache.take() {
            Some(p) => p,
            None => read_pin(a.pin_file, a.askpass, vol, name)?,
        };
        match unseal(a.tpm.get()?, &pin) {
            Ok(s) => {
                // The same PIN often serves several volumes: keep it for them.
                *a.pin_cache = Some(pin);
                return Ok(Ok(s));
            }
            Err(TpmError::WrongPin) if attempt + 1 < tries => {
                console::error("wrong PIN, try again");
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Err(TpmError::WrongPin))
}

fn read_pin(
    pin_file: Option<&PathBuf>,
    askpass: Option<&PathBuf>,
    vol: &Volume,
    name: &str,
) -> Result<Secret> {
    let prompt = format!("TPM PIN for {name} ({}): ", vol.path().display());
    match (pin_file, askpass) {
        (Some(p), _) => input::read_line_file(p),
        (None, Some(prog)) => input::read_askpass(prog, &prompt),
        (None, None) if input::terminal_available() => input::read_terminal(&prompt),
        (None, None) => Err(Error::Tpm(TpmError::PinNeeded)),
    }
}

/// A systemd-tpm2 or clevis token: unseal as the plan says, turn the bytes into the
/// passphrase the way that tool does, open the keyslot.
fn unlock_with_plan(
    a: &mut Attempt<'_>,
    vol: &mut Volume,
    plan: &ForeignPlan,
    name: &str,
    test: bool,
) -> Result<Secret> {
    let label = |e: TpmError| -> Error {
        let e = match e {
            TpmError::PolicyMismatch { detail } if detail.is_empty() => TpmError::PolicyMismatch {
                detail: format!(
                    "the {} PCRs {:?} differ from enrollment; use `sealroot recover`",
                    plan.bank, plan.pcrs
                ),
            },
            other => other,
        };
        Error::NoUsableToken(format!("{} token {}: {e}", plan.kind, plan.id)).with_code_of(e)
    };
    let secret = if plan.pin.is_none() {
        a.tpm
            .get()?
            .unseal(&plan_request(plan, None))
            .map_err(label)?
    } else {
        unseal_with_pin(a, vol, name, &mut |esys: &mut Esys, pin: &Secret| {
            let auth = plan.auth_value(pin);
            esys.unseal(&plan_request(plan, auth.as_ref()))
        })?
        .map_err(|e| match e {
            TpmError::WrongPin => Error::Tpm(TpmError::WrongPin),
            other => label(other),
        })?
    };
    let passphrase = plan
        .passphrase(&secret)
        .map_err(|e| Error::NoUsableToken(e.to_string()))?;
    drop(secret);
    let (_, volume_key) = vol
        .volume_key(Some(plan.keyslot), passphrase.expose())
        .map_err(|e| match e {
            LuksError::WrongPassphrase { .. } => Error::NoUsableToken(format!(
                "{} token {}: the recovered passphrase does not open keyslot {}",
                plan.kind, plan.id, plan.keyslot
            )),
            other => other.into(),
        })?;
    if !test {
        vol.activate(name, &volume_key)?;
    }
    Ok(volume_key)
}

fn plan_request<'r>(plan: &'r ForeignPlan, auth: Option<&'r Secret>) -> Unseal<'r> {
    Unseal {
        parent: match &plan.parent {
            ParentSpec::Serialized(b) => Parent::Serialized(b),
            ParentSpec::Primary(t) => Parent::Primary(t),
        },
        object: &plan.sealed,
        session_hash: plan.session_hash,
        bank: plan.bank,
        pcrs: &plan.pcrs,
        expected_pcr_digest: None,
        expected_policy: plan.expected_policy.as_deref(),
        signed: plan.signed.as_ref(),
        auth,
    }
}

/// Signed PCR policies: the signatures come from `--signature`, else from where systemd
/// looks (`tpm2-pcr-signature.json` in /etc/systemd, /run/systemd, /usr/local/lib/systemd,
/// /usr/lib/systemd, and /.extra in the initrd).
fn add_signatures(plan: &mut ForeignPlan, explicit: Option<&PathBuf>) {
    if plan.signed.is_none() {
        return;
    }
    let paths = match explicit {
        Some(p) => vec![p.clone()],
        None => systemd::signature_paths(),
    };
    let mut found = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(json) => found.extend(systemd::signatures_for(&json, plan)),
            Err(e) => console::error(&format!("{}: not JSON ({e}); ignored", path.display())),
        }
    }
    if let Some(signed) = plan.signed.as_mut() {
        signed.signatures = found;
    }
}
