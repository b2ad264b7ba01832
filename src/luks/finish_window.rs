//! libcryptsetup's finishing window: a forward re-encryption whose data pass is complete
//! but whose last header update never happened (libcryptsetup 2.6 destroys the old key's
//! keyslots one header write at a time and only then drops the backup segments, the
//! reencrypt keyslot and the requirement flag). Proven from the header alone, then
//! finished by sealroot with a restored header backup.

use libcryptsetup_rs::consts::vals::EncryptionFormat;
use serde_json::{Map, Value};

use super::header;
use super::reencrypt::Reencryption;
use super::volume::{LuksError, Volume};

impl Volume {
    /// Finishes a re-encryption whose data pass is complete but whose last header update
    /// never happened: libcryptsetup 2.6 ends a pass by destroying the old key's keyslots
    /// one header write at a time and only then, in one more write, drops the backup
    /// segments, the reencrypt keyslot and the requirement flag. A run cut off in between
    /// (kill -9, power cut) leaves a header libcryptsetup takes for a pass not yet started,
    /// and once the old keyslots are gone, one it no longer opens. Here that last update is
    /// made by sealroot (a restored header backup, which libcryptsetup validates), one
    /// header copy at a time as libcryptsetup writes them: a kill or power cut before it
    /// leaves the header as it was, and one during it at least one intact copy, old or
    /// new. `ours`: a keyslot of the new key, proven by the caller, that must
    /// be bound to the data. Returns false (and writes nothing) unless the header is in
    /// that state.
    pub fn commit_finished_reencryption(&mut self, ours: u32) -> Result<bool, LuksError> {
        if finished_uncommitted(&self.metadata()?, ours).is_none() {
            return Ok(false);
        }
        let path = self.path().display().to_string();
        let fail = |reason: String| LuksError::Op {
            op: "finish re-encryption",
            path: path.clone(),
            reason,
        };
        let dir = PrivateDir::new().map_err(|e| fail(format!("no private directory: {e}")))?;
        let backup = dir.0.join("header");
        let r = self
            .dev
            .backup_handle()
            .header_backup(Some(EncryptionFormat::Luks2), &backup);
        r.map_err(|e| self.op_err("back up the header", e))?;
        let mut image = std::fs::read(&backup).map_err(|e| fail(e.to_string()))?;
        // The plan again, from the very bytes rewritten.
        let on_disk: Value = header::json(&image)
            .and_then(|j| serde_json::from_slice(j).map_err(|e| e.to_string()))
            .map_err(&fail)?;
        let plan = finished_uncommitted(&on_disk, ours)
            .ok_or_else(|| fail("the header changed while it was read".into()))?;
        let json = serde_json::to_vec(&plan.json).map_err(|e| fail(e.to_string()))?;
        let mut step = image.clone();
        let first = header::rewrite(&mut image, &json, &plan.wipe).map_err(&fail)?;
        step[first.clone()].copy_from_slice(&image[first]);
        // A restore is one write and one sync of everything: twice, so that each changes
        // one header copy (and the second the wiped areas) while the other stays intact.
        for (name, bytes) in [("header.first", &step), ("header.done", &image)] {
            let file = dir.0.join(name);
            std::fs::write(&file, bytes).map_err(|e| fail(e.to_string()))?;
            let r = self
                .dev
                .backup_handle()
                .header_restore(Some(EncryptionFormat::Luks2), &file);
            r.map_err(|e| self.op_err("write the finished header", e))?;
        }
        if self.reencryption()? != Reencryption::None {
            return Err(fail("libcryptsetup still reads a re-encryption".into()));
        }
        Ok(true)
    }
}

/// The header libcryptsetup's last update of a finished pass would have written, and the
/// keyslot areas it wipes (byte offset, length).
struct Committed {
    json: Value,
    wipe: Vec<(u64, u64)>,
}

