//! `sealroot update-approvals`: what the update hooks run on a machine that approves its
//! own boots (`enroll --local-approval`). With the local key this boot's unlock left in
//! root's keyring, each such volume's approval is re-signed to cover this boot, the boots
//! approved as pending by earlier runs, and the predicted next one (a new kernel, initrd
//! or command line) — `update-initramfs -u -k all` approves every kernel in turn, none
//! dropping another. `--prune`, run once a boot has succeeded, narrows the approval to it
//! when it is one of the pending boots.
//!
//! The first set of an approval this command writes is the boot that wrote it, when that
//! boot was approved; a boot unlocked with the passphrase after a change behind the hooks'
//! back stays unapproved. The new approval is added before the old ones go, so a crash
//! leaves one, and runs are serialized by a lock in /run.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::approval::{self, Approval, MAX_SETS, RecordedEvent};
use crate::console;
use crate::error::{Error, Result};
use crate::eventlog::EventLog;
use crate::input;
use crate::keyring;
use crate::local_key::{self, KEYRING_PREFIX, WrappedBy};
use crate::luks::Volume;
use crate::predict::{self, Loader, NextBoot};
use crate::secret::Secret;
use crate::tokens::{self, sealroot::SealrootToken};
use crate::tpm::LazyTpm;
use crate::tpm::pcr::PcrBank;

pub struct UpdateOptions {
    pub eventlog: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The next command line as the boot loader is given it; default /etc/kernel/cmdline
    /// when it exists, else this boot's.
    pub cmdline: Option<String>,
    pub loader: Loader,
    pub prune: bool,
    /// Default: every volume whose local key is in root's keyring.
    pub devices: Vec<PathBuf>,
    /// A passphrase of the volume: recovers the local key (wrapped under the volume key)
    /// after a boot that did not unlock by the TPM, and leaves it in the keyring.
    pub unlock_key_file: Option<PathBuf>,
    pub tcti: Option<String>,
}

/// One boot's values of the approved PCRs.
type PcrSet = Vec<(u32, Vec<u8>)>;

const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";
const LOCK: &str = "/run/lock/sealroot-approvals.lock";

/// Returns one line per token: what was approved.
pub fn run(o: &UpdateOptions) -> Result<Vec<String>> {
    refuse_chroot()?;
    if o.unlock_key_file.is_some() && o.devices.len() != 1 {
        return Err(Error::Usage(
            "--unlock-key-file recovers the key of one volume: name its device".into(),
        ));
    }
    let _lock = lock()?;
    let volumes = volumes(&o.devices, o.unlock_key_file.as_deref())?;
    if volumes.is_empty() {
        return Ok(vec![
            "no volume's local approval key is in root's keyring (none enrolled with --local-approval, or none unlocked by the TPM this boot): nothing to approve".into(),
        ]);
    }
    let bytes = std::fs::read(&o.eventlog).map_err(|e| {
        Error::Usage(format!(
            "cannot read the event log {}: {e}",
            o.eventlog.display()
        ))
    })?;
    let log = EventLog::parse(&bytes)
        .map_err(|e| Error::Usage(format!("{}: {e}", o.eventlog.display())))?;
    let next_log = if o.prune {
        None
    } else {
        Some(next_boot(o, &log)?)
    };
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let mut done = Vec::new();
    for (device, scalar) in volumes {
        let mut vol = Volume::open(&device)?;
        for (id, token) in local_tokens(&mut vol, &scalar)? {
            let label = format!("{} token {id}", device.display());
            let step = Step {
                label: &label,
                log: &log,
                next_log: next_log.as_ref(),
                scalar: &scalar,
            };
            done.push(step.run(&mut vol, &token, &mut tpm)?);
        }
    }
    Ok(done)
}

/// The log of the next boot, edited from this one's.
fn next_boot(o: &UpdateOptions, log: &EventLog) -> Result<EventLog> {
    let kernel = o.kernel.as_ref().map(super::predict::read).transpose()?;
    let initrd = o.initrd.as_ref().map(super::predict::read).transpose()?;
    let cmdline = match &o.cmdline {
        Some(c) => Some(c.clone()),
        // kernel-install's convention: the words of the file, one line; empty is unset.
        None => std::fs::read_to_string(KERNEL_CMDLINE)
            .ok()
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|c| !c.is_empty()),
    };
    if kernel.is_none() && initrd.is_none() && cmdline.is_none() {
        return Err(Error::Usage(
            "give --kernel, --initrd or --cmdline (what the next boot changes), or --prune".into(),
        ));
    }
    let mut next_log = log.clone();
    let next = NextBoot {
        kernel: kernel.as_deref(),
        initrd: initrd.as_deref(),
        cmdline: cmdline.as_deref(),
        loader: o.loader,
    };
    predict::apply(&mut next_log, &next).map_err(Error::Usage)?;
    Ok(next_log)
}

