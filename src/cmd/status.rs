//! `sealroot status`: what is enrolled, and whether each token's PCRs match right now.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::LazyTpm;
use crate::error::Result;
use crate::luks::Volume;
use crate::token::{SealrootToken, TOKEN_TYPE, token_keyslots, token_type};
use crate::tokens::{ForeignPlan, clevis, systemd};
use crate::tpm::pcr;
use crate::tpm::policy::foreign_policy;

pub struct StatusOptions {
    pub device: PathBuf,
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
    let mut tokens = Vec::new();
    for entry in vol.tokens()? {
        let kind = token_type(&entry.json).to_string();
        let mut t = json!({
            "id": entry.id,
            "type": kind,
            "keyslots": token_keyslots(&entry.json),
        });
        if kind == TOKEN_TYPE {
            match SealrootToken::from_json(entry.id, &entry.json) {
                Err(e) => t["error"] = json!(e.to_string()),
                Ok(token) => describe(&mut t, &token, &mut tpm, &mut tpm_error),
            }
        } else if kind == systemd::TOKEN_TYPE || kind == clevis::TOKEN_TYPE {
            let planned = if kind == systemd::TOKEN_TYPE {
                systemd::plan(entry.id, &entry.json)
            } else {
                clevis::plan(entry.id, &entry.json)
            };
            match planned {
                Err(e) => t["error"] = json!(e.to_string()),
                Ok(plan) => describe_foreign(&mut t, &plan, &mut tpm, &mut tpm_error),
            }
        }
        tokens.push(t);
    }
    Ok(json!({
        "device": o.device.display().to_string(),
        "uuid": uuid,
        "keyslots": keyslots,
        "tokens": tokens,
        "tpm_error": tpm_error,
    }))
}

fn describe(
    t: &mut Value,
    token: &SealrootToken,
    tpm: &mut LazyTpm,
    tpm_error: &mut Option<String>,
) {
    t["bank"] = json!(token.bank.name());
    t["pcrs"] = json!(token.pcr_indexes());
    t["fence_pcr"] = json!(token.fence_pcr);
    t["pin"] = json!(token.pin.is_some());
    let current = tpm
        .get()
        .and_then(|ctx| pcr::read(ctx, token.bank, &token.pcr_indexes()));
    match current {
        Err(e) => {
            *tpm_error = Some(e.to_string());
        }
        Ok(values) => {
            let mut checks = Vec::new();
            let mut differ = Vec::new();
            for (i, expected) in &token.pcrs {
                let now = values.get(i);
                let matches = now == Some(expected);
                if !matches {
                    differ.push(*i);
                }
                checks.push(json!({
                    "pcr": i,
                    "expected": hex::encode(expected),
                    "current": now.map(hex::encode),
                    "matches": matches,
                    "fence": Some(*i) == token.fence_pcr,
                }));
            }
            t["pcr_check"] = json!(checks);
            t["pcrs_differ"] = json!(differ);
        }
    }
}

/// Foreign tokens record no PCR values, only the policy: compare it with the one the
/// current values give (systemd literal and clevis policies are PolicyPCR [+ AuthValue]).
fn describe_foreign(
    t: &mut Value,
    plan: &ForeignPlan,
    tpm: &mut LazyTpm,
    tpm_error: &mut Option<String>,
) {
    t["bank"] = json!(plan.bank.name());
    t["pcrs"] = json!(plan.pcrs);
    t["fence_pcr"] = Value::Null;
    t["pin"] = json!(plan.pin.is_some());
    match tpm
        .get()
        .and_then(|ctx| pcr::read(ctx, plan.bank, &plan.pcrs))
    {
        Err(e) => *tpm_error = Some(e.to_string()),
        Ok(values) => {
            let pcrs: Vec<(u32, Vec<u8>)> = values.into_iter().collect();
            let now = foreign_policy(plan.session_hash, plan.bank, &pcrs, plan.pin.is_some());
            let matches = plan.expected_policy.as_deref() == Some(now.as_slice());
            t["policy_matches"] = json!(matches);
        }
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
        if let Some(p) = t.get("signed_pcrs") {
            out += &format!(
                "  signed PCR policy over PCRs {p}: unseals when a signature file has a signature for their values\n"
            );
        }
        if let Some(m) = get(t, "policy_matches").as_bool() {
            out += &format!(
                "  would unseal now: {}\n",
                if m {
                    "yes".to_string()
                } else {
                    format!(
                        "no, the PCR policy does not match the current {} values",
                        get(t, "bank").as_str().unwrap_or("?")
                    )
                }
            );
        }
        match get(t, "pcrs_differ").as_array() {
            Some(d) if d.is_empty() => out += "  would unseal now: yes\n",
            Some(d) => {
                let list: Vec<String> = d.iter().map(Value::to_string).collect();
                let (noun, verb) = if d.len() == 1 {
                    ("PCR", "differs")
                } else {
                    ("PCRs", "differ")
                };
                out += &format!(
                    "  would unseal now: no, {noun} {} {verb}\n",
                    list.join(", ")
                );
            }
            None => {}
        }
    }
    if let Some(e) = get(s, "tpm_error").as_str() {
        out += &format!("TPM: {e}\n");
    }
    out
}
