//! First boot of a provisioned image (`sealroot provision`): the instance makes itself
//! unique with no console and no operator. Run by `unlock` when a volume carries a
//! `sealroot-provision` token, before the fence:
//!
//! 1. new-key: a fresh volume key, in a keyslot the provisioning key opens (re-encryption);
//! 2. sealed: a fresh secret sealed to this TPM (the builder's PCRs at this boot's values,
//!    plus the fence), in a keyslot of the new key, and its sealroot token;
//! 3. escrowed: a recovery key in a keyslot of the new key, escrowed to the builder's age
//!    recipient in the header (never shown on the console);
//! 4. re-encryption of the data to the new key (online when the volume is in use); when it
//!    finishes, libcryptsetup drops every keyslot of the image's key;
//! 5. the sealed key is unsealed and checked against its keyslot, then the provisioning
//!    keyslots (and, without re-encryption, the image's) go, then the provision token.
//!
//! Each step is recorded in the provision token once done; a keyslot is announced there
//! ("pending") before it is added, so a run stopped at any point (kill -9, power cut) is
//! finished by the next one and no keyslot that worked is lost: until step 5 the
//! provisioning key opens the volume, after it the TPM and the recovery key do.

use serde_json::{Value, json};

use crate::console;
use crate::error::{Error, Result};
use crate::escrow;
use crate::luks::Volume;
use crate::luks::reencrypt::{Reencryption, SlotState};
use crate::luks::volume::TokenEntry;
use crate::recovery;
use crate::secret::Secret;
use crate::tokens::provision::{self, ProvisionToken, Step};
use crate::tokens::sealroot::{RECOVERY_TOKEN_TYPE, SealrootToken};
use crate::tokens::{self, passphrase_of};
use crate::tpm::LazyTpm;
use crate::tpm::policy::PolicySpec;
use crate::trust::Trust;

/// The provision token of a volume, if it has one: (token id, token).
pub fn find(vol: &mut Volume) -> Result<Option<(u32, ProvisionToken)>> {
    find_in(&vol.tokens()?)
}

/// The same, in tokens already read (the unlock reads the header's JSON once).
pub fn find_in(tokens: &[TokenEntry]) -> Result<Option<(u32, ProvisionToken)>> {
    for entry in tokens {
        if tokens::token_type(&entry.json) == provision::TOKEN_TYPE {
            let token =
                ProvisionToken::from_json(entry.id, &entry.json).map_err(Error::NoUsableToken)?;
            return Ok(Some((entry.id, token)));
        }
    }
    Ok(None)
}

pub struct FirstBoot<'a> {
    pub tpm: &'a mut LazyTpm,
    pub trust: &'a Trust,
    /// The mapping to activate; None: leave the volume inactive and re-encrypt it offline
    /// (`unlock --test`, image files).
    pub activate_as: Option<&'a str>,
}

