//! `sealroot unlock`: unseal each volume's key with the TPM, open the volumes, then fence.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::console;
use crate::devices::{self, Scan, Source};
use crate::error::{Error, Result};
use crate::firstboot::{self, FirstBoot};
use crate::input;
use crate::local_key;
use crate::luks::{LuksError, Volume};
use crate::secret::Secret;
use crate::tokens::{self, UnsealPlan};
use crate::tpm::fence;
use crate::tpm::{LazyTpm, Tpm, TpmError};
use crate::trust::Trust;
use crate::watchdog;

/// PIN attempts on a terminal before giving up on a token.
const PIN_TRIES: usize = 3;

/// How long `unlock --wait` waits for the volumes, then for the TPM's device.
pub struct DeviceWait {
    pub volumes: Duration,
    pub tpm: Duration,
}

pub struct UnlockOptions {
    /// (volume, mapping name) pairs.
    pub targets: Vec<(Source, String)>,
    /// Wait for the volumes and the TPM (the boot scripts); else they must be there.
    pub wait: Option<DeviceWait>,
    /// Verify the key against the keyslot without activating.
    pub test: bool,
    pub tcti: Option<String>,
    pub pin_file: Option<PathBuf>,
    /// Program that asks for a PIN: run as `PROG "PROMPT"`, its stdout is the PIN.
    pub askpass: Option<PathBuf>,
    /// Signature file for signed PCR policies (else systemd's usual places).
    pub signature: Option<PathBuf>,
    /// Approval files for sealroot tokens with a policy key (besides the header's).
    pub approvals: Vec<PathBuf>,
    /// Extend nothing (tests and tooling; tokens are still checked against `trust`).
    pub no_fence: bool,
    /// The fence and the expected storage key, from trusted configuration.
    pub trust: Trust,
    /// Provision volumes that carry a provision token: at boot (activating them), or
    /// offline (`first-boot`, with `test`). `--test` alone never provisions.
    pub provision: bool,
}

/// One line per volume that failed, already printed; the exit code of the worst.
pub struct UnlockReport {
    pub failures: Vec<(PathBuf, Error)>,
    pub fence_error: Option<TpmError>,
}