/// The sealroot tokens of `vol` whose policy key is this local key.
fn local_tokens(vol: &mut Volume, scalar: &Secret) -> Result<Vec<(u32, SealrootToken)>> {
    let key = local_key::signing_key(scalar).map_err(Error::Other)?;
    let public = approval::PolicyKey::from_verifying(*key.verifying_key());
    Ok(vol
        .tokens()?
        .iter()
        .filter(|t| tokens::token_type(&t.json) == tokens::sealroot::TOKEN_TYPE)
        .filter_map(|t| Some((t.id, SealrootToken::from_json(t.id, &t.json).ok()?)))
        .filter(|(_, token)| {
            token
                .policy_key
                .as_ref()
                .is_some_and(|(k, _)| k.name() == public.name())
        })
        .collect())
}

struct Step<'a> {
    label: &'a str,
    log: &'a EventLog,
    /// None: prune.
    next_log: Option<&'a EventLog>,
    scalar: &'a Secret,
}

impl Step<'_> {
    fn run(&self, vol: &mut Volume, token: &SealrootToken, tpm: &mut LazyTpm) -> Result<String> {
        let label = self.label;
        let Some((key, policy_ref)) = &token.policy_key else {
            return Ok(format!("{label}: no policy key"));
        };
        let header = vol.tokens()?;
        let mut approvals: Vec<(u32, Approval)> = header
            .iter()
            .filter_map(|t| {
                approval::verify(&t.json, key, policy_ref, token.counter.as_ref(), "")
                    .ok()
                    .map(|a| (t.id, a))
            })
            .collect();
        approvals.sort_by_key(|(_, a)| std::cmp::Reverse(a.serial));
        let Some((_, newest)) = approvals.first() else {
            return Ok(format!(
                "{label}: no valid approval to take the PCR list from; remove the token and enroll again with --local-approval --pcrs LIST"
            ));
        };
        let bank = newest.bank;
        let pcrs = newest.pcrs();
        let now = this_boot(self.log, tpm, bank, &pcrs)?;
        let approved_now = approvals
            .iter()
            .any(|(_, a)| a.sets.iter().any(|s| same_set(s, &now)));
        let now_events = predict::record(self.log, &pcrs, bank);
        // The newest approval's sets with their recorded events (none when not recorded).
        let newest_sets: Vec<(PcrSet, Vec<RecordedEvent>)> = newest
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let events = newest
                    .events
                    .as_ref()
                    .and_then(|e| e.get(i).cloned())
                    .unwrap_or_default();
                (s.clone(), events)
            })
            .collect();
        let mut sets: Vec<(PcrSet, Vec<RecordedEvent>)> = Vec::new();
        if approved_now {
            sets.push((now.clone(), now_events));
        }
        let what = match self.next_log {
            None => {
                if !approved_now {
                    return Ok(format!(
                        "{label}: this boot is not approved ({}); nothing pruned",
                        unapproved_why(newest, &now)
                    ));
                }
                // Set 0 is the boot that approved the others: booting it again (the old
                // kernel, a fallback) keeps the pending ones.
                match newest_sets.iter().position(|(s, _)| same_set(s, &now)) {
                    Some(0) if newest_sets.len() > 1 => {
                        return Ok(format!(
                            "{label}: this is the boot that approved the pending ones; kept"
                        ));
                    }
                    _ if approvals.len() == 1 && newest_sets.len() == 1 => {
                        return Ok(format!("{label}: only this boot is approved already"));
                    }
                    _ => "this boot only".to_string(),
                }
            }
            Some(next_log) => {
                if !approved_now {
                    console::error(&format!(
                        "warning: {label}: this boot is not approved ({}): it stays so; only the next boot is approved",
                        unapproved_why(newest, &now)
                    ));
                }
                // Pending boots approved by earlier runs stay, oldest dropped first when
                // PolicyOR is full; this boot's old entry is already first.
                let replayed = next_log.replay(bank).map_err(Error::Usage)?;
                let next: PcrSet = pcrs
                    .iter()
                    .map(|p| {
                        let v = replayed.get(p).cloned();
                        (*p, v.unwrap_or_else(|| vec![0u8; bank.digest_len()]))
                    })
                    .collect();
                let mut pending: Vec<(PcrSet, Vec<RecordedEvent>)> = newest_sets
                    .into_iter()
                    .skip(1)
                    .filter(|(s, _)| !same_set(s, &now) && !same_set(s, &next))
                    .collect();
                let fresh = !same_set(&now, &next) || !approved_now;
                let room = MAX_SETS - sets.len() - usize::from(fresh);
                if pending.len() > room {
                    pending.drain(..pending.len() - room);
                }
                sets.extend(pending);
                if fresh {
                    sets.push((next, predict::record(next_log, &pcrs, bank)));
                }
                match (approved_now, sets.len()) {
                    (true, 1) => "this boot, which the next one equals".to_string(),
                    (true, n) => format!("this boot and {} pending or next one(s)", n - 1),
                    (false, n) => format!("{n} pending or next boot(s)"),
                }
            }
        };
        let new_id = self.write(vol, &header, token, &approvals, sets)?;
        Ok(format!(
            "{label}: approved {what} (PCRs {pcrs:?}; header token {new_id})"
        ))
    }

    /// Signs `sets`, adds the approval, then removes the token's older ones.
    fn write(
        &self,
        vol: &mut Volume,
        header: &[crate::luks::volume::TokenEntry],
        token: &SealrootToken,
        approvals: &[(u32, Approval)],
        sets: Vec<(PcrSet, Vec<RecordedEvent>)>,
    ) -> Result<u32> {
        let Some((_, policy_ref)) = &token.policy_key else {
            return Err(Error::Other("no policy key".into()));
        };
        let bank = approvals.first().map_or(PcrBank::Sha256, |(_, a)| a.bank);
        let key = local_key::signing_key(self.scalar).map_err(Error::Other)?;
        let latest = approvals.iter().map(|(_, a)| a.serial).max().unwrap_or(0);
        let only_sets: Vec<PcrSet> = sets.iter().map(|(s, _)| s.clone()).collect();
        let mut signed = approval::sign_with(
            &key,
            policy_ref,
            bank,
            &only_sets,
            approval::next_serial(latest),
            token.counter.as_ref(),
        )
        .map_err(Error::Other)?;
        signed.events = Some(sets.into_iter().map(|(_, e)| e).collect());
        let json = serde_json::to_value(&signed).map_err(|e| Error::Other(e.to_string()))?;
        let new_id = vol.add_token(&json)?;
        for old in header {
            if is_approval_for(&old.json, policy_ref) {
                vol.remove_token(old.id)?;
            }
        }
        Ok(new_id)
    }
}

