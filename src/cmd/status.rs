//! `sealroot status`: what is enrolled, and whether each token's PCRs match right now.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::Result;
use crate::eventlog::EventLog;
use crate::luks::Volume;
use crate::luks::reencrypt::Reencryption;
use crate::predict;
use crate::tokens::provision::{self, ProvisionToken};
use crate::tokens::{self, PolicyCheck, UnsealPlan, token_keyslots, token_type};
use crate::tpm::LazyTpm;
use crate::tpm::fence::DEFAULT_FENCE_PCR;

pub struct StatusOptions {
    pub device: PathBuf,
    /// Signature file for signed PCR policies (else the token's tool's usual places).
    pub signature: Option<PathBuf>,
    /// Approval files for tokens with a policy key (besides the header's).
    pub approvals: Vec<PathBuf>,
    /// This boot's event log, to explain a mismatch event by event.
    pub eventlog: PathBuf,
    pub tcti: Option<String>,
}

/// The status as JSON; `render_text` turns it into the human form.
pub fn run(o: &StatusOptions) -> Result<Value> {
    let mut vol = Volume::open(&o.device)?;
    let uuid = vol.uuid()?;
    let keyslots: Vec<Value> = vol
        .keyslots()?
        .into_iter()
        .map(|k| json!({"id": k.id, "kdf": k.kdf}))
        .collect();
    let mut tpm = LazyTpm::new(o.tcti.as_deref());
    let mut tpm_error: Option<String> = None;
    let mut out = Vec::new();
    let header = vol.tokens()?;
    for entry in header.iter() {
        let mut t = json!({
            "id": entry.id,
            "type": token_type(&entry.json),
            "keyslots": token_keyslots(&entry.json),
        });
        if token_type(&entry.json) == provision::TOKEN_TYPE {
            match ProvisionToken::from_json(entry.id, &entry.json) {
                Ok(p) => {
                    t["provisioning"] = json!({
                        "done": p.done.iter().map(|s| s.name()).collect::<Vec<_>>(),
                        "reencrypt": p.reencrypt,
                        "escrow_recipient": p.escrow.as_ref().map(|r| r.as_str().to_string()),
                    })
                }
                Err(e) => t["error"] = json!(e),
            }
        }
        match tokens::plan(entry.id, &entry.json) {
            None => {}
            Some(Err(e)) => t["error"] = json!(e.to_string()),
            Some(Ok(mut plan)) => {
                plan.load_signatures(o.signature.as_ref());
                plan.load_approvals(&header, &o.approvals);
                describe(&mut t, &plan, &mut tpm, &mut tpm_error);
                if let Some(a) = &plan.approvals {
                    explain_approvals(&mut t, a, &uuid, &o.eventlog);
                }
            }
        }
        out.push(t);
    }
    let reencryption = match vol.reencryption()? {
        Reencryption::None => None,
        Reencryption::Clean => Some("in progress"),
        Reencryption::Crash => Some("interrupted (resumes on the next run)"),
    };
    Ok(json!({
        "sealroot": crate::VERSION,
        "device": o.device.display().to_string(),
        "uuid": uuid,
        "reencryption": reencryption,
        "keyslots": keyslots,
        "tokens": out,
        "tpm_error": tpm_error,
    }))
}

/// For tokens with a policy key: whether this boot left its local key for the update
/// hooks, and — when no approval holds — which event of this boot differs from the
/// nearest approved boot (from the event log and the events the approval recorded).
fn explain_approvals(t: &mut Value, a: &crate::tokens::Approvals, uuid: &str, eventlog: &Path) {
    if a.local_key.is_some() {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { nix::libc::geteuid() } == 0;
        t["local_approval_key"] = json!(match crate::local_key::find(uuid) {
            _ if !root => "unknown (only root can look into root's keyring)",
            Ok(Some(_)) => "loaded",
            Ok(None) => "not loaded",
            Err(_) => "unreadable",
        });
    }
    if t.get("would_unseal").and_then(Value::as_bool) != Some(false) {
        return;
    }
    let Some(newest) = a.found.iter().find(|ap| ap.events.is_some()) else {
        return;
    };
    let log = match std::fs::read(eventlog)
        .map_err(|e| e.to_string())
        .and_then(|b| EventLog::parse(&b))
    {
        Ok(log) => log,
        Err(e) => {
            t["explanations"] =
                json!([format!("the event log cannot say which event changed: {e}")]);
            return;
        }
    };
    let Ok(replayed) = log.replay(newest.bank) else {
        return;
    };
    let pcrs = newest.pcrs();
    let now_events = predict::record(&log, &pcrs, newest.bank);
    let zeros = vec![0u8; newest.bank.digest_len()];
    // The approved boot nearest to this one: the set with the fewest differing PCRs.
    let differing = |set: &Vec<(u32, Vec<u8>)>| -> Vec<u32> {
        set.iter()
            .filter(|(i, v)| replayed.get(i).unwrap_or(&zeros) != v)
            .map(|(i, _)| *i)
            .collect()
    };
    let Some((set, events)) = newest
        .sets
        .iter()
        .zip(newest.events.iter().flatten())
        .min_by_key(|(set, _)| differing(set).len())
    else {
        return;
    };
    let mut lines: Vec<String> = differing(set)
        .into_iter()
        .map(|p| predict::explain(p, events, &now_events))
        .collect();
    // QEMU's direct kernel boot writes the initrd's size into the kernel's header: a new
    // initrd alone changes the kernel's measurement there.
    if lines.iter().any(|l| l.contains("the initrd differs")) {
        for line in lines
            .iter_mut()
            .filter(|l| l.ends_with("a different kernel image"))
        {
            line.push_str(
                " (or, under QEMU's direct kernel boot, the same kernel with an initrd of another size)",
            );
        }
    }
    t["explanations"] = json!(lines);
}

