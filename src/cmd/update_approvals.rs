//! `sealroot update-approvals`: what the update hooks run on a machine that approves its
//! own boots (`enroll --local-approval`). With the local key this boot's unlock left in
//! root's keyring, each such volume gets one approval covering this boot and the
//! predicted next one (a new kernel, initrd or command line); `--prune`, run once a boot
//! has succeeded, narrows it to this boot alone.
//!
//! This boot is kept in the approval only if an approval already covered it: a boot that
//! was unlocked with the passphrase after a change behind the hooks' back stays
//! unapproved. The new approval is added before the old ones go, so a crash leaves one.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::approval::{self, Approval, RecordedEvent};
use crate::console;
use crate::error::{Error, Result};
use crate::eventlog::EventLog;
use crate::keyring;
use crate::local_key::{self, KEYRING_PREFIX};
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
    pub tcti: Option<String>,
}

/// One boot's values of the approved PCRs.
type PcrSet = Vec<(u32, Vec<u8>)>;

const KERNEL_CMDLINE: &str = "/etc/kernel/cmdline";

/// Returns one line per token: what was approved.
pub fn run(o: &UpdateOptions) -> Result<Vec<String>> {
    let volumes = volumes(&o.devices)?;
    if volumes.is_empty() {
        return Ok(vec![
            "no volume's local approval key is in root's keyring (none enrolled with --local-approval, or not unlocked by the TPM this boot): nothing to approve".into(),
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
    let kernel = o.kernel.as_ref().map(super::predict::read).transpose()?;
    let initrd = o.initrd.as_ref().map(super::predict::read).transpose()?;
    let cmdline = match &o.cmdline {
        Some(c) => Some(c.clone()),
        None => std::fs::read_to_string(KERNEL_CMDLINE)
            .ok()
            .map(|c| c.trim().to_string()),
    };
    let mut next_log = log.clone();
    if !o.prune {
        if kernel.is_none() && initrd.is_none() && cmdline.is_none() {
            return Err(Error::Usage(
                "give --kernel, --initrd or --cmdline (what the next boot changes), or --prune"
                    .into(),
            ));
        }
        let next = NextBoot {
            kernel: kernel.as_deref(),
            initrd: initrd.as_deref(),
            cmdline: cmdline.as_deref(),
            loader: o.loader,
        };
        predict::apply(&mut next_log, &next).map_err(Error::Usage)?;
    }
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let mut done = Vec::new();
    for (device, scalar) in volumes {
        let key = local_key::signing_key(&scalar).map_err(Error::Other)?;
        let public = approval::PolicyKey::from_verifying(*key.verifying_key());
        let mut vol = Volume::open(&device)?;
        let header = vol.tokens()?;
        for entry in &header {
            if tokens::token_type(&entry.json) != tokens::sealroot::TOKEN_TYPE {
                continue;
            }
            let Ok(token) = SealrootToken::from_json(entry.id, &entry.json) else {
                continue;
            };
            let Some((k, policy_ref)) = &token.policy_key else {
                continue;
            };
            if k.name() != public.name() {
                continue;
            }
            let label = format!("{} token {}", device.display(), entry.id);
            let mut approvals: Vec<(u32, Approval)> = header
                .iter()
                .filter_map(|t| {
                    approval::verify(&t.json, k, policy_ref, token.counter.as_ref(), "")
                        .ok()
                        .map(|a| (t.id, a))
                })
                .collect();
            approvals.sort_by_key(|(_, a)| std::cmp::Reverse(a.serial));
            let Some((_, newest)) = approvals.first() else {
                done.push(format!(
                    "{label}: no valid approval to take the PCR list from; approve once with `sealroot approve`"
                ));
                continue;
            };
            let bank = newest.bank;
            let pcrs = newest.pcrs();
            let now = this_boot(&log, &mut tpm, bank, &pcrs)?;
            let approved_now = approvals.iter().any(|(_, a)| a.sets.contains(&now));
            let now_events = predict::record(&log, &pcrs, bank);
            let mut sets: Vec<(PcrSet, Vec<RecordedEvent>)> = Vec::new();
            if approved_now {
                sets.push((now.clone(), now_events));
            }
            let what = if o.prune {
                if !approved_now {
                    done.push(format!(
                        "{label}: this boot is not approved ({}); nothing pruned",
                        unapproved_why(newest, &now)
                    ));
                    continue;
                }
                if approvals.len() == 1 && newest.sets == [now.clone()] {
                    done.push(format!("{label}: only this boot is approved already"));
                    continue;
                }
                "this boot only".to_string()
            } else {
                let replayed = next_log.replay(bank).map_err(Error::Usage)?;
                let next: Vec<(u32, Vec<u8>)> = pcrs
                    .iter()
                    .map(|p| {
                        (
                            *p,
                            replayed
                                .get(p)
                                .cloned()
                                .unwrap_or_else(|| vec![0u8; bank.digest_len()]),
                        )
                    })
                    .collect();
                if !approved_now {
                    console::error(&format!(
                        "warning: {label}: this boot is not approved ({}): only the next boot is",
                        unapproved_why(newest, &now)
                    ));
                }
                if !sets.iter().any(|(s, _)| *s == next) {
                    sets.push((next, predict::record(&next_log, &pcrs, bank)));
                }
                if approved_now && sets.len() == 1 {
                    "this boot, which the next one equals".to_string()
                } else if approved_now {
                    "this boot and the next".to_string()
                } else {
                    "the next boot".to_string()
                }
            };
            let latest = approvals.iter().map(|(_, a)| a.serial).max().unwrap_or(0);
            let serial = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                .max(latest + 1);
            let only_sets: Vec<_> = sets.iter().map(|(s, _)| s.clone()).collect();
            let mut signed = approval::sign_with(
                &key,
                policy_ref,
                bank,
                &only_sets,
                serial,
                token.counter.as_ref(),
            )
            .map_err(Error::Other)?;
            signed.events = Some(sets.into_iter().map(|(_, e)| e).collect());
            let json = serde_json::to_value(&signed).map_err(|e| Error::Other(e.to_string()))?;
            let new_id = vol.add_token(&json)?;
            for old in &header {
                if is_approval_for(&old.json, policy_ref) {
                    vol.remove_token(old.id)?;
                }
            }
            done.push(format!(
                "{label}: approved {what} (PCRs {pcrs:?}; header token {new_id})"
            ));
        }
    }
    Ok(done)
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
    let bad: Vec<u32> = pcrs
        .iter()
        .copied()
        .filter(|p| replayed.get(p).unwrap_or(&zeros) != &live[p])
        .collect();
    if !bad.is_empty() {
        return Err(Error::Other(format!(
            "the event log does not account for PCR(s) {bad:?} (`sealroot predict --verify`): no prediction can be trusted; nothing was approved"
        )));
    }
    Ok(pcrs.iter().map(|p| (*p, live[p].clone())).collect())
}

fn unapproved_why(newest: &Approval, now: &[(u32, Vec<u8>)]) -> String {
    let current: BTreeMap<(PcrBank, u32), Vec<u8>> = now
        .iter()
        .map(|(i, v)| ((newest.bank, *i), v.clone()))
        .collect();
    let differ: Vec<u32> = newest
        .pcrs()
        .into_iter()
        .filter(|p| {
            newest.sets.iter().all(|s| {
                s.iter()
                    .any(|(i, v)| i == p && current.get(&(newest.bank, *i)) != Some(v))
            })
        })
        .collect();
    format!("PCR(s) {differ:?} differ from every approved set")
}

/// The volumes to approve for, each with its local key from the keyring.
fn volumes(devices: &[PathBuf]) -> Result<Vec<(PathBuf, Secret)>> {
    let mut out = Vec::new();
    if !devices.is_empty() {
        for device in devices {
            let uuid = Volume::open(device)?.uuid()?;
            match local_key::find(&uuid) {
                Ok(Some(k)) => out.push((device.clone(), k)),
                Ok(None) => {
                    return Err(Error::NoUsableToken(format!(
                        "no local approval key for {} in root's keyring (an unlock by the TPM leaves it there at boot; until then use `sealroot approve --key`)",
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
        let Some(device) = find_luks(uuid) else {
            console::error(&format!(
                "warning: no block device carries the LUKS2 volume {} whose local key is in the keyring",
                console::escape(uuid)
            ));
            continue;
        };
        if let Ok(Some(k)) = local_key::find(uuid) {
            out.push((device, k));
        }
    }
    Ok(out)
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