fn flags(s: &Value) -> Vec<&str> {
    s.get("flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the entries (segments, digests) that `pred` holds for.
fn ids_where(map: &Map<String, Value>, pred: impl Fn(&Value) -> bool) -> Vec<&String> {
    map.iter()
        .filter(|(_, v)| pred(v))
        .map(|(id, _)| id)
        .collect()
}

fn is_online_reencrypt(req: &Value) -> bool {
    req.as_str()
        .is_some_and(|r| r.starts_with("online-reencrypt"))
}

/// Whether the header is a forward re-encryption whose data pass is complete, its last
/// header update missing (with any number of the old key's keyslots already gone).
pub(super) fn is_finished_uncommitted(md: &Value) -> bool {
    proven_final(md).is_some()
}

/// The proof, from the header alone, that every sector is under the new key: a forward
/// re-encryption (no data shift) whose one live segment is, field for field, the final
/// segment recorded when it was set up (`backup-final`), bound to the new key's digest and
/// not to the old one's. Any earlier state has a segment of the old key live: before the
/// first hotzone the whole device, later the part not yet reached.
/// Returns (live segment id, new digest id, old digest id, reencrypt keyslot id).
fn proven_final(md: &Value) -> Option<(String, String, String, String)> {
    let mandatory = md.pointer("/config/requirements/mandatory")?.as_array()?;
    if !mandatory.iter().any(is_online_reencrypt) {
        return None;
    }
    let keyslots = md.get("keyslots")?.as_object()?;
    let reenc: Vec<(&String, &Value)> = keyslots
        .iter()
        .filter(|(_, k)| k.get("type").and_then(Value::as_str) == Some("reencrypt"))
        .collect();
    let [(reenc_id, reenc)] = reenc.as_slice() else {
        return None;
    };
    if reenc.get("mode").and_then(Value::as_str) != Some("reencrypt")
        || reenc.get("direction").and_then(Value::as_str) != Some("forward")
    {
        return None;
    }
    let segments = md.get("segments")?.as_object()?;
    let by_flag = |flag: &str| ids_where(segments, |s| flags(s).contains(&flag));
    let (final_id, previous_id) = match (
        by_flag("backup-final").as_slice(),
        by_flag("backup-previous").as_slice(),
    ) {
        ([f], [p]) => ((*f).clone(), (*p).clone()),
        _ => return None,
    };
    let mut live = segments.iter().filter(|(_, s)| flags(s).is_empty());
    let (live_id, live_segment) = live.next()?;
    // Every other segment is one of the two backups (a data shift adds a third: not ours).
    if live.next().is_some() || segments.len() != 3 {
        return None;
    }
    let mut final_segment = segments.get(&final_id)?.clone();
    final_segment.as_object_mut()?.remove("flags");
    let mut live_segment = live_segment.clone();
    live_segment.as_object_mut()?.remove("flags");
    if live_segment != final_segment
        || live_segment.get("size").and_then(Value::as_str) != Some("dynamic")
    {
        return None;
    }
    let digests = md.get("digests")?.as_object()?;
    let digest_of =
        |segment: &str| ids_where(digests, |d| ids(d, "segments").iter().any(|s| s == segment));
    let (new_digest, old_digest) = match (
        digest_of(&final_id).as_slice(),
        digest_of(&previous_id).as_slice(),
        digest_of(live_id).as_slice(),
    ) {
        ([n], [o], [l]) if n != o && l == n => ((*n).clone(), (*o).clone()),
        _ => return None,
    };
    Some((live_id.clone(), new_digest, old_digest, (*reenc_id).clone()))
}

/// The header as libcryptsetup's last update of the pass leaves it (luks2_reencrypt.c,
/// `reencrypt_teardown_ok`): the old key's keyslots and the reencrypt keyslot destroyed
/// (areas wiped, dropped from digests and tokens), the backup segments erased, a digest
/// left with neither keyslots nor segments erased, the requirement flag cleared. One
/// difference: libcryptsetup also grows `keyslots_size` up to the data offset, which a
/// restore refuses (the areas' size must match the device's); the size set at format
/// time stays, as valid as before the re-encryption. Only when `ours` is a keyslot of the
/// new key: something that opens the result.
fn finished_uncommitted(md: &Value, ours: u32) -> Option<Committed> {
    let (live_id, new_digest, old_digest, reenc_id) = proven_final(md)?;
    let digests = md.get("digests")?.as_object()?;
    if !ids(digests.get(&new_digest)?, "keyslots").contains(&ours.to_string()) {
        return None;
    }
    let mut dropped = ids(digests.get(&old_digest)?, "keyslots");
    dropped.push(reenc_id);
    let mut json = md.clone();
    let keyslots = json.get_mut("keyslots")?.as_object_mut()?;
    let mut wipe = Vec::new();
    for id in &dropped {
        let Some(k) = keyslots.remove(id) else {
            continue;
        };
        let area = |f: &str| {
            k.pointer(&format!("/area/{f}"))?
                .as_str()?
                .parse::<u64>()
                .ok()
        };
        wipe.push((area("offset")?, area("size")?));
    }
    let segments = json.get_mut("segments")?.as_object_mut()?;
    segments.retain(|id, _| *id == live_id);
    let keep = |v: &mut Value, field: &str, gone: &dyn Fn(&str) -> bool| {
        if let Some(a) = v.get_mut(field).and_then(Value::as_array_mut) {
            a.retain(|x| !x.as_str().is_some_and(gone));
        }
    };
    let dropped_slot = |id: &str| dropped.iter().any(|d| d == id);
    let digests = json.get_mut("digests")?.as_object_mut()?;
    for d in digests.values_mut() {
        keep(d, "keyslots", &dropped_slot);
        keep(d, "segments", &|s| s != live_id);
    }
    digests.retain(|_, d| !(ids(d, "keyslots").is_empty() && ids(d, "segments").is_empty()));
    if let Some(tokens) = json.get_mut("tokens").and_then(Value::as_object_mut) {
        for t in tokens.values_mut() {
            keep(t, "keyslots", &dropped_slot);
        }
    }
    let config = json.get_mut("config")?.as_object_mut()?;
    let requirements = config.get_mut("requirements")?.as_object_mut()?;
    let mandatory = requirements.get_mut("mandatory")?.as_array_mut()?;
    mandatory.retain(|r| !is_online_reencrypt(r));
    if mandatory.is_empty() {
        requirements.remove("mandatory");
    }
    if requirements.is_empty() {
        config.remove("requirements");
    }
    Some(Committed { json, wipe })
}

/// A directory only this process reads, for a header backup: in /run when there is one
/// (RAM, also in an initrd), removed with what it holds when dropped.
struct PrivateDir(std::path::PathBuf);

impl PrivateDir {
    fn new() -> nix::Result<PrivateDir> {
        let base = match std::path::Path::new("/run") {
            run if run.is_dir() => run.to_path_buf(),
            _ => std::env::temp_dir(),
        };
        nix::unistd::mkdtemp(&base.join("sealroot-header.XXXXXX")).map(PrivateDir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            log::debug!("cannot remove {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slot(offset: u64) -> Value {
        json!({"type": "luks2", "area": {"offset": offset.to_string(), "size": "258048"}})
    }

    fn segment(flag: Option<&str>) -> Value {
        let mut s = json!({"type": "crypt", "offset": "5242880", "size": "dynamic",
            "iv_tweak": "0", "encryption": "aes-xts-plain64", "sector_size": 4096});
        if let Some(f) = flag {
            s["flags"] = json!([f]);
        }
        s
    }

    /// The header a kill right after the last hotzone leaves (a first boot's, trimmed).
    fn window() -> Value {
        json!({
            "config": {"json_size": "12288", "keyslots_size": "4194304",
                "requirements": {"mandatory": ["online-reencrypt-v2"]}},
            "keyslots": {"0": slot(32768), "1": slot(290816), "2": slot(548864),
                "3": slot(806912),
                "5": {"type": "reencrypt", "mode": "reencrypt", "direction": "forward",
                    "area": {"type": "checksum", "offset": "1323008", "size": "2904064"}}},
            "segments": {"0": segment(None), "1": segment(Some("backup-previous")),
                "2": segment(Some("backup-final"))},
            "digests": {"0": {"keyslots": ["0", "1"], "segments": ["1"]},
                "1": {"keyslots": ["2", "3"], "segments": ["0", "2"]},
                "2": {"keyslots": ["5"], "segments": []}},
            "tokens": {"0": {"type": "x", "keyslots": ["1", "3"]}}
        })
    }

    #[test]
    fn the_window_is_finished_as_libcryptsetup_would() {
        let c = finished_uncommitted(&window(), 2).expect("the window");
        assert_eq!(
            c.json["config"],
            json!({"json_size": "12288", "keyslots_size": "4194304"})
        );
        assert_eq!(c.json["segments"], json!({"0": segment(None)}));
        assert_eq!(
            c.json["digests"],
            json!({"1": {"keyslots": ["2", "3"], "segments": ["0"]}})
        );
        let kept: Vec<&String> = c.json["keyslots"]
            .as_object()
            .expect("keyslots")
            .keys()
            .collect();
        assert_eq!(kept, ["2", "3"]);
        assert_eq!(c.json["tokens"]["0"]["keyslots"], json!(["3"]));
        assert_eq!(
            c.wipe,
            [(32768, 258048), (290816, 258048), (1323008, 2904064)]
        );
    }

    #[test]
    fn with_the_old_keyslots_already_gone_too() {
        let mut md = window();
        for id in ["0", "1"] {
            md["keyslots"].as_object_mut().expect("keyslots").remove(id);
        }
        md["digests"]["0"]["keyslots"] = json!([]);
        md["tokens"]["0"]["keyslots"] = json!(["3"]);
        let c = finished_uncommitted(&md, 3).expect("the window");
        assert_eq!(c.wipe, [(1323008, 2904064)]);
        assert!(c.json["digests"].get("0").is_none());
    }

    /// Every state where some data is still under the old key, or where nothing proves the
    /// new key is ours, is left alone.
    #[test]
    fn nothing_else_is_taken_for_it() {
        // Set up, no hotzone yet: the one live segment is the old key's.
        let mut md = window();
        md["digests"]["0"]["segments"] = json!(["0", "1"]);
        md["digests"]["1"]["segments"] = json!(["2"]);
        assert!(finished_uncommitted(&md, 2).is_none());
        // Halfway: the new key's segment and the old key's rest.
        let mut md = window();
        md["segments"]["0"]["size"] = json!("16777216");
        md["segments"]["3"] = segment(None);
        md["digests"]["0"]["segments"] = json!(["1", "3"]);
        assert!(finished_uncommitted(&md, 2).is_none());
        // Inside a hotzone.
        let mut md = window();
        md["segments"]["0"]["flags"] = json!(["in-reencryption"]);
        assert!(finished_uncommitted(&md, 2).is_none());
        // Not the final segment recorded at set-up.
        let mut md = window();
        md["segments"]["0"]["encryption"] = json!("aes-cbc-essiv:sha256");
        assert!(finished_uncommitted(&md, 2).is_none());
        // Finished already; a backward pass; a keyslot of the old key as proof.
        let mut md = window();
        md["config"]["requirements"]["mandatory"] = json!([]);
        assert!(finished_uncommitted(&md, 2).is_none());
        let mut md = window();
        md["keyslots"]["5"]["direction"] = json!("backward");
        assert!(finished_uncommitted(&md, 2).is_none());
        assert!(finished_uncommitted(&window(), 0).is_none());
    }
}