/// What the token binds, and whether the TPM would unseal it now: the plan checked against
/// the current PCRs in software, the same check `unlock` leaves to the TPM.
fn describe(t: &mut Value, plan: &UnsealPlan, tpm: &mut LazyTpm, tpm_error: &mut Option<String>) {
    t["bank"] = json!(plan.bank.name());
    t["pcrs"] = json!(plan.pcrs);
    t["fence_pcr"] = json!(plan.fence_pcr());
    if plan.outlives_fence(DEFAULT_FENCE_PCR) {
        t["warning"] = json!(format!(
            "this token does not bind the fence PCR {DEFAULT_FENCE_PCR}: it stays usable after the initrd, so anything in the booted system can unseal it while its PCRs hold, which undoes the fence of every other token on this volume; remove it or re-enroll it with PCR {DEFAULT_FENCE_PCR}"
        ));
    }
    t["pin"] = json!(plan.pin.is_some());
    t["offline_sealed"] = json!(plan.sealed.needs_import());
    if let Some((handle, name)) = plan.recorded_parent() {
        t["srk_handle"] = json!(format!("0x{handle:08x}"));
        t["srk_name"] = json!(hex::encode(name));
    }
    if let Some(signed) = &plan.signed {
        t["signed_pcrs"] = json!(signed.pcrs);
        t["signatures"] = json!(signed.signatures.len());
    }
    let current = match tpm.get().and_then(|ctx| plan.current_pcrs(ctx)) {
        Ok(c) => c,
        Err(e) => {
            *tpm_error = Some(e.to_string());
            return;
        }
    };
    if let Some(expected) = &plan.pcr_values {
        let checks: Vec<Value> = expected
            .iter()
            .map(|(i, v)| {
                let now = current.get(&(plan.bank, *i));
                json!({
                    "pcr": i,
                    "expected": hex::encode(v),
                    "current": now.map(hex::encode),
                    "matches": now == Some(v),
                    "fence": Some(*i) == plan.fence_pcr(),
                })
            })
            .collect();
        t["pcr_check"] = json!(checks);
    }
    if let Some(a) = &plan.approvals {
        t["approvals"] = json!(
            a.found
                .iter()
                .map(|ap| json!({
                    "source": ap.source,
                    "serial": ap.serial,
                    "bank": ap.bank.name(),
                    "pcrs": ap.pcrs(),
                    "sets": ap.sets.len(),
                    "matches_now": ap.matching_set(&current).is_some(),
                }))
                .collect::<Vec<_>>()
        );
        t["refused_approvals"] = json!(
            a.refused
                .iter()
                .map(|(source, why)| json!({"source": source, "reason": why}))
                .collect::<Vec<_>>()
        );
    }
    let check = plan.check(&current);
    t["would_unseal"] = json!(check == PolicyCheck::Satisfied);
    let (differ, certain) = match &check {
        PolicyCheck::Differ { pcrs, certain } => (pcrs.clone(), *certain),
        _ => (Vec::new(), true),
    };
    t["pcrs_differ"] = json!(differ);
    t["pcrs_differ_certain"] = json!(certain);
    if let PolicyCheck::Unapproved { pcrs } = &check {
        t["unapproved_pcrs"] = json!(pcrs);
    }
    if check != PolicyCheck::Satisfied {
        t["reason"] = json!(plan.explain(&check));
    }
}