/// The same PCR values, whatever the order they are listed in.
fn same_set(a: &[(u32, Vec<u8>)], b: &[(u32, Vec<u8>)]) -> bool {
    let sorted = |s: &[(u32, Vec<u8>)]| {
        let mut v = s.to_vec();
        v.sort();
        v
    };
    sorted(a) == sorted(b)
}

fn is_approval_for(json: &Value, policy_ref: &[u8]) -> bool {
    tokens::token_type(json) == approval::TOKEN_TYPE
        && json.get("policy_ref").and_then(Value::as_str) == Some(hex::encode(policy_ref).as_str())
}

/// This boot's values of `pcrs`, read from the TPM; the log must account for each, since
/// the prediction edits the log.
fn this_boot(log: &EventLog, tpm: &mut LazyTpm, bank: PcrBank, pcrs: &[u32]) -> Result<PcrSet> {
    let live = tpm.get()?.pcr_read(bank, pcrs)?;
    let replayed = log.replay(bank).map_err(Error::Usage)?;
    let zeros = vec![0u8; bank.digest_len()];
    let mut set = Vec::new();
    let mut bad = Vec::new();
    for p in pcrs {
        let value = live.get(p).cloned().unwrap_or_default();
        if replayed.get(p).unwrap_or(&zeros) != &value {
            bad.push(*p);
        }
        set.push((*p, value));
    }
    if !bad.is_empty() {
        return Err(Error::Other(format!(
            "the event log does not account for PCR(s) {bad:?} (`sealroot predict --verify`): no prediction can be trusted; nothing was approved"
        )));
    }
    Ok(set)
}

fn unapproved_why(newest: &Approval, now: &[(u32, Vec<u8>)]) -> String {
    let differ: Vec<u32> = newest
        .pcrs()
        .into_iter()
        .filter(|p| {
            let value = now.iter().find(|(i, _)| i == p).map(|(_, v)| v);
            newest
                .sets
                .iter()
                .all(|s| s.iter().any(|(i, v)| i == p && Some(v) != value))
        })
        .collect();
    format!("PCR(s) {differ:?} differ from every approved set")
}