pub fn run(o: &UnlockOptions) -> UnlockReport {
    log::debug!("unlock: {} volume(s)", o.targets.len());
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let mut pin_cache: Option<Secret> = None;
    let mut measurements = Vec::new();
    let mut failures = Vec::new();
    let devices = locate(o, &mut tpm);

    for (device, (_, name)) in devices.iter().zip(&o.targets) {
        let mut ctx = Attempt {
            tpm: &mut tpm,
            pin_file: o.pin_file.as_ref(),
            askpass: o.askpass.as_ref(),
            signature: o.signature.as_ref(),
            approvals: &o.approvals,
            pin_cache: &mut pin_cache,
            trust: &o.trust,
            provision: o.provision,
            early: o.wait.is_some(),
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

    // The configured fence, whatever the headers said and whatever happened above.
    let mut fence_error = None;
    if let (false, Some(pcr)) = (o.no_fence, o.trust.fence_pcr) {
        let event = fence::event(&measurements);
        log::debug!("extending the fence");
        let mut r = tpm.get().and_then(|ctx| ctx.pcr_event(pcr, &event));
        if r.is_err() {
            // Once more on a fresh context: a connection lost mid-unlock leaves the old one
            // unusable although the TPM may answer again (extending twice does no harm).
            tpm.reopen();
            r = tpm.get().and_then(|ctx| ctx.pcr_event(pcr, &event));
        }
        match r {
            Err(e) => fence_error = Some(e),
            Ok(()) => console::progress(&format!("fence PCR {pcr} extended")),
        }
    }
    UnlockReport {
        failures,
        fence_error,
    }
}

/// Where each volume is: at once, or (`--wait`) once it appeared, with the TPM opened while
/// waiting. The wait is no TPM time: the watchdog is paused but for opening the TPM.
fn locate(o: &UnlockOptions, tpm: &mut LazyTpm) -> Vec<PathBuf> {
    let sources: Vec<Source> = o.targets.iter().map(|(s, _)| s.clone()).collect();
    let Some(w) = &o.wait else {
        return sources.iter().map(Source::path).collect();
    };
    let mut paused = Some(watchdog::pause());
    let mut open_tpm = |tpm: &mut LazyTpm| {
        if !tpm.is_open() {
            paused.take();
            tpm.prepare(&o.trust.parent);
            paused = Some(watchdog::pause());
        }
    };
    let volumes_by = Instant::now() + w.volumes;
    let paths = devices::wait(&sources, &mut Scan::new(), volumes_by, || open_tpm(tpm));
    let tpm_by = Instant::now() + w.tpm;
    open_tpm(tpm);
    while !tpm.is_open() && Instant::now() < tpm_by {
        std::thread::sleep(Duration::from_millis(20));
        open_tpm(tpm);
    }
    drop(paused);
    match tpm.device() {
        Some(node) if !node.exists() => console::error(&format!(
            "no TPM device after {} s ({} is missing)",
            w.tpm.as_secs(),
            node.display()
        )),
        _ => console::progress("devices ready, unlocking"),
    }
    paths
}

struct Attempt<'a> {
    tpm: &'a mut LazyTpm,
    pin_file: Option<&'a PathBuf>,
    askpass: Option<&'a PathBuf>,
    signature: Option<&'a PathBuf>,
    approvals: &'a [PathBuf],
    pin_cache: &'a mut Option<Secret>,
    trust: &'a Trust,
    provision: bool,
    /// Unseal while libcryptsetup loads the header (boot, `--wait`).
    early: bool,
}

type VolumeResult = std::result::Result<(String, Secret), (Option<String>, Error)>;

fn unlock_volume(
    a: &mut Attempt<'_>,
    device: &std::path::Path,
    name: &str,
    test: bool,
) -> VolumeResult {
    log::debug!("{}: opening", device.display());
    let (opened, early) = open_with_early_unseal(a, device);
    let mut vol = opened.map_err(|e| (None, e.into()))?;
    log::debug!("{}: LUKS2 header loaded", device.display());
    let uuid = vol.uuid().map_err(|e| (None, e.into()))?;
    let fail = |e: Error| (Some(uuid.clone()), e);
    // The header's JSON, read once (again only after a first-boot attempt).
    let mut header = vol.tokens().map_err(|e| fail(e.into()))?;
    log::debug!("{}: {} token(s) read", device.display(), header.len());
    let first_boot = firstboot::find_in(&header);
    if let Some((plan, json, secret)) = early {
        // Used only if libcryptsetup read the very token the TPM unsealed, and no first boot
        // is pending in its reading either.
        let same = header.iter().any(|t| t.id == plan.id && t.json == json);
        if same && matches!(first_boot, Ok(None)) {
            match open_with_secret(&mut vol, &plan, secret, name, test) {
                Ok(vk) => return Ok((uuid, vk)),
                Err(e) => log::debug!("{}: {e}; trying every token", device.display()),
            }
        } else {
            log::debug!(
                "{}: the header changed under the early unseal; not used",
                device.display()
            );
        }
    }
    // An image's first boot: provisioning opens the volume (and makes it this instance's).
    match first_boot {
        Ok(Some(_)) if !a.provision => console::error(&format!(
            "{} awaits its first-boot provisioning, which --test does not do (`sealroot first-boot` does, offline)",
            device.display()
        )),
        Ok(Some((id, token))) => {
            let mut fb = FirstBoot {
                tpm: a.tpm,
                trust: a.trust,
                activate_as: (!test).then_some(name),
            };
            match firstboot::run(&mut fb, &mut vol, id, token) {
                Ok(Some(volume_key)) => return Ok((uuid, volume_key)),
                Ok(None) => header = vol.tokens().map_err(|e| fail(e.into()))?,
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(None) => {}
        Err(e) => console::error(&format!("{}: {e}", device.display())),
    }
    // sealroot's own tokens first, then what systemd-cryptenroll and clevis enrolled, each
    // group in token order.
    let mut entries: Vec<_> = header
        .iter()
        .filter_map(|t| {
            let order = tokens::unlock_order(tokens::token_type(&t.json));
            Some((order, t.id, tokens::plan(t.id, &t.json)?))
        })
        .collect();
    entries.sort_by_key(|(order, id, _)| (*order, *id));
    if entries.is_empty() {
        return Err(fail(Error::NoUsableToken(format!(
            "no sealroot, systemd-tpm2 or clevis token on {}; enroll one with `sealroot enroll`, or use `sealroot recover`",
            device.display()
        ))));
    }
    let mut best: Option<Error> = None;
    let count = entries.len();
    for (n, (_, id, planned)) in entries.into_iter().enumerate() {
        let attempt = planned
            .map_err(|e| Error::NoUsableToken(e.to_string()))
            .and_then(|mut plan| {
                plan.admit(a.trust)
                    .map_err(|e| Error::NoUsableToken(e.to_string()))?;
                plan.load_signatures(a.signature);
                plan.load_approvals(&header, a.approvals);
                if plan.approvals.is_some() {
                    plan.choose_approval(a.tpm.get()?)
                        .map_err(|e| Error::Token {
                            label: plan.label(),
                            source: Box::new(e.into()),
                        })?;
                }
                unlock_with_plan(a, &mut vol, &plan, name, test).map_err(|e| Error::Token {
                    label: plan.label(),
                    source: Box::new(e),
                })
            });
        match attempt {
            Ok(vk) => return Ok((uuid, vk)),
            Err(e) => {
                log::info!("{}: {e} (token {id})", device.display());
                // Said now when another token follows; the last failure is the verdict.
                if n + 1 < count {
                    console::progress(&format!("{}: {e}", device.display()));
                }
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

/// What an early unseal gives: the plan, the token's JSON it came from, the secret.
type Early = (UnsealPlan, serde_json::Value, Secret);

/// libcryptsetup's header load, and (at boot, `--wait`) meanwhile on another thread the
/// unseal of the first token as sealroot's own reading of the header names it: the TPM's
/// commands overlap the load instead of following it. Only a token that needs nothing
/// but the TPM (no PIN, no approvals, no first boot pending); anything else, or any
/// failure, is left to the ordinary path, which tries every token as usual.
fn open_with_early_unseal(
    a: &mut Attempt<'_>,
    device: &std::path::Path,
) -> (std::result::Result<Volume, LuksError>, Option<Early>) {
    let Some((plan, json)) = a.early.then(|| early_plan(a, device)).flatten() else {
        return (Volume::open(device), None);
    };
    let expected = &a.trust.parent;
    let Ok(tpm) = a.tpm.get() else {
        return (Volume::open(device), None);
    };
    let request = plan.request(None, expected);
    let (opened, unsealed) = std::thread::scope(|scope| {
        let unseal = scope.spawn(|| tpm.unseal(&request));
        let opened = Volume::open(device);
        (opened, unseal.join())
    });
    let secret = match unsealed {
        Ok(Ok(secret)) => {
            log::debug!("token unsealed (while the header loaded)");
            Some(secret)
        }
        Ok(Err(e)) => {
            log::debug!("early unseal: {e}");
            None
        }
        Err(_) => None,
    };
    (opened, secret.map(|secret| (plan, json, secret)))
}

/// The first token to try, from the header as sealroot reads it (newest intact copy),
/// if it needs only the TPM.
fn early_plan(
    a: &Attempt<'_>,
    device: &std::path::Path,
) -> Option<(UnsealPlan, serde_json::Value)> {
    let tokens = crate::luks::header::peek_tokens(device)?;
    if firstboot::find_in(&tokens).ok()?.is_some() {
        return None;
    }
    let (_, _, json, planned) = tokens
        .iter()
        .filter_map(|t| {
            let order = tokens::unlock_order(tokens::token_type(&t.json));
            Some((order, t.id, &t.json, tokens::plan(t.id, &t.json)?))
        })
        .min_by_key(|(order, id, _, _)| (*order, *id))?;
    let mut plan = planned.ok()?;
    plan.admit(a.trust).ok()?;
    plan.load_signatures(a.signature);
    plan.load_approvals(&tokens, a.approvals);
    (plan.pin.is_none() && plan.approvals.is_none()).then(|| (plan, json.clone()))
}

/// Unseals as the plan says (asking for a PIN if it needs one), turns the bytes into the
/// passphrase the way the token's tool does, opens the keyslot, activates.
fn unlock_with_plan(
    a: &mut Attempt<'_>,
    vol: &mut Volume,
    plan: &UnsealPlan,
    name: &str,
    test: bool,
) -> Result<Secret> {
    let expected = &a.trust.parent;
    // `unseal` checks the parent before it sends anything under it; a PIN token has it
    // checked before the PIN is asked for, too.
    a.tpm.get()?;
    log::debug!("TPM context open");
    let unsealed = if plan.pin.is_none() {
        a.tpm.get()?.unseal(&plan.request(None, expected))
    } else {
        a.tpm.get()?.verify(&plan.request(None, expected))?;
        log::debug!("parent verified before asking for the PIN");
        let offer_cached = plan.parent_is_checked();
        unseal_with_pin(
            a,
            vol,
            name,
            offer_cached,
            &mut |tpm: &mut Tpm, pin: &Secret| {
                let auth = plan.auth_value(pin);
                tpm.unseal(&plan.request(auth.as_ref(), expected))
            },
        )?
    };
    let secret = unsealed.map_err(|e| match e {
        TpmError::PolicyMismatch { detail } if detail.is_empty() => TpmError::PolicyMismatch {
            detail: a
                .tpm
                .get()
                .map_or(String::new(), |tpm| mismatch_detail(tpm, plan)),
        },
        other => other,
    })?;
    log::debug!("token unsealed");
    open_with_secret(vol, plan, secret, name, test)
}

/// The rest of an unlock once the token's secret is unsealed: the passphrase the way the
/// token's tool makes it, the keyslot, the activation, the local approval key.
fn open_with_secret(
    vol: &mut Volume,
    plan: &UnsealPlan,
    secret: Secret,
    name: &str,
    test: bool,
) -> Result<Secret> {
    let passphrase = plan
        .passphrase(&secret)
        .map_err(|e| Error::NoUsableToken(e.to_string()))?;
    let local_key = match plan.approvals.as_ref() {
        Some(a) if !test => a.local_key.as_ref().map(|wrapped| {
            local_key::unwrap(
                secret.expose(),
                local_key::WrappedBy::SealedSecret,
                &a.policy_ref,
                wrapped,
            )
        }),
        _ => None,
    };
    drop(secret);
    let (_, volume_key) = vol
        .volume_key(Some(plan.keyslot), passphrase.expose())
        .map_err(|e| match e {
            LuksError::WrongPassphrase { .. } => Error::NoUsableToken(format!(
                "the unsealed key does not open keyslot {} (token and keyslot out of sync); use `sealroot recover`, then re-enroll",
                plan.keyslot
            )),
            other => other.into(),
        })?;
    log::debug!("keyslot {} opened", plan.keyslot);
    if !test {
        vol.activate(name, &volume_key)?;
        log::debug!("{name} activated");
    }
    // Only now that the keyslot opened: the booted system's update hooks approve with it.
    if let Some(key) = local_key {
        let published = key.and_then(|k| {
            local_key::publish(&vol.uuid().map_err(|e| e.to_string())?, &k)
                .map_err(|e| e.to_string())
        });
        match published {
            Ok(()) => log::debug!("local approval key left in root's keyring"),
            Err(e) => console::error(&format!(
                "warning: the local approval key is not available to the booted system ({e}); before an update, run `sealroot update-approvals --unlock-key-file FILE` with a passphrase of the volume"
            )),
        }
    }
    Ok(volume_key)
}

/// Names the PCRs that differ (read only on this failure path, so a normal unlock sends
/// no extra commands).
fn mismatch_detail(tpm: &mut Tpm, plan: &UnsealPlan) -> String {
    match plan.current_pcrs(tpm) {
        Ok(now) => plan.explain(&plan.check(&now)),
        Err(_) => String::new(),
    }
}

/// Unseals with a PIN: first one that served another volume (offered once, as a
/// convenience, and only when `offer_cached`: the parent is a verified persistent key), then from the PIN file, askpass or the terminal,
/// up to PIN_TRIES times when asking. The outer error is a PIN that could not be read; the
/// inner one what the TPM said (a wrong PIN after the tries).
fn unseal_with_pin(
    a: &mut Attempt<'_>,
    vol: &Volume,
    name: &str,
    offer_cached: bool,
    unseal: &mut dyn FnMut(&mut Tpm, &Secret) -> std::result::Result<Secret, TpmError>,
) -> Result<std::result::Result<Secret, TpmError>> {
    let cached = if offer_cached {
        a.pin_cache.take()
    } else {
        None
    };
    if let Some(pin) = cached {
        match unseal(a.tpm.get()?, &pin) {
            Ok(s) => {
                *a.pin_cache = Some(pin);
                return Ok(Ok(s));
            }
            Err(TpmError::WrongPin) => log::info!("the PIN of the previous volume does not fit"),
            Err(e) => return Ok(Err(e)),
        }
    }
    // A TPM in lockout would refuse any PIN: say so instead of asking for one.
    if a.tpm.get()?.in_lockout()? {
        return Ok(Err(TpmError::Lockout));
    }
    let tries = if a.pin_file.is_some() { 1 } else { PIN_TRIES };
    for attempt in 0..tries {
        let pin = read_pin(a.pin_file, a.askpass, vol, name)?;
        match unseal(a.tpm.get()?, &pin) {
            Ok(s) => {
                // The same PIN often serves several volumes: offer it to them.
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
    // A person may take their time: the TPM watchdog does not count it.
    let _paused = crate::watchdog::pause();
    let prompt = format!("TPM PIN for {name} ({}): ", vol.path().display());
    match (pin_file, askpass) {
        (Some(p), _) => input::read_line_file(p),
        (None, Some(prog)) => input::read_askpass(prog, &prompt),
        (None, None) if input::terminal_available() => input::read_terminal(&prompt),
        (None, None) => Err(Error::Tpm(TpmError::PinNeeded)),
    }
}