pub fn render_text(s: &Value) -> String {
    let mut out = String::new();
    let get = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    out += &format!(
        "{}: LUKS2, UUID {}\n",
        get(s, "device").as_str().unwrap_or("?"),
        get(s, "uuid").as_str().unwrap_or("?")
    );
    let slots: Vec<String> = get(s, "keyslots")
        .as_array()
        .map(|a| {
            a.iter()
                .map(|k| {
                    format!(
                        "{} ({})",
                        get(k, "id"),
                        get(k, "kdf").as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out += &format!("keyslots: {}\n", slots.join(", "));
    if let Some(r) = get(s, "reencryption").as_str() {
        out += &format!("re-encryption: {r}\n");
    }
    for t in get(s, "tokens").as_array().into_iter().flatten() {
        out += &format!(
            "token {}: {}, keyslots {}\n",
            get(t, "id"),
            get(t, "type").as_str().unwrap_or("?"),
            get(t, "keyslots")
        );
        if let Some(e) = t.get("error").and_then(Value::as_str) {
            out += &format!("  unusable: {e}\n");
            continue;
        }
        if let Some(p) = t.get("provisioning") {
            let done: Vec<String> = get(p, "done")
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            out += &format!(
                "  first-boot provisioning pending: done so far [{}]; re-encrypt {}; recovery key {}\n",
                done.join(", "),
                if get(p, "reencrypt").as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                get(p, "escrow_recipient")
                    .as_str()
                    .map_or("none".to_string(), |r| format!("escrowed to {r}"))
            );
        }
        if t.get("bank").is_none() {
            continue;
        }
        out += &format!(
            "  bank {}, PCRs {}, fence PCR {}, PIN {}\n",
            get(t, "bank").as_str().unwrap_or("?"),
            get(t, "pcrs"),
            match get(t, "fence_pcr") {
                Value::Null => "none".to_string(),
                v => v.to_string(),
            },
            if get(t, "pin").as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        );
        for c in get(t, "pcr_check").as_array().into_iter().flatten() {
            let ok = get(c, "matches").as_bool() == Some(true);
            let fence = get(c, "fence").as_bool() == Some(true);
            out += &format!(
                "  PCR {}: {}{}\n",
                get(c, "pcr"),
                if ok { "matches" } else { "DIFFERS" },
                match (ok, fence) {
                    (false, true) => " (fence extended: already unlocked since the last TPM reset)",
                    _ => "",
                }
            );
        }
        if let (Some(h), Some(n)) = (
            t.get("srk_handle").and_then(Value::as_str),
            t.get("srk_name").and_then(Value::as_str),
        ) {
            if get(t, "offline_sealed").as_bool() == Some(true) {
                out += &format!(
                    "  offline-sealed to the storage key {h}, Name {n} (imported at each unlock)\n"
                );
            } else {
                out += &format!("  sealed under the storage key {h}, Name {n}\n");
            }
        } else if get(t, "offline_sealed").as_bool() == Some(true) {
            out += "  offline-sealed (imported at each unlock)\n";
        }
        if let Some(w) = t.get("warning").and_then(Value::as_str) {
            out += &format!("  WARNING: {w}\n");
        }
        for ap in get(t, "approvals").as_array().into_iter().flatten() {
            out += &format!(
                "  approval from {} (serial {}): {} PCRs {}, {} set(s): {}\n",
                crate::console::escape(get(ap, "source").as_str().unwrap_or("?")),
                get(ap, "serial"),
                get(ap, "bank").as_str().unwrap_or("?"),
                get(ap, "pcrs"),
                get(ap, "sets"),
                if get(ap, "matches_now").as_bool() == Some(true) {
                    "matches now"
                } else {
                    "does not match now"
                }
            );
        }
        for r in get(t, "refused_approvals").as_array().into_iter().flatten() {
            out += &format!(
                "  ignored approval from {}: {}\n",
                crate::console::escape(get(r, "source").as_str().unwrap_or("?")),
                crate::console::escape(get(r, "reason").as_str().unwrap_or("?"))
            );
        }
        match get(t, "local_approval_key").as_str() {
            Some("loaded") => {
                out += "  local approval key: loaded in root's keyring (the update hooks approve new boots)\n"
            }
            Some("not loaded") => {
                out += "  local approval key: not in root's keyring (this boot was not unlocked by this token); before an update, put it back with `sealroot update-approvals DEVICE --unlock-key-file FILE` (a passphrase of the volume)\n"
            }
            Some(other) => out += &format!("  local approval key: {other}\n"),
            None => {}
        }
        for line in get(t, "explanations").as_array().into_iter().flatten() {
            out += &format!("  {}\n", line.as_str().unwrap_or("?"));
        }
        if t.get("approvals")
            .is_some_and(|a| a.as_array().is_some_and(|a| a.is_empty()))
        {
            out += "  no approval yet: nothing unlocks it until `sealroot approve`\n";
        }
        if let Some(p) = t.get("signed_pcrs") {
            out += &format!(
                "  signed PCR policy over PCRs {p}: {} valid signature(s) for this key\n",
                get(t, "signatures")
            );
        }
        match get(t, "would_unseal").as_bool() {
            Some(true) => out += "  would unseal now: yes\n",
            Some(false) => {
                out += &format!(
                    "  would unseal now: no, {}\n",
                    get(t, "reason")
                        .as_str()
                        .unwrap_or("the policy does not match")
                )
            }
            None => {}
        }
    }
    if let Some(e) = get(s, "tpm_error").as_str() {
        out += &format!("TPM: {e}\n");
    }
    out
}