/// What provisioning did: the volume key now in use (for the fence measurement), or None
/// when the token is not this volume's (its key opens nothing and no step was done): the
/// caller then goes on with the ordinary tokens.
pub fn run(
    fb: &mut FirstBoot<'_>,
    vol: &mut Volume,
    id: u32,
    mut t: ProvisionToken,
) -> Result<Option<Secret>> {
    let pass = t.passphrase();
    let mut p = Provisioning { vol, id, pass };
    // Before anything reads the keyslots: in that window the image's may be going.
    p.commit_finished_data_pass(&mut t)?;
    let opens = p.vol.volume_key(None, p.pass.expose()).is_ok();
    if !opens && !t.is_done(Step::Sealed) {
        console::error(&format!(
            "{}: ignoring provision token {id}: its key opens no keyslot",
            p.vol.path().display()
        ));
        return Ok(None);
    }
    // The header's fence must be this initrd's, before anything is sealed under it (the
    // verification step would refuse it too, but only after sealing and adding keyslots).
    if let Some(configured) = fb.trust.fence_pcr
        && t.fence_pcr != Some(configured)
    {
        return Err(Error::NoUsableToken(format!(
            "provision token {id}: refused: it asks for fence {:?}, but this system's fence is PCR {configured} (the header may have been altered)",
            t.fence_pcr
        )));
    }
    if !opens {
        // Stopped while the image's keyslots were going: the sealed key is the way in.
        let vk = p.sealed_volume_key(fb)?;
        p.finish(&t)?;
        if let Some(name) = fb.activate_as {
            p.vol.activate(name, &vk)?;
        }
        return Ok(Some(vk));
    }
    console::progress(&format!(
        "{}: {} this instance",
        p.vol.path().display(),
        if t.done.is_empty() {
            "provisioning"
        } else {
            "resuming the provisioning of"
        }
    ));
    crash_point("opened");
    p.drop_pending(&mut t)?;
    p.adopt_finished_steps(&mut t)?;

    let new_vk = p.new_key(&mut t)?;
    crash_point("new-key");
    if !t.is_done(Step::Sealed) {
        p.seal(fb, &mut t, &new_vk)?;
    }
    crash_point("sealed");
    if !t.is_done(Step::Escrowed) {
        p.escrow(&mut t, &new_vk)?;
    }
    crash_point("escrowed");
    if !t.is_done(Step::Verified) {
        if let Err(e) = p.verify(fb, &new_vk) {
            p.unseal_undo(&mut t)?;
            return Err(e);
        }
        p.done(&mut t, Step::Verified)?;
    }
    crash_point("verified");
    if t.reencrypt && !t.is_done(Step::Reencrypted) {
        if !t.reencrypt_in_initrd {
            // The data pass runs after switch-root (`finish-provisioning`): set it up, then
            // open the volume with both keys.
            p.start_reencryption(&mut t)?;
            crash_point("reencrypt-started");
            if let Some(name) = fb.activate_as {
                p.vol.activate_by_passphrase(name, p.pass.expose())?;
            }
            console::progress(&format!(
                "{}: this instance's keys are in place; its data is re-encrypted after boot (sealroot finish-provisioning)",
                p.vol.path().display()
            ));
            return Ok(Some(new_vk));
        }
        p.start_reencryption(&mut t)?;
        crash_point("reencrypt-started");
        if let Some(name) = fb.activate_as {
            p.vol.activate_by_passphrase(name, p.pass.expose())?;
        }
        p.data_pass(&mut t, fb.activate_as)?;
    } else if let Some(name) = fb.activate_as {
        p.vol.activate(name, &new_vk)?;
    }
    crash_point("reencrypted");
    p.finish(&t)?;
    console::progress(&format!(
        "{}: provisioned: this TPM unlocks it from now on",
        p.vol.path().display()
    ));
    Ok(Some(new_vk))
}

/// After switch-root (or on an unused image): re-encrypts the data of a volume whose first
/// boot set it up, then removes what is left of the image. `active`: the mapping name
/// when the volume is in use. Returns false when there was nothing to do.
pub fn finish_provisioning(vol: &mut Volume, active: Option<&str>) -> Result<bool> {
    let Some((id, mut t)) = find(vol)? else {
        return Ok(false);
    };
    if !t.is_done(Step::Verified) {
        return Err(Error::NoUsableToken(format!(
            "{}: its first boot has not sealed and checked this instance's key yet; boot it (the initrd does that part)",
            vol.path().display()
        )));
    }
    let pass = t.passphrase();
    let mut p = Provisioning { vol, id, pass };
    p.commit_finished_data_pass(&mut t)?;
    if t.reencrypt && !t.is_done(Step::Reencrypted) {
        p.start_reencryption(&mut t)?;
        p.data_pass(&mut t, active)?;
    }
    crash_point("reencrypted");
    p.finish(&t)?;
    console::progress(&format!(
        "{}: provisioned: this TPM unlocks it from now on",
        p.vol.path().display()
    ));
    Ok(true)
}