/// Keyrings are not per chroot: an image builder's chroot would see the host's key and
/// log, and approve the image's kernel for the host's disk.
fn refuse_chroot() -> Result<()> {
    let ours = std::fs::metadata("/");
    let init = std::fs::metadata("/proc/1/root");
    if let (Ok(a), Ok(b)) = (ours, init)
        && (a.dev(), a.ino()) != (b.dev(), b.ino())
    {
        return Err(Error::Usage(
            "running in a chroot: approvals are for the booted system's disks; nothing was approved".into(),
        ));
    }
    Ok(())
}

/// One run at a time: a prune at boot and an upgrade's hook must not remove each other's
/// approval.
fn lock() -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let _ = std::fs::create_dir_all("/run/lock");
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
    else {
        // No writable /run (a test root): nothing else runs there either.
        return Ok(None);
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(Some)
        .map_err(|(_, e)| Error::Other(format!("{LOCK}: {e}")))
}

/// The volumes to approve for, each with its local key from the keyring (or recovered
/// with a passphrase and left there).
fn volumes(devices: &[PathBuf], unlock_key_file: Option<&Path>) -> Result<Vec<(PathBuf, Secret)>> {
    let mut out = Vec::new();
    if !devices.is_empty() {
        for device in devices {
            let mut vol = Volume::open(device)?;
            let uuid = vol.uuid()?;
            if let Some(file) = unlock_key_file {
                let key = recover_key(&mut vol, device, file)?;
                local_key::publish(&uuid, &key)
                    .map_err(|e| Error::Other(format!("root's keyring: {e}")))?;
                eprintln!(
                    "sealroot: {}: the local approval key is back in root's keyring",
                    device.display()
                );
            }
            match local_key::find(&uuid) {
                Ok(Some(k)) => out.push((device.clone(), k)),
                Ok(None) => {
                    return Err(Error::NoUsableToken(format!(
                        "no local approval key for {} in root's keyring: this boot did not unlock it by the TPM; give a passphrase of the volume with --unlock-key-file FILE to recover the key",
                        device.display()
                    )));
                }
                Err(e) => return Err(Error::Other(format!("root's keyring: {e}"))),
            }
        }
        return Ok(out);
    }
    let names =
        keyring::list(KEYRING_PREFIX).map_err(|e| Error::Other(format!("root's keyring: {e}")))?;
    for name in names {
        let uuid = &name[KEYRING_PREFIX.len()..];
        if !local_key::is_uuid(uuid) {
            continue;
        }
        let Some(device) = find_luks(uuid) else {
            console::error(&format!(
                "warning: no block device carries the LUKS2 volume {uuid} whose local key is in the keyring"
            ));
            continue;
        };
        if let Ok(Some(k)) = local_key::find(uuid) {
            out.push((device, k));
        }
    }
    Ok(out)
}

/// The local key of `vol`'s local-approval token, unwrapped with the volume key a
/// passphrase opens.
fn recover_key(vol: &mut Volume, device: &Path, file: &Path) -> Result<Secret> {
    let passphrase = input::read_key_file(file)?;
    let (_, volume_key) = vol.volume_key(None, passphrase.expose())?;
    for entry in vol.tokens()? {
        if tokens::token_type(&entry.json) != tokens::sealroot::TOKEN_TYPE {
            continue;
        }
        let Ok(token) = SealrootToken::from_json(entry.id, &entry.json) else {
            continue;
        };
        if let (Some(wrapped), Some((_, policy_ref))) = (&token.local_key_vk, &token.policy_key) {
            return local_key::unwrap(
                volume_key.expose(),
                WrappedBy::VolumeKey,
                policy_ref,
                wrapped,
            )
            .map_err(|e| Error::NoUsableToken(format!("token {}: {e}", entry.id)));
        }
    }
    Err(Error::NoUsableToken(format!(
        "{} has no token enrolled with --local-approval",
        device.display()
    )))
}

/// The block device whose LUKS2 header has this UUID: udev's link, else a scan of every
/// block device's first sector (early systems without udev).
fn find_luks(uuid: &str) -> Option<PathBuf> {
    let link = Path::new("/dev/disk/by-uuid").join(uuid);
    if link.exists() {
        return Some(link);
    }
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Path::new("/dev").join(n))
        .find(|dev| {
            let mut head = [0u8; 512];
            std::fs::File::open(dev)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head.starts_with(b"LUKS\xba\xbe\x00\x02")
                && head[168..208].split(|b| *b == 0).next() == Some(uuid.as_bytes())
        })
}