/// For paths that open a volume without provisioning it (`recover`): a data pass cut off
/// in libcryptsetup's finishing window is finished in the header first (see
/// `commit_finished_data_pass`), or libcryptsetup would refuse to activate it.
pub fn finish_cut_off_data_pass(vol: &mut Volume) -> Result<()> {
    let Some((id, mut t)) = find(vol)? else {
        return Ok(());
    };
    let pass = t.passphrase();
    Provisioning { vol, id, pass }.commit_finished_data_pass(&mut t)
}

struct Provisioning<'v> {
    vol: &'v mut Volume,
    id: u32,
    pass: Secret,
}

impl Provisioning<'_> {
    fn save(&mut self, t: &ProvisionToken) -> Result<()> {
        Ok(self.vol.replace_token(self.id, &t.to_json())?)
    }

    fn done(&mut self, t: &mut ProvisionToken, step: Step) -> Result<()> {
        t.pending_keyslot = None;
        if !t.is_done(step) {
            t.done.push(step);
        }
        self.save(t)?;
        log::info!("provisioning step '{}' done", step.name());
        Ok(())
    }

    /// A keyslot announced but never claimed by a token opens nothing anyone knows: gone.
    fn drop_pending(&mut self, t: &mut ProvisionToken) -> Result<()> {
        let Some(slot) = t.pending_keyslot else {
            return Ok(());
        };
        let claimed =
            self.vol.tokens()?.iter().any(|e| claims(&e.json, slot)) || t.new_keyslot == Some(slot);
        if !claimed && self.vol.slot_state(slot)? != SlotState::Free {
            log::info!("removing keyslot {slot}, added by an interrupted run");
            self.vol.destroy_keyslot(slot)?;
        }
        t.pending_keyslot = None;
        self.save(t)
    }

    /// A run stopped after a step's token was written but before the step was recorded:
    /// the token is the record (the builder's image has no tokens of its own).
    fn adopt_finished_steps(&mut self, t: &mut ProvisionToken) -> Result<()> {
        let kinds: Vec<(String, bool)> = self
            .vol
            .tokens()?
            .iter()
            .map(|e| {
                (
                    tokens::token_type(&e.json).to_string(),
                    e.json.get("escrow").is_some(),
                )
            })
            .collect();
        let sealed = kinds
            .iter()
            .any(|(k, _)| k == crate::tokens::sealroot::TOKEN_TYPE);
        if sealed && !t.is_done(Step::Sealed) {
            self.done(t, Step::Sealed)?;
        }
        let escrowed = kinds
            .iter()
            .any(|(k, escrow)| k == RECOVERY_TOKEN_TYPE && *escrow);
        if escrowed && !t.is_done(Step::Escrowed) {
            self.done(t, Step::Escrowed)?;
        }
        Ok(())
    }

    /// Announces the keyslot about to be added.
    fn announce(&mut self, t: &mut ProvisionToken) -> Result<u32> {
        let slot = self.vol.free_slot()?;
        t.pending_keyslot = Some(slot);
        self.save(t)?;
        Ok(slot)
    }

    /// Step 1: the volume key this instance ends with.
    fn new_key(&mut self, t: &mut ProvisionToken) -> Result<Secret> {
        if !t.reencrypt {
            return Ok(self
                .vol
                .volume_key(Some(t.provisioning_keyslot), self.pass.expose())?
                .1);
        }
        if !t.is_done(Step::NewKey) {
            let (_, old) = self
                .vol
                .volume_key(Some(t.provisioning_keyslot), self.pass.expose())?;
            let fresh = Secret::random(old.len())
                .map_err(|e| Error::Other(format!("no randomness: {e}")))?;
            drop(old);
            let slot = self.announce(t)?;
            self.vol
                .add_keyslot_by_key(slot, &fresh, self.pass.expose(), true)?;
            crash_point("new-key-keyslot");
            t.new_keyslot = Some(slot);
            self.done(t, Step::NewKey)?;
        }
        let slot = t
            .new_keyslot
            .ok_or_else(|| corrupt("new-key is done but no keyslot is recorded"))?;
        Ok(self.vol.volume_key(Some(slot), self.pass.expose())?.1)
    }

    /// Whether keyslots added now must wait for re-encryption to use their key.
    fn unbound(&mut self, t: &ProvisionToken) -> bool {
        t.reencrypt && !t.is_done(Step::Reencrypted)
    }

    /// Step 2: seal a fresh secret to this TPM, bound to this boot's PCR values.
    fn seal(&mut self, fb: &mut FirstBoot<'_>, t: &mut ProvisionToken, vk: &Secret) -> Result<()> {
        let ctx = fb.tpm.get()?;
        let srk = ctx.srk()?;
        // The SRK this initrd trusts, if it pins one, is the one sealed to.
        ctx.verify_parent(srk.handle, &srk.public, &fb.trust.parent)?;
        let bound: Vec<u32> = t
            .pcrs
            .iter()
            .copied()
            .filter(|&p| Some(p) != t.fence_pcr)
            .collect();
        let mut pcrs: Vec<(u32, Vec<u8>)> = ctx.pcr_read(t.bank, &bound)?.into_iter().collect();
        if let Some(f) = t.fence_pcr {
            pcrs.push((f, vec![0u8; t.bank.digest_len()]));
        }
        pcrs.sort_by_key(|(i, _)| *i);
        let policy = PolicySpec {
            bank: t.bank,
            pcrs: &pcrs,
            pin: false,
        }
        .digest();
        let secret = Secret::random(32).map_err(|e| Error::Other(format!("no randomness: {e}")))?;
        let sealed = ctx.seal(&srk, &secret, &policy, None)?;
        let slot = self.announce(t)?;
        let unbound = self.unbound(t);
        self.vol
            .add_keyslot_by_key(slot, vk, passphrase_of(&secret).expose(), unbound)?;
        crash_point("sealed-keyslot");
        let token = SealrootToken {
            keyslot: slot,
            sealed,
            srk_handle: srk.handle,
            srk_public: srk.public,
            bank: t.bank,
            pcrs,
            policy_digest: policy,
            fence_pcr: t.fence_pcr,
            pin: None,
            policy_key: None,
            counter: None,
            local_key: None,
            local_key_vk: None,
        };
        self.vol.add_token(&token.to_json())?;
        crash_point("sealed-token");
        self.done(t, Step::Sealed)
    }

    /// Step 3: a recovery key, escrowed to the builder's recipient (or none, if the builder
    /// said so).
    fn escrow(&mut self, t: &mut ProvisionToken, vk: &Secret) -> Result<()> {
        if let Some(recipient) = t.escrow.clone() {
            let key =
                recovery::generate().map_err(|e| Error::Other(format!("no randomness: {e}")))?;
            let sealed = escrow::encrypt(&recipient, key.expose()).map_err(Error::Other)?;
            let slot = self.announce(t)?;
            let unbound = self.unbound(t);
            self.vol
                .add_keyslot_by_key(slot, vk, key.expose(), unbound)?;
            crash_point("escrow-keyslot");
            self.vol.add_token(&json!({
                "type": RECOVERY_TOKEN_TYPE,
                "keyslots": [slot.to_string()],
                "escrow_recipient": recipient.as_str(),
                "escrow": sealed,
            }))?;
            crash_point("escrow-token");
        }
        self.done(t, Step::Escrowed)
    }

    /// Step 4a: re-encryption to the new key, set up in the header (no data moved).
    fn start_reencryption(&mut self, t: &mut ProvisionToken) -> Result<()> {
        let new = t
            .new_keyslot
            .ok_or_else(|| corrupt("no keyslot for the new key"))?;
        if self.reencryption_finished(t)? || self.vol.reencryption()? != Reencryption::None {
            return Ok(());
        }
        // Recorded first: libcryptsetup refuses token changes while re-encryption is set
        // up, and "started" with a clean header and an unbound new key means "set it up".
        if !t.is_done(Step::ReencryptStarted) {
            self.done(t, Step::ReencryptStarted)?;
        }
        self.vol
            .start_reencryption(self.pass.expose(), t.provisioning_keyslot, new)?;
        Ok(())
    }

    /// Set up before, header clean, the new key's keyslot in use: it finished.
    fn reencryption_finished(&mut self, t: &ProvisionToken) -> Result<bool> {
        let Some(new) = t.new_keyslot else {
            return Ok(false);
        };
        Ok(t.is_done(Step::ReencryptStarted)
            && self.vol.reencryption()? == Reencryption::None
            && self.vol.slot_state(new)? == SlotState::Bound)
    }

    /// Step 4c: a data pass cut off after its last hotzone, before libcryptsetup's last
    /// header update (it destroys the image's keyslots one by one first: once they are
    /// gone, libcryptsetup opens the volume with no key), is finished in the header — only
    /// when the header proves the data is all under the new key and the provisioning key
    /// opens that key's keyslot. Then (or after an uninterrupted pass whose record was cut
    /// off) the step is recorded.
    fn commit_finished_data_pass(&mut self, t: &mut ProvisionToken) -> Result<()> {
        if !t.reencrypt || t.is_done(Step::Reencrypted) || !t.is_done(Step::ReencryptStarted) {
            return Ok(());
        }
        let Some(new) = t.new_keyslot else {
            return Ok(());
        };
        // A token whose key does not open the new key's keyslot is not this volume's.
        if self.vol.volume_key(Some(new), self.pass.expose()).is_err() {
            return Ok(());
        }
        if self.vol.reencryption()? != Reencryption::None
            && self.vol.commit_finished_reencryption(new)?
        {
            console::progress(&format!(
                "{}: finished the re-encryption cut off before its last header update",
                self.vol.path().display()
            ));
            crash_point("reencrypt-committed");
        }
        if self.reencryption_finished(t)? {
            self.done(t, Step::Reencrypted)?;
        }
        Ok(())
    }

    /// Step 4b: the data to the new key; online when `active` names the mapping.
    fn data_pass(&mut self, t: &mut ProvisionToken, active: Option<&str>) -> Result<()> {
        if !self.reencryption_finished(t)? {
            console::progress(&format!(
                "{}: re-encrypting to this instance's own key",
                self.vol.path().display()
            ));
            let _paused = crate::watchdog::pause();
            let crash_at_half = std::env::var(CRASH_ENV).ok().as_deref() == Some("reencrypt-half");
            let mut progress = |done: u64, total: u64| {
                if crash_at_half && total > 0 && done * 2 >= total {
                    crash_point("reencrypt-half");
                }
                !crate::stop::requested()
            };
            let pass = Secret::from_slice(self.pass.expose());
            self.vol
                .resume_reencryption(pass.expose(), active, &mut progress)?;
            if crate::stop::requested() {
                return Err(Error::Other(format!(
                    "{}: re-encryption paused on request; it resumes at the next `sealroot finish-provisioning`",
                    self.vol.path().display()
                )));
            }
        }
        self.done(t, Step::Reencrypted)
    }

    /// Step 5a: the sealed key really opens the instance's key, through the same path the
    /// next boot takes.
    fn verify(&mut self, fb: &mut FirstBoot<'_>, vk: &Secret) -> Result<()> {
        let key = self.sealed_volume_key(fb)?;
        if key.expose() != vk.expose() {
            return Err(Error::NoUsableToken(
                "the key sealed to this TPM opens another volume key".into(),
            ));
        }
        Ok(())
    }

    /// After a failed check, the seal is undone (token and keyslot), so that the next boot
    /// seals again; the provisioning key still opens the volume.
    fn unseal_undo(&mut self, t: &mut ProvisionToken) -> Result<()> {
        for entry in self.vol.tokens()? {
            if tokens::token_type(&entry.json) == crate::tokens::sealroot::TOKEN_TYPE {
                if let Some(slot) = tokens::single_keyslot(&entry.json) {
                    self.vol.destroy_keyslot(slot)?;
                }
                self.vol.remove_token(entry.id)?;
            }
        }
        t.done.retain(|s| *s != Step::Sealed);
        self.save(t)?;
        console::error(&format!(
            "{}: provisioning stays unfinished; the next boot seals again",
            self.vol.path().display()
        ));
        Ok(())
    }

    /// The volume key the sealed token opens, unsealed the way the next boot will.
    fn sealed_volume_key(&mut self, fb: &mut FirstBoot<'_>) -> Result<Secret> {
        let token = self
            .vol
            .tokens()?
            .into_iter()
            .find(|e| tokens::token_type(&e.json) == crate::tokens::sealroot::TOKEN_TYPE)
            .ok_or_else(|| corrupt("the sealed token is missing"))?;
        let plan = crate::tokens::sealroot::plan(token.id, &token.json)
            .map_err(|e| Error::NoUsableToken(e.to_string()))?;
        plan.admit(fb.trust)
            .map_err(|e| Error::NoUsableToken(e.to_string()))?;
        let secret = fb
            .tpm
            .get()?
            .unseal(&plan.request(None, &fb.trust.parent))?;
        let passphrase = plan
            .passphrase(&secret)
            .map_err(|e| Error::NoUsableToken(e.to_string()))?;
        let opened = self.vol.volume_key(Some(plan.keyslot), passphrase.expose());
        opened.map(|(_, key)| key).map_err(|_| {
            Error::NoUsableToken(format!(
                "the key sealed to this TPM does not open keyslot {}",
                plan.keyslot
            ))
        })
    }

    /// Step 5b: nothing of the image opens the instance any more.
    fn finish(&mut self, t: &ProvisionToken) -> Result<()> {
        // The image's key still decrypts part of the data while re-encryption runs.
        if self.vol.reencryption()? != Reencryption::None {
            return Err(corrupt("re-encryption is still in progress"));
        }
        let mut gone: Vec<u32> = t.image_keyslots.clone();
        gone.push(t.provisioning_keyslot);
        gone.extend(t.new_keyslot);
        gone.sort_unstable();
        gone.dedup();
        // Keyslots sealroot's own tokens claim stay, whatever the numbers.
        let tokens = self.vol.tokens()?;
        for slot in gone {
            let ours = tokens.iter().any(|e| {
                tokens::token_type(&e.json) != provision::TOKEN_TYPE && claims(&e.json, slot)
            });
            if !ours && self.vol.slot_state(slot)? != SlotState::Free {
                self.vol.destroy_keyslot(slot)?;
                crash_point("keyslot-removed");
            }
        }
        self.vol.remove_token(self.id)?;
        Ok(())
    }
}

fn claims(json: &Value, slot: u32) -> bool {
    json.get("keyslots")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|k| k.as_str() == Some(slot.to_string().as_str()))
        })
}

fn corrupt(why: &str) -> Error {
    Error::NoUsableToken(format!("the provision token is inconsistent: {why}"))
}

/// Test hook: `SEALROOT_CRASH_AT=POINT` kills the process at that point (SIGKILL, as a
/// power cut would stop it), so tests can show every step resumes. The boot scripts run
/// sealroot with an empty environment.
const CRASH_ENV: &str = "SEALROOT_CRASH_AT";

fn crash_point(point: &str) {
    if std::env::var(CRASH_ENV).ok().as_deref() == Some(point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
