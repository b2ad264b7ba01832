//! Crash safety, by random kills: each operation that writes a LUKS2 header — `enroll` (with
//! and without a recovery key), `remove`, `provision` + `first-boot`, and re-encryption
//! (`finish-provisioning`, or `first-boot --reencrypt-in-initrd`) — runs as the real binary on
//! a fresh copy of a small image with its own swtpm, and is killed with SIGKILL (by its PID)
//! after a random delay drawn uniformly over the operation's duration, measured first in the
//! same run. Afterwards, with the TPM power-cycled (what the next boot, or a kernel resource
//! manager, would give the re-run):
//!
//! - every secret that opened the volume before still opens its keyslot (checked with
//!   `cryptsetup open --test-passphrase --key-slot`), and every TPM token that opened it still
//!   does (`unlock --test` on a copy of the header holding that token alone) — or, for the
//!   steps of a first boot that retire the image's keys, their successors (the TPM token and
//!   the escrowed recovery key) are in place and open it;
//! - a re-run of the operation (or the next first boot and `finish-provisioning`) completes
//!   and leaves the volume in the state an uninterrupted run leaves; after re-encryption the
//!   data decrypts with the new key to what it was under the image's key (decrypted here,
//!   aes-xts-plain64: every sector's first block and every 8th sector whole).
//!
//! The short form (a few trials per operation) runs in `cargo test`. The long form:
//! `SEALROOT_CRASH_TRIALS=1000 cargo test --test crash -- --nocapture` spreads that many trials
//! over the operations. Every run prints its seed; `SEALROOT_CRASH_SEED=S` replays the same
//! draws (operation variants and kill points as fractions of the measured duration),
//! `SEALROOT_CRASH_ONLY=N` runs only trial N of each operation, and `SEALROOT_CRASH_KEEP=DIR`
//! keeps each trial's image in DIR as the kill left it.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use common::{PASSPHRASE, Swtpm};

/// The operations sharing `SEALROOT_CRASH_TRIALS`.
const OPERATIONS: usize = 5;
/// Trials per operation in the short form.
const SHORT_TRIALS: usize = 4;
/// Uninterrupted runs that measure an operation's duration, per variant (the median is
/// taken).
const MEASURE_RUNS: usize = 3;

// ---------------------------------------------------------------------------------------
// A small seedable random source.

/// xorshift64*: enough for choosing kill points, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

struct Config {
    /// The run's seed (printed; `SEALROOT_CRASH_SEED`).
    seed: u64,
    trials: usize,
    only: Option<usize>,
}

fn config() -> Config {
    let seed = match std::env::var("SEALROOT_CRASH_SEED") {
        Ok(s) => parse_u64(&s).expect("SEALROOT_CRASH_SEED: a number (decimal or 0x…)"),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64;
            splitmix(now ^ u64::from(std::process::id()))
        }
    };
    let trials = match std::env::var("SEALROOT_CRASH_TRIALS") {
        Ok(s) => {
            let total = parse_u64(&s).expect("SEALROOT_CRASH_TRIALS: a number") as usize;
            total.div_ceil(OPERATIONS).max(1)
        }
        Err(_) => SHORT_TRIALS,
    };
    let only = std::env::var("SEALROOT_CRASH_ONLY")
        .ok()
        .map(|s| parse_u64(&s).expect("SEALROOT_CRASH_ONLY: a trial number") as usize);
    Config { seed, trials, only }
}

/// One operation's own stream, so that each test replays alone from the run's seed.
fn op_seed(seed: u64, op: &str) -> u64 {
    op.bytes().fold(seed, |h, b| splitmix(h ^ u64::from(b)))
}

// ---------------------------------------------------------------------------------------
// Processes: every one is stopped by its PID when its guard drops, also on a panic.

struct Proc {
    child: Option<Child>,
    name: String,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
        let mut cmd = common::sealroot_command(args);
        cmd.env_remove("SEALROOT_CRASH_AT").stdin(Stdio::null());
        Proc {
            child: Some(cmd.spawn().expect("spawn sealroot")),
            name: args.first().cloned().unwrap_or_default(),
        }
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Waits for the end; its exit code (None: killed by a signal) and output.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut child = self.child.take().expect("child");
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().expect("wait sealroot");
        (status.code(), out, err)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
    }
}

struct StepRun {
    name: String,
    code: Option<i32>,
    killed: bool,
    stdout: String,
    stderr: String,
    /// From its start to its end or its kill.
    elapsed: Duration,
}

struct SeqRun {
    steps: Vec<StepRun>,
    /// From the first start to the last end.
    elapsed: Duration,
}

impl SeqRun {
    fn killed(&self) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.killed)
    }

    /// A step that ended by itself with a failure.
    fn failed(&self) -> Option<&StepRun> {
        self.steps.iter().find(|s| !s.killed && s.code != Some(0))
    }

    fn completed(&self, total: usize) -> bool {
        self.steps.len() == total && self.steps.iter().all(|s| s.code == Some(0))
    }

    fn describe(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                format!(
                    "{} {} after {:.1} ms",
                    s.name,
                    if s.killed {
                        "killed".to_string()
                    } else {
                        format!("exit {:?}", s.code)
                    },
                    s.elapsed.as_secs_f64() * 1e3
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `steps` one after the other (stopping at the first failure); with a deadline, the one
/// running then gets SIGKILL.
fn run_steps(steps: &[Vec<String>], deadline: Option<Instant>) -> SeqRun {
    let start = Instant::now();
    let mut runs = Vec::new();
    for args in steps {
        let began = Instant::now();
        let mut p = Proc::spawn(args);
        let mut killed = false;
        loop {
            let exited = p
                .child
                .as_mut()
                .expect("child")
                .try_wait()
                .expect("try_wait")
                .is_some();
            if exited {
                break;
            }
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    p.kill();
                    killed = true;
                    break;
                }
                std::thread::sleep((d - now).min(Duration::from_micros(500)));
            } else {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        let elapsed = began.elapsed();
        let name = p.name.clone();
        let (code, stdout, stderr) = p.finish();
        // A kill that raced the process's own exit is no kill.
        let killed = killed && code.is_none();
        let ok = code == Some(0);
        runs.push(StepRun {
            name,
            code,
            killed,
            stdout,
            stderr,
            elapsed,
        });
        if killed || !ok {
            break;
        }
    }
    SeqRun {
        steps: runs,
        elapsed: start.elapsed(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.to_str().expect("utf8 path").to_string()
}

// ---------------------------------------------------------------------------------------
// The header, as cryptsetup reads it.

fn metadata(image: &Path) -> Value {
    let out = common::checked(
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(image),
    );
    serde_json::from_slice(&out.stdout).expect("LUKS2 JSON metadata")
}

fn tokens(md: &Value) -> Vec<(u32, Value)> {
    let mut out: Vec<(u32, Value)> = md["tokens"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.clone())))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(id, _)| *id);
    out
}

fn tokens_of_type(md: &Value, kind: &str) -> Vec<(u32, Value)> {
    tokens(md)
        .into_iter()
        .filter(|(_, t)| t["type"] == kind)
        .collect()
}

/// Keyslots holding keys (not re-encryption's progress slot).
fn keyslots(md: &Value) -> BTreeSet<u32> {
    md["keyslots"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["type"] == "luks2")
                .filter_map(|(k, _)| k.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn token_slots(t: &Value) -> Vec<u32> {
    t["keyslots"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn claimed(md: &Value) -> BTreeSet<u32> {
    tokens(md)
        .iter()
        .flat_map(|(_, t)| token_slots(t))
        .collect()
}

fn reencrypting(md: &Value) -> bool {
    md["keyslots"]
        .as_object()
        .is_some_and(|m| m.values().any(|v| v["type"] == "reencrypt"))
        || md["config"]["requirements"]["mandatory"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|r| r.as_str().is_some_and(|r| r.contains("reencrypt")))
            })
}

/// What makes keyslot `slot` open the volume: its metadata, its key material and the digest
/// it is checked against. While re-encryption runs, activation needs both keys, so a
/// secret that opens only the old key's keyslot (the builder's passphrase) cannot be tried
/// alone: that it is unchanged shows it opens as before.
fn slot_fingerprint(image: &Path, md: &Value, slot: u32) -> Option<String> {
    let ks = &md["keyslots"][slot.to_string()];
    if ks.is_null() {
        return None;
    }
    let offset: usize = ks["area"]["offset"].as_str()?.parse().ok()?;
    let size: usize = ks["area"]["size"].as_str()?.parse().ok()?;
    let data = std::fs::read(image).ok()?;
    let area = data.get(offset..offset + size)?;
    let digest = md["digests"].as_object()?.values().find(|d| {
        d["keyslots"].as_array().is_some_and(|a| {
            a.iter()
                .any(|k| k.as_str() == Some(slot.to_string().as_str()))
        })
    })?;
    let mut hash = Sha256::new();
    hash.update(ks.to_string());
    hash.update(area);
    for field in ["type", "hash", "iterations", "salt", "digest"] {
        hash.update(digest[field].to_string());
    }
    Some(hex::encode(hash.finalize()))
}

/// Whether `secret` opens `slot` (any keyslot when None), as cryptsetup checks it.
fn opens(image: &Path, slot: Option<u32>, secret: &[u8], dir: &Path) -> bool {
    let keyfile = dir.join("try.key");
    std::fs::write(&keyfile, secret).expect("write key file");
    let mut cmd = Command::new("cryptsetup");
    cmd.args(["open", "--test-passphrase", "--key-file"])
        .arg(&keyfile);
    if let Some(slot) = slot {
        cmd.args(["--key-slot", &slot.to_string()]);
    }
    let ok = cmd
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run cryptsetup")
        .success();
    let _ = std::fs::remove_file(&keyfile);
    ok
}

/// Whether the TPM token equal to `want` (found by content, whatever its id) opens the
/// volume through `unlock --test`, on a copy of the header where it is the only token that
/// unlock would try.
fn token_opens(image: &Path, want: &Value, dir: &Path, tpm: &Swtpm) -> Result<(), String> {
    let md = metadata(image);
    let all = tokens(&md);
    let Some((id, _)) = all.iter().find(|(_, t)| t == want) else {
        return Err("the token is gone or changed".into());
    };
    let copy = dir.join("isolated.img");
    std::fs::copy(image, &copy).expect("copy image");
    for (other, t) in &all {
        if other != id && t["type"] != "sealroot-recovery" {
            common::checked(
                Command::new("cryptsetup")
                    .args(["token", "remove", "--token-id", &other.to_string()])
                    .arg(&copy),
            );
        }
    }
    let r = common::run(&[
        "unlock",
        &p(&copy),
        "root",
        "--test",
        "--no-fence",
        "--tcti",
        &tpm.tcti(),
    ]);
    let _ = std::fs::remove_file(&copy);
    if r.code == 0 {
        Ok(())
    } else {
        Err(format!(
            "token {id} does not open it: exit {}: {}",
            r.code,
            r.stderr.trim()
        ))
    }
}

/// `sealroot: recovery key for keyslot N` on stderr and the key on stdout, if shown.
fn shown_recovery_key(step: &StepRun) -> Option<(u32, String)> {
    let slot = step
        .stderr
        .split("recovery key for keyslot ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let key = step.stdout.lines().next()?.trim().to_string();
    (key.len() == 71).then_some((slot, key))
}

// ---------------------------------------------------------------------------------------
// The data, as dm-crypt would read it: aes-xts-plain64, decrypted here with the volume key.

/// SHA-256 of the data segment's plaintext under the key `secret` opens: the first 16-byte
/// block of each sector, and every 8th sector whole.
fn plaintext_hash(image: &Path, secret: &[u8], dir: &Path) -> Result<String, String> {
    use aes::Aes256;
    use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
    let md = metadata(image);
    let seg = &md["segments"]["0"];
    if seg["encryption"] != "aes-xts-plain64" || reencrypting(&md) {
        return Err(format!("unexpected data segment: {seg}"));
    }
    let offset: u64 = seg["offset"]
        .as_str()
        .and_then(|o| o.parse().ok())
        .ok_or("segment offset")?;
    let sector = seg["sector_size"].as_u64().ok_or("sector size")? as usize;
    let keyfile = dir.join("vk-pass");
    let vkfile = dir.join("vk.bin");
    std::fs::write(&keyfile, secret).expect("write key");
    let out = Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(&vkfile)
        .arg("--key-file")
        .arg(&keyfile)
        .arg(image)
        .output()
        .expect("cryptsetup");
    let _ = std::fs::remove_file(&keyfile);
    if !out.status.success() {
        return Err(format!(
            "cannot read the volume key: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let vk = std::fs::read(&vkfile).expect("read volume key");
    let _ = std::fs::remove_file(&vkfile);
    if vk.len() != 64 {
        return Err(format!("a {}-byte volume key", vk.len()));
    }
    let k1 = Aes256::new_from_slice(&vk[..32]).expect("key");
    let k2 = Aes256::new_from_slice(&vk[32..]).expect("key");
    let data = std::fs::read(image).expect("read image");
    let data = &data[offset as usize..];
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; sector];
    let mut tweaks = vec![0u128; sector / 16];
    let mut blocks = vec![aes::Block::default(); sector / 16];
    for (i, chunk) in data.chunks_exact(sector).enumerate() {
        // plain64: the IV counts 512-byte sectors from the segment's start; XTS multiplies
        // the encrypted IV by x for each 16-byte block (little-endian, x^128 = x^7+x^2+x+1).
        let mut iv = GenericArray::from(((i * sector / 512) as u128).to_le_bytes());
        k2.encrypt_block(&mut iv);
        // Every sector's first block, and every 8th sector whole (unoptimized test code
        // would take seconds for all of it): a sector under the wrong key, with the wrong IV,
        // skipped or written twice shows in its first block.
        let n = if i % 8 == 0 { sector / 16 } else { 1 };
        let mut t = u128::from_le_bytes(iv.into());
        for tw in tweaks.iter_mut().take(n) {
            *tw = t;
            t = (t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 };
        }
        for ((b, src), tw) in blocks
            .iter_mut()
            .zip(chunk.chunks_exact(16))
            .zip(&tweaks)
            .take(n)
        {
            let v = u128::from_le_bytes(src.try_into().expect("16 bytes")) ^ tw;
            b.copy_from_slice(&v.to_le_bytes());
        }
        k1.decrypt_blocks(&mut blocks[..n]);
        for ((b, dst), tw) in blocks
            .iter()
            .zip(buf.chunks_exact_mut(16))
            .zip(&tweaks)
            .take(n)
        {
            let v = u128::from_le_bytes(b.as_slice().try_into().expect("16 bytes")) ^ tw;
            dst.copy_from_slice(&v.to_le_bytes());
        }
        hash.update(&buf[..n * 16]);
    }
    Ok(hex::encode(hash.finalize()))
}

// ---------------------------------------------------------------------------------------
// The driver.

/// What one operation needs from the harness.
trait Scenario {
    type Inst;
    fn name(&self) -> &'static str;
    fn variants(&self) -> &[&'static str];
    /// A fresh instance: a copy of the template image with its own swtpm, and what opens it.
    fn prepare(&self, variant: usize) -> Self::Inst;
    fn steps(&self, variant: usize, inst: &Self::Inst) -> Vec<Vec<String>>;
    fn image<'a>(&self, inst: &'a Self::Inst) -> &'a Path;
    /// After the kill: what was lost (empty: nothing).
    fn after_kill(&self, variant: usize, inst: &mut Self::Inst, run: &SeqRun) -> Vec<String>;
    /// The re-run (or the next boot) and the final state: what is wrong (empty: nothing);
    /// `notes` gathers harmless leftovers of the killed run.
    fn rerun(
        &self,
        variant: usize,
        inst: &mut Self::Inst,
        run: &SeqRun,
        notes: &mut Vec<String>,
    ) -> Vec<String>;
}

#[derive(Default)]
struct Tally {
    trials: usize,
    killed: usize,
    failures: Vec<String>,
    notes: Vec<String>,
}

fn drive<S: Scenario>(sc: &S) {
    let cfg = config();
    let seed = op_seed(cfg.seed, sc.name());
    let started = Instant::now();
    eprintln!(
        "crash {}: seed {:#x} (replay with SEALROOT_CRASH_SEED={:#x}), {} trials",
        sc.name(),
        cfg.seed,
        cfg.seed,
        cfg.trials
    );
    // Each variant's duration, uninterrupted, now, on this machine.
    let mut durations = Vec::new();
    for v in 0..sc.variants().len() {
        let mut measured = Vec::new();
        for _ in 0..MEASURE_RUNS {
            let mut inst = sc.prepare(v);
            let steps = sc.steps(v, &inst);
            let run = run_steps(&steps, None);
            assert!(
                run.completed(steps.len()),
                "{} {}: an uninterrupted run failed: {}: {}",
                sc.name(),
                sc.variants()[v],
                run.describe(),
                run.steps.last().map(|s| s.stderr.as_str()).unwrap_or("")
            );
            let mut notes = Vec::new();
            let wrong = sc.after_kill(v, &mut inst, &run);
            assert!(wrong.is_empty(), "uninterrupted: {wrong:?}");
            let wrong = sc.rerun(v, &mut inst, &run, &mut notes);
            assert!(wrong.is_empty(), "uninterrupted: {wrong:?}");
            measured.push(run.elapsed);
        }
        measured.sort();
        let median = measured[measured.len() / 2];
        eprintln!(
            "crash {} {}: measured {:.1} ms (median of {:.1?})",
            sc.name(),
            sc.variants()[v],
            median.as_secs_f64() * 1e3,
            measured
        );
        durations.push(median);
    }
    let mut tally = Tally::default();
    for trial in 0..cfg.trials {
        if cfg.only.is_some_and(|o| o != trial) {
            continue;
        }
        let mut rng = Rng::new(seed.wrapping_add(trial as u64));
        let v = rng.below(sc.variants().len());
        let fraction = rng.unit();
        let delay = durations[v].mul_f64(fraction);
        let label = format!(
            "{} [{}] trial {trial} (SEALROOT_CRASH_SEED={:#x} SEALROOT_CRASH_ONLY={trial}): kill at {:.2} of {:.1} ms = {:.2} ms",
            sc.name(),
            sc.variants()[v],
            cfg.seed,
            fraction,
            durations[v].as_secs_f64() * 1e3,
            delay.as_secs_f64() * 1e3
        );
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut inst = sc.prepare(v);
            let steps = sc.steps(v, &inst);
            let run = run_steps(&steps, Some(Instant::now() + delay));
            if let Some(keep) = std::env::var_os("SEALROOT_CRASH_KEEP") {
                // The image as the kill left it, before any check touches it.
                let to = Path::new(&keep).join(format!(
                    "{}-{trial}.img",
                    sc.name().replace([' ', '+'], "_")
                ));
                std::fs::copy(sc.image(&inst), &to).expect("keep the image");
            }
            let mut wrong = Vec::new();
            if let Some(f) = run.failed() {
                wrong.push(format!(
                    "{} failed by itself (exit {:?}): {}",
                    f.name,
                    f.code,
                    f.stderr.trim()
                ));
            }
            wrong.extend(sc.after_kill(v, &mut inst, &run));
            // The re-run also after a loss: whether the volume can still be brought back.
            let mut notes = Vec::new();
            let after = sc.rerun(v, &mut inst, &run, &mut notes);
            if !after.is_empty() {
                wrong.push(format!("then: {}", after.join("; ")));
            }
            (run.killed().is_some(), run.describe(), wrong, notes)
        }));
        tally.trials += 1;
        match outcome {
            Ok((killed, what, wrong, notes)) => {
                tally.killed += usize::from(killed);
                for n in notes {
                    tally.notes.push(format!("{label}: {what}: {n}"));
                }
                if !wrong.is_empty() {
                    let msg = format!("{label}: {what}: {}", wrong.join("; "));
                    eprintln!("CRASH FAILURE {msg}");
                    tally.failures.push(msg);
                }
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let msg = format!("{label}: the harness panicked: {why}");
                eprintln!("CRASH FAILURE {msg}");
                tally.failures.push(msg);
            }
        }
    }
    for n in &tally.notes {
        eprintln!("crash note: {n}");
    }
    eprintln!(
        "crash summary: {}: {} trials, {} killed mid-run, {} failures, {} notes, {:.1} s (seed {:#x})",
        sc.name(),
        tally.trials,
        tally.killed,
        tally.failures.len(),
        tally.notes.len(),
        started.elapsed().as_secs_f64(),
        cfg.seed
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} trials of {} failed:\n{}",
        tally.failures.len(),
        tally.trials,
        sc.name(),
        tally.failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Shared pieces of the scenarios.

/// A trial's directory, image and TPM.
struct Base {
    dir: TempDir,
    tpm: Swtpm,
    image: PathBuf,
    passfile: PathBuf,
}

impl Base {
    /// A copy of `image`, with a TPM on a copy of `tpm_state` (None: a factory-fresh one).
    fn new(image: &Path, tpm_state: Option<&Path>) -> Base {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("disk.img");
        std::fs::copy(image, &copy).expect("copy image");
        let tpm = match tpm_state {
            Some(state) => {
                let mine = dir.path().join("tpm");
                std::fs::create_dir_all(&mine).expect("tpm dir");
                for e in std::fs::read_dir(state).expect("tpm state") {
                    let e = e.expect("entry");
                    std::fs::copy(e.path(), mine.join(e.file_name())).expect("copy tpm state");
                }
                Swtpm::start_on(mine)
            }
            None => Swtpm::start(dir.path()),
        };
        let passfile = dir.path().join("passphrase");
        std::fs::write(&passfile, PASSPHRASE).expect("write passphrase");
        Base {
            dir,
            tpm,
            image: copy,
            passfile,
        }
    }

    fn opens(&self, slot: Option<u32>, secret: &[u8]) -> bool {
        opens(&self.image, slot, secret, self.dir.path())
    }

    fn token_opens(&self, t: &Value) -> Result<(), String> {
        token_opens(&self.image, t, self.dir.path(), &self.tpm)
    }

    fn run(&self, args: &[&str]) -> common::Run {
        common::run(args)
    }
}

/// Secrets known to open given keyslots, and TPM tokens known to open the volume.
#[derive(Default, Clone)]
struct Known {
    slots: Vec<(String, u32, Vec<u8>)>,
    tokens: Vec<(String, Value)>,
}

impl Known {
    /// What of it no longer opens.
    fn lost(&self, b: &Base) -> Vec<String> {
        let mut out = Vec::new();
        for (what, slot, secret) in &self.slots {
            if !b.opens(Some(*slot), secret) {
                out.push(format!("{what} no longer opens keyslot {slot}"));
            }
        }
        for (what, t) in &self.tokens {
            if let Err(e) = b.token_opens(t) {
                out.push(format!("{what}: {e}"));
            }
        }
        out
    }
}

/// Keyslots no token claims, other than `expected`.
fn orphans(md: &Value, expected: &BTreeSet<u32>) -> Vec<u32> {
    let claimed = claimed(md);
    keyslots(md)
        .into_iter()
        .filter(|s| !claimed.contains(s) && !expected.contains(s))
        .collect()
}

// ---------------------------------------------------------------------------------------
// enroll

/// A volume with a passphrase (keyslot 0), a TPM token and a recovery key, enrolled once on
/// a TPM whose state each trial copies.
struct EnrollTemplate {
    _fixture: common::Fixture,
    image: PathBuf,
    tpm_state: PathBuf,
    known: Known,
}

fn enroll_template() -> EnrollTemplate {
    let mut f = common::Fixture::new();
    let r = f.enroll(&["--recovery-key"]);
    let slot: u32 = r
        .stderr
        .split("recovery keyslot ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("recovery keyslot");
    let recovery = r.stdout.trim().to_string();
    let md = metadata(&f.image);
    let (_, token) = tokens_of_type(&md, "sealroot").remove(0);
    f.tpm.stop();
    let known = Known {
        slots: vec![
            ("the passphrase".into(), 0, PASSPHRASE.as_bytes().to_vec()),
            ("the recovery key".into(), slot, recovery.into_bytes()),
        ],
        tokens: vec![("the TPM token enrolled before".into(), token)],
    };
    EnrollTemplate {
        image: f.image.clone(),
        tpm_state: f.tpm.state.clone(),
        _fixture: f,
        known,
    }
}

struct EnrollScenario {
    t: EnrollTemplate,
    recovery_key: bool,
}

struct EnrollInst {
    b: Base,
    before: Value,
}

impl Scenario for EnrollScenario {
    type Inst = EnrollInst;

    fn name(&self) -> &'static str {
        if self.recovery_key {
            "enroll --recovery-key"
        } else {
            "enroll"
        }
    }

    fn variants(&self) -> &[&'static str] {
        &["pcr 7"]
    }

    fn prepare(&self, _: usize) -> EnrollInst {
        let b = Base::new(&self.t.image, Some(&self.t.tpm_state));
        let before = metadata(&b.image);
        EnrollInst { b, before }
    }

    fn image<'a>(&self, i: &'a EnrollInst) -> &'a Path {
        &i.b.image
    }

    fn steps(&self, _: usize, i: &EnrollInst) -> Vec<Vec<String>> {
        let mut args = s(&["enroll", &p(&i.b.image), "--unlock-key-file"]);
        args.push(p(&i.b.passfile));
        if self.recovery_key {
            args.push("--recovery-key".into());
        }
        args.extend(s(&["--tcti", &i.b.tpm.tcti()]));
        vec![args]
    }

    fn after_kill(&self, _: usize, i: &mut EnrollInst, run: &SeqRun) -> Vec<String> {
        i.b.tpm.reset();
        let mut wrong = self.t.known.lost(&i.b);
        // What the interrupted run left must work as it says: a token written means its
        // keyslot is complete; a recovery key shown must open its keyslot.
        let md = metadata(&i.b.image);
        let old: Vec<Value> = tokens(&i.before).into_iter().map(|(_, t)| t).collect();
        for (id, t) in tokens_of_type(&md, "sealroot") {
            if !old.contains(&t)
                && let Err(e) = i.b.token_opens(&t)
            {
                wrong.push(format!("the token {id} the killed run wrote: {e}"));
            }
        }
        if let Some((slot, key)) = run.steps.first().and_then(shown_recovery_key)
            && !i.b.opens(Some(slot), key.as_bytes())
        {
            wrong.push(format!(
                "the recovery key the killed run showed does not open keyslot {slot}"
            ));
        }
        wrong
    }

    fn rerun(
        &self,
        _: usize,
        i: &mut EnrollInst,
        run: &SeqRun,
        notes: &mut Vec<String>,
    ) -> Vec<String> {
        let mut wrong = Vec::new();
        let killed = run.killed().is_some();
        let step = if killed {
            let steps = self.steps(0, i);
            let mut r = run_steps(&steps, None);
            let step = r.steps.remove(0);
            if step.code != Some(0) {
                return vec![format!(
                    "the re-run of enroll failed (exit {:?}): {}",
                    step.code,
                    step.stderr.trim()
                )];
            }
            step
        } else {
            let r = &run.steps[0];
            StepRun {
                name: r.name.clone(),
                code: r.code,
                killed: false,
                stdout: r.stdout.clone(),
                stderr: r.stderr.clone(),
                elapsed: r.elapsed,
            }
        };
        wrong.extend(self.t.known.lost(&i.b));
        let md = metadata(&i.b.image);
        let new_id: u32 = step
            .stderr
            .split(": token ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u32::MAX);
        match tokens(&md).into_iter().find(|(id, _)| *id == new_id) {
            Some((_, t)) => {
                if let Err(e) = i.b.token_opens(&t) {
                    wrong.push(format!("the re-run's token {new_id}: {e}"));
                }
            }
            None => wrong.push(format!("the re-run names no token: {}", step.stderr.trim())),
        }
        let mut expected: BTreeSet<u32> = self.t.known.slots.iter().map(|k| k.1).collect();
        if self.recovery_key {
            match shown_recovery_key(&step) {
                Some((slot, key)) => {
                    expected.insert(slot);
                    if !i.b.opens(Some(slot), key.as_bytes()) {
                        wrong.push(format!(
                            "the re-run's recovery key does not open keyslot {slot}"
                        ));
                    }
                }
                None => wrong.push("the re-run showed no recovery key".into()),
            }
        }
        if killed {
            // Harmless but worth counting: keyslots of the killed run that nothing names.
            let stray = orphans(&md, &expected);
            if !stray.is_empty() {
                notes.push(format!(
                    "keyslot(s) {stray:?} left by the killed run, claimed by no token"
                ));
            }
            let old: Vec<Value> = tokens(&i.before).into_iter().map(|(_, t)| t).collect();
            for (id, t) in tokens_of_type(&md, "sealroot") {
                if id != new_id && !old.contains(&t) {
                    notes.push(format!(
                        "TPM token {id} of the killed run stays (it works) next to the re-run's"
                    ));
                }
            }
            let shown: Option<u32> = run.steps.first().and_then(shown_recovery_key).map(|k| k.0);
            for (id, t) in tokens_of_type(&md, "sealroot-recovery") {
                let slots = token_slots(&t);
                if !slots
                    .iter()
                    .all(|s| expected.contains(s) || Some(*s) == shown)
                {
                    notes.push(format!(
                        "recovery token {id} (keyslot(s) {slots:?}) left by the killed run, its key never shown"
                    ));
                }
            }
        }
        wrong
    }
}

#[test]
fn enroll_survives_random_kills() {
    drive(&EnrollScenario {
        t: enroll_template(),
        recovery_key: false,
    });
}

#[test]
fn enroll_with_recovery_key_survives_random_kills() {
    drive(&EnrollScenario {
        t: enroll_template(),
        recovery_key: true,
    });
}

// ---------------------------------------------------------------------------------------
// remove

/// The enroll template plus a second TPM token: `remove --token` takes one, `--all` both.
struct RemoveScenario {
    t: EnrollTemplate,
    /// Token ids of the two TPM tokens.
    ids: [u32; 2],
    tokens: [Value; 2],
    slots: [u32; 2],
}

fn remove_scenario() -> RemoveScenario {
    let mut t = enroll_template();
    // A second token on the same TPM.
    let base = Base::new(&t.image, Some(&t.tpm_state));
    let r = common::run(&[
        "enroll",
        &p(&base.image),
        "--unlock-key-file",
        &p(&base.passfile),
        "--tcti",
        &base.tpm.tcti(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::copy(&base.image, &t.image).expect("copy image");
    drop(base); // the TPM's state did not change: the SRK was there
    let md = metadata(&t.image);
    let both = tokens_of_type(&md, "sealroot");
    assert_eq!(both.len(), 2);
    t.known.tokens = vec![];
    RemoveScenario {
        ids: [both[0].0, both[1].0],
        slots: [token_slots(&both[0].1)[0], token_slots(&both[1].1)[0]],
        tokens: [both[0].1.clone(), both[1].1.clone()],
        t,
    }
}

impl RemoveScenario {
    /// Indexes into `tokens` that the variant removes.
    fn targets(&self, variant: usize) -> &[usize] {
        if variant == 0 { &[0] } else { &[0, 1] }
    }

    fn kept(&self, variant: usize) -> Known {
        let mut k = self.t.known.clone();
        for i in 0..2 {
            if !self.targets(variant).contains(&i) {
                k.tokens.push((
                    format!("the TPM token {} that stays", self.ids[i]),
                    self.tokens[i].clone(),
                ));
            }
        }
        k
    }
}

impl Scenario for RemoveScenario {
    type Inst = Base;

    fn name(&self) -> &'static str {
        "remove"
    }

    fn variants(&self) -> &[&'static str] {
        &["--token", "--all"]
    }

    fn prepare(&self, _: usize) -> Base {
        Base::new(&self.t.image, Some(&self.t.tpm_state))
    }

    fn image<'a>(&self, b: &'a Base) -> &'a Path {
        &b.image
    }

    fn steps(&self, v: usize, b: &Base) -> Vec<Vec<String>> {
        let mut args = s(&["remove", &p(&b.image)]);
        if v == 0 {
            args.extend(s(&["--token", &self.ids[0].to_string()]));
        } else {
            args.push("--all".into());
        }
        vec![args]
    }

    fn after_kill(&self, v: usize, b: &mut Base, _: &SeqRun) -> Vec<String> {
        b.tpm.reset();
        self.kept(v).lost(b)
    }

    fn rerun(&self, v: usize, b: &mut Base, run: &SeqRun, notes: &mut Vec<String>) -> Vec<String> {
        let mut wrong = Vec::new();
        if run.killed().is_some() {
            let md = metadata(&b.image);
            let present: Vec<Value> = tokens(&md).into_iter().map(|(_, t)| t).collect();
            for &i in self.targets(v) {
                if present.contains(&self.tokens[i]) && b.token_opens(&self.tokens[i]).is_err() {
                    notes.push(format!(
                        "token {} to be removed is still there but no longer opens",
                        self.ids[i]
                    ));
                }
            }
            let r = run_steps(&self.steps(v, b), None);
            let step = &r.steps[0];
            if step.code != Some(0) {
                let left: Vec<u32> = self
                    .targets(v)
                    .iter()
                    .filter(|&&i| present.contains(&self.tokens[i]))
                    .map(|&i| self.ids[i])
                    .collect();
                // Refusing is right only when nothing of the removed tokens is left.
                let slots_left: Vec<u32> = self
                    .targets(v)
                    .iter()
                    .map(|&i| self.slots[i])
                    .filter(|s| keyslots(&md).contains(s))
                    .collect();
                if !left.is_empty() || !slots_left.is_empty() {
                    wrong.push(format!(
                        "the re-run of remove failed (exit {:?}: {}) with token(s) {left:?} and keyslot(s) {slots_left:?} of the removed tokens still there",
                        step.code,
                        step.stderr.trim()
                    ));
                }
            }
        }
        wrong.extend(self.kept(v).lost(b));
        let md = metadata(&b.image);
        let present: Vec<Value> = tokens(&md).into_iter().map(|(_, t)| t).collect();
        for &i in self.targets(v) {
            if present.contains(&self.tokens[i]) {
                wrong.push(format!("the removed token {} is still there", self.ids[i]));
            }
            if keyslots(&md).contains(&self.slots[i]) {
                wrong.push(format!(
                    "keyslot {} of the removed token {} is still there (its sealed key still opens the volume for whoever kept the token)",
                    self.slots[i], self.ids[i]
                ));
            }
        }
        wrong
    }
}

#[test]
fn remove_survives_random_kills() {
    drive(&remove_scenario());
}

/// The state a kill between `remove`'s two writes leaves (the keyslot destroyed, which
/// unassigns it from its token; the token still there): the next `remove` finishes. Removing
/// the token first had left a keyslot no token names, which no `remove` could find again.
#[test]
fn remove_finishes_a_removal_cut_off_after_the_keyslot() {
    let f = common::Fixture::new();
    f.enroll(&[]);
    let img = p(&f.image);
    common::checked(Command::new("cryptsetup").args(["luksKillSlot", "-q", &img, "1"]));
    let md = metadata(&f.image);
    assert_eq!(
        token_slots(&tokens_of_type(&md, "sealroot")[0].1),
        Vec::<u32>::new()
    );
    let r = f.run(&["remove", &img, "--token", "0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let md = metadata(&f.image);
    assert!(tokens(&md).is_empty());
    assert_eq!(keyslots(&md), BTreeSet::from([0]));
    assert!(opens(
        &f.image,
        Some(0),
        PASSPHRASE.as_bytes(),
        f.dir.path()
    ));
}

// ---------------------------------------------------------------------------------------
// provision, first boot, re-encryption

/// The builder's age identity and recipient.
fn age_identity(dir: &Path) -> (PathBuf, String) {
    let id = dir.join("builder-age.txt");
    common::checked(Command::new("age-keygen").arg("-o").arg(&id));
    let out = common::checked(Command::new("age-keygen").arg("-y").arg(&id));
    let recipient = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    (id, recipient)
}

fn provisioning_key(md: &Value) -> Option<(u32, String)> {
    let (_, t) = tokens_of_type(md, "sealroot-provision")
        .into_iter()
        .next()?;
    Some((
        t["provisioning_keyslot"].as_u64()? as u32,
        t["provisioning_key"].as_str()?.to_string(),
    ))
}

/// The escrowed recovery key and its keyslot, decrypted by the stock age.
fn escrowed(b: &Base, identity: &Path) -> Result<(u32, String), String> {
    let md = metadata(&b.image);
    let (_, t) = tokens_of_type(&md, "sealroot-recovery")
        .into_iter()
        .next()
        .ok_or("no recovery token")?;
    let slot = *token_slots(&t).first().ok_or("no recovery keyslot")?;
    let shown = b.run(&["escrow", "show", &p(&b.image)]);
    if shown.code != 0 {
        return Err(format!("escrow show: {}", shown.stderr.trim()));
    }
    let file = b.dir.path().join("escrow.age");
    std::fs::write(&file, shown.stdout).expect("write escrow");
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(&file)
        .output()
        .expect("age must be installed (make deps)");
    if !out.status.success() {
        return Err(format!("age -d: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok((
        slot,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// A provisioned instance: state of the image's and the instance's ways in.
struct Instance {
    b: Base,
    identity: PathBuf,
    /// The provisioning key, once seen.
    provisioning: Option<(u32, String)>,
    /// The data's plaintext before (when it is checked).
    plaintext: Option<String>,
    /// Keyslot 0, the builder's passphrase, as it was before.
    slot0: Option<String>,
    /// Killed in libcryptsetup's finishing window: how many of the image's keyslots it left.
    window: Option<usize>,
}

impl Instance {
    /// After a kill in a first boot: the image's ways in (passphrase, provisioning key) all
    /// still open, or the instance's (its TPM token and escrowed recovery key) are in place.
    fn lost(&mut self) -> Vec<String> {
        let md = metadata(&self.b.image);
        if let Some(k) = provisioning_key(&md) {
            self.provisioning = Some(k);
        }
        if in_finishing_window(&md) {
            // libcryptsetup itself is retiring the image's keyslots; until sealroot's next
            // run finishes the header, activation is refused, but the instance's keys must
            // unlock their keyslots.
            self.window = Some(old_key_keyslots(&md).len());
            return match escrowed(&self.b, &self.identity) {
                Ok((slot, key)) if unlocks(&self.b, slot, key.as_bytes()) => Vec::new(),
                Ok((slot, _)) => vec![format!(
                    "in the finishing window, the escrowed recovery key does not unlock keyslot {slot}"
                )],
                Err(e) => vec![format!(
                    "in the finishing window: the escrowed recovery key: {e}"
                )],
            };
        }
        let mut image_lost = Vec::new();
        if reencrypting(&md) {
            // Activation needs the old and the new key: the provisioning key opens both.
            if slot_fingerprint(&self.b.image, &md, 0) != self.slot0 {
                image_lost.push("keyslot 0 of the builder's passphrase changed".to_string());
            }
            if let Some((_, key)) = &self.provisioning
                && !self.b.opens(None, key.as_bytes())
            {
                image_lost.push("the provisioning key no longer opens it".to_string());
            }
        } else {
            if !self.b.opens(Some(0), PASSPHRASE.as_bytes()) {
                image_lost.push("the builder's passphrase no longer opens keyslot 0".to_string());
            }
            if let Some((slot, key)) = &self.provisioning
                && !self.b.opens(Some(*slot), key.as_bytes())
            {
                image_lost.push(format!(
                    "the provisioning key no longer opens keyslot {slot}"
                ));
            }
        }
        if image_lost.is_empty() {
            return Vec::new();
        }
        let instance = self.instance_ways(&md);
        if instance.is_empty() {
            return Vec::new();
        }
        image_lost.extend(instance);
        image_lost
    }

    /// What of the instance's own ways in does not work.
    fn instance_ways(&self, md: &Value) -> Vec<String> {
        let mut wrong = Vec::new();
        if reencrypting(md) {
            wrong.push("re-encryption is in progress".into());
            return wrong;
        }
        match tokens_of_type(md, "sealroot").as_slice() {
            [(_, t)] => {
                if let Err(e) = self.b.token_opens(t) {
                    wrong.push(format!("the TPM token: {e}"));
                }
            }
            other => wrong.push(format!("{} TPM tokens", other.len())),
        }
        match escrowed(&self.b, &self.identity) {
            Ok((slot, key)) => {
                if !self.b.opens(Some(slot), key.as_bytes()) {
                    wrong.push(format!(
                        "the escrowed recovery key does not open keyslot {slot}"
                    ));
                }
            }
            Err(e) => wrong.push(format!("the escrowed recovery key: {e}")),
        }
        wrong
    }

    /// The state an uninterrupted first boot leaves.
    fn provisioned(&mut self) -> Vec<String> {
        let mut wrong = Vec::new();
        let md = metadata(&self.b.image);
        let kinds: Vec<String> = tokens(&md)
            .iter()
            .map(|(_, t)| t["type"].as_str().unwrap_or("?").to_string())
            .collect();
        if kinds != ["sealroot", "sealroot-recovery"] {
            wrong.push(format!("tokens {kinds:?}"));
        }
        let slots = keyslots(&md);
        if slots.len() != 2 {
            wrong.push(format!(
                "keyslots {slots:?}, not only the sealed and the recovery one"
            ));
        }
        if self.b.opens(None, PASSPHRASE.as_bytes()) {
            wrong.push("the builder's passphrase still opens it".into());
        }
        if let Some((_, key)) = &self.provisioning
            && self.b.opens(None, key.as_bytes())
        {
            wrong.push("the provisioning key still opens it".into());
        }
        wrong.extend(self.instance_ways(&md));
        self.b.tpm.reset();
        let r = self.b.run(&[
            "unlock",
            &p(&self.b.image),
            "root",
            "--test",
            "--no-fence",
            "--tcti",
            &self.b.tpm.tcti(),
        ]);
        if r.code != 0 {
            wrong.push(format!(
                "the next boot does not unlock: {}",
                r.stderr.trim()
            ));
        }
        if let Some(before) = &self.plaintext {
            match escrowed(&self.b, &self.identity).and_then(|(_, key)| {
                plaintext_hash(&self.b.image, key.as_bytes(), self.b.dir.path())
            }) {
                Ok(after) if &after == before => {}
                Ok(_) => wrong.push("the data changed: it does not decrypt to what it was".into()),
                Err(e) => wrong.push(format!("the data: {e}")),
            }
        }
        wrong
    }

    fn first_boot(&mut self) -> Result<(), String> {
        let r = self.b.run(&[
            "first-boot",
            &p(&self.b.image),
            "--tcti",
            &self.b.tpm.tcti(),
        ]);
        if r.code != 0 {
            return Err(format!(
                "first-boot failed (exit {}): {}",
                r.code,
                r.stderr.trim()
            ));
        }
        let md = metadata(&self.b.image);
        if let Some(k) = provisioning_key(&md) {
            self.provisioning = Some(k);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        let r = self.b.run(&["finish-provisioning", &p(&self.b.image)]);
        if r.code != 0 {
            return Err(format!(
                "finish-provisioning failed (exit {}): {}",
                r.code,
                r.stderr.trim()
            ));
        }
        Ok(())
    }
}

/// `provision` on the builder, then the instance's `first-boot` (the initrd's part); the
/// kill lands in either.
struct ProvisionScenario {
    dir: TempDir,
    identity: PathBuf,
    recipient: String,
    image: PathBuf,
}

impl ProvisionScenario {
    fn new() -> ProvisionScenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, recipient) = age_identity(dir.path());
        let passfile = dir.path().join("passphrase");
        std::fs::write(&passfile, PASSPHRASE).expect("write passphrase");
        let image = common::make_image(dir.path(), "template.img", &passfile);
        ProvisionScenario {
            dir,
            identity,
            recipient,
            image,
        }
    }
}

impl Scenario for ProvisionScenario {
    type Inst = Instance;

    fn name(&self) -> &'static str {
        "provision + first-boot"
    }

    fn variants(&self) -> &[&'static str] {
        &["re-encrypt after boot", "--no-reencrypt"]
    }

    fn prepare(&self, _: usize) -> Instance {
        let _ = &self.dir;
        let b = Base::new(&self.image, None);
        let slot0 = slot_fingerprint(&b.image, &metadata(&b.image), 0);
        Instance {
            b,
            identity: self.identity.clone(),
            provisioning: None,
            plaintext: None,
            slot0,
            window: None,
        }
    }

    fn image<'a>(&self, i: &'a Instance) -> &'a Path {
        &i.b.image
    }

    fn steps(&self, v: usize, i: &Instance) -> Vec<Vec<String>> {
        let mut provision = s(&["provision", &p(&i.b.image), "--unlock-key-file"]);
        provision.push(p(&i.b.passfile));
        provision.extend(s(&["--pcrs", "7", "--escrow", &self.recipient]));
        if v == 1 {
            provision.push("--no-reencrypt".into());
        }
        vec![
            provision,
            s(&["first-boot", &p(&i.b.image), "--tcti", &i.b.tpm.tcti()]),
        ]
    }

    fn after_kill(&self, _: usize, i: &mut Instance, run: &SeqRun) -> Vec<String> {
        i.b.tpm.reset();
        let mut wrong = Vec::new();
        let md = metadata(&i.b.image);
        // Killed in `provision`: a provision token written must open (first-boot ignores one
        // whose key opens nothing, and a re-run of provision refuses a marked image).
        if run.steps.len() == 1
            && let Some((slot, key)) = provisioning_key(&md)
            && !i.b.opens(Some(slot), key.as_bytes())
        {
            wrong.push(format!(
                "provision left a provision token whose key does not open keyslot {slot}"
            ));
        }
        wrong.extend(i.lost());
        wrong
    }

    fn rerun(&self, v: usize, i: &mut Instance, run: &SeqRun, _: &mut Vec<String>) -> Vec<String> {
        if run.killed().is_some_and(|k| k.name == "provision") {
            let steps = self.steps(v, i);
            let r = run_steps(&steps[..1], None);
            let step = &r.steps[0];
            let marked = provisioning_key(&metadata(&i.b.image)).is_some();
            if step.code != Some(0) && !(marked && step.stderr.contains("already marked")) {
                return vec![format!(
                    "the re-run of provision failed (exit {:?}): {}",
                    step.code,
                    step.stderr.trim()
                )];
            }
        }
        if run.killed().is_some()
            && let Err(e) = i.first_boot()
        {
            return vec![e];
        }
        if v == 0
            && let Err(e) = i.finish()
        {
            return vec![e];
        }
        i.provisioned()
    }
}

#[test]
fn provision_and_first_boot_survive_random_kills() {
    drive(&ProvisionScenario::new());
}

/// The data pass: `finish-provisioning` after a first boot, or a first boot that
/// re-encrypts in the initrd. A 40 MiB image: two hotzones.
struct ReencryptScenario {
    _dir: TempDir,
    identity: PathBuf,
    /// Provisioned for re-encryption after boot, and in the initrd.
    images: [PathBuf; 2],
    plaintext: String,
}

impl ReencryptScenario {
    fn new() -> ReencryptScenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let (identity, recipient) = age_identity(dir.path());
        let passfile = dir.path().join("passphrase");
        std::fs::write(&passfile, PASSPHRASE).expect("write passphrase");
        let plain = common::make_image_of(dir.path(), "plain.img", &passfile, 40 << 20);
        // Data that is not a pattern, so that a hotzone written twice or skipped shows.
        let mut noise = vec![0u8; 35 << 20];
        let mut rng = Rng::new(0x5EED);
        noise
            .chunks_exact_mut(8)
            .for_each(|c| c.copy_from_slice(&rng.next().to_le_bytes()));
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&plain)
                .expect("open image");
            f.seek(SeekFrom::Start(5 << 20)).expect("seek");
            f.write_all(&noise).expect("write data");
        }
        let plaintext =
            plaintext_hash(&plain, PASSPHRASE.as_bytes(), dir.path()).expect("plaintext");
        let images = [
            ("after-boot.img", None),
            ("in-initrd.img", Some("--reencrypt-in-initrd")),
        ]
        .map(|(name, flag)| {
            let image = dir.path().join(name);
            std::fs::copy(&plain, &image).expect("copy");
            let mut args = vec![
                "provision".to_string(),
                p(&image),
                "--unlock-key-file".into(),
                p(&passfile),
                "--pcrs".into(),
                "7".into(),
                "--escrow".into(),
                recipient.clone(),
            ];
            args.extend(flag.map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = common::run(&args);
            assert_eq!(r.code, 0, "provision: {}", r.stderr);
            image
        });
        ReencryptScenario {
            _dir: dir,
            identity,
            images,
            plaintext,
        }
    }
}

impl Scenario for ReencryptScenario {
    type Inst = Instance;

    fn name(&self) -> &'static str {
        "re-encryption"
    }

    fn variants(&self) -> &[&'static str] {
        &["finish-provisioning", "first-boot --reencrypt-in-initrd"]
    }

    fn prepare(&self, v: usize) -> Instance {
        let b = Base::new(&self.images[v], None);
        let md = metadata(&b.image);
        let mut i = Instance {
            slot0: slot_fingerprint(&b.image, &md, 0),
            b,
            identity: self.identity.clone(),
            provisioning: provisioning_key(&md),
            plaintext: Some(self.plaintext.clone()),
            window: None,
        };
        if v == 0 {
            // The initrd's part, uninterrupted: keys, seal, escrow, re-encryption set up.
            i.first_boot().expect("first boot");
            i.b.tpm.reset();
        }
        i
    }

    fn image<'a>(&self, i: &'a Instance) -> &'a Path {
        &i.b.image
    }

    fn steps(&self, v: usize, i: &Instance) -> Vec<Vec<String>> {
        if v == 0 {
            vec![s(&["finish-provisioning", &p(&i.b.image)])]
        } else {
            vec![s(&[
                "first-boot",
                &p(&i.b.image),
                "--tcti",
                &i.b.tpm.tcti(),
            ])]
        }
    }

    fn after_kill(&self, _: usize, i: &mut Instance, _: &SeqRun) -> Vec<String> {
        i.b.tpm.reset();
        i.lost()
    }

    fn rerun(
        &self,
        v: usize,
        i: &mut Instance,
        run: &SeqRun,
        notes: &mut Vec<String>,
    ) -> Vec<String> {
        if let Some(left) = i.window {
            notes.push(format!(
                "killed in libcryptsetup's finishing window, {left} of the image's keyslots left"
            ));
        }
        if run.killed().is_some() {
            let again = if v == 0 { i.finish() } else { i.first_boot() };
            if let Err(e) = again {
                return vec![e];
            }
        }
        if v == 1 {
            // Nothing left for after switch-root.
            if let Err(e) = i.finish() {
                return vec![e];
            }
        }
        i.provisioned()
    }
}

#[test]
fn reencryption_survives_random_kills() {
    drive(&ReencryptScenario::new());
}

/// The finishing window (README): a data pass killed right after its last hotzone (here
/// the only one), before libcryptsetup's last header update, with `destroyed` of the old
/// key's keyslots already gone — libcryptsetup destroys them one header write at a time
/// before that update, as `cryptsetup luksKillSlot` does here. The data is all under the
/// new key, but the header says re-encryption is in progress with one data segment, which
/// libcryptsetup 2.6 takes for a pass not started (resuming it re-encrypted the data a
/// second time); once the old keyslots are all gone, it opens the volume with no key.
/// Returns the instance as the kill left it.
fn finishing_window(destroyed: usize) -> (ProvisionScenario, Instance) {
    let template = ProvisionScenario::new();
    let b = Base::new(&template.image, None);
    let plaintext = plaintext_hash(&b.image, PASSPHRASE.as_bytes(), b.dir.path()).expect("data");
    let img = p(&b.image);
    let r = b.run(&[
        "provision",
        &img,
        "--unlock-key-file",
        &p(&b.passfile),
        "--escrow",
        &template.recipient,
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let provisioning = provisioning_key(&metadata(&b.image));
    let r = b.run(&["first-boot", &img, "--tcti", &b.tpm.tcti()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // One 32 MiB hotzone covers the image: the first progress report comes after it.
    let r = common::run_with_env(
        &["finish-provisioning", &img],
        b"",
        &[("SEALROOT_CRASH_AT", "reencrypt-half")],
    );
    assert_eq!(r.code, -1, "not killed: {}", r.stderr);
    let md = metadata(&b.image);
    assert!(reencrypting(&md), "{md}");
    let old = old_key_keyslots(&md);
    assert_eq!(
        old.len(),
        2,
        "the builder's and the provisioning keyslot: {md}"
    );
    for slot in old.iter().take(destroyed) {
        common::checked(Command::new("cryptsetup").args([
            "luksKillSlot",
            "-q",
            &img,
            &slot.to_string(),
        ]));
    }
    let md = metadata(&b.image);
    assert!(in_finishing_window(&md), "{md}");
    assert_eq!(old_key_keyslots(&md).len(), 2 - destroyed, "{md}");
    let i = Instance {
        b,
        identity: template.identity.clone(),
        provisioning,
        plaintext: Some(plaintext),
        slot0: None,
        window: None,
    };
    (template, i)
}

/// libcryptsetup's finishing window (README): the re-encryption metadata is still there,
/// but the one live segment is bound to the digest of `backup-final` (the new key).
fn in_finishing_window(md: &Value) -> bool {
    let Some(segments) = md["segments"].as_object() else {
        return false;
    };
    let flagged = |s: &Value, f: &str| {
        s["flags"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == f))
    };
    let digest_of = |segment: &str| {
        md["digests"].as_object().and_then(|d| {
            d.iter()
                .find(|(_, d)| {
                    d["segments"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == segment))
                })
                .map(|(id, _)| id.clone())
        })
    };
    let live: Vec<&String> = segments
        .iter()
        .filter(|(_, s)| s["flags"].as_array().is_none_or(|a| a.is_empty()))
        .map(|(id, _)| id)
        .collect();
    let Some((last, _)) = segments.iter().find(|(_, s)| flagged(s, "backup-final")) else {
        return false;
    };
    reencrypting(md)
        && matches!(live.as_slice(), [l] if digest_of(l).is_some() && digest_of(l) == digest_of(last))
}

/// Whether `secret` unlocks keyslot `slot` (its volume key, as `luksDump --dump-volume-key`
/// gets it: no activation, which re-encryption metadata can refuse).
fn unlocks(b: &Base, slot: u32, secret: &[u8]) -> bool {
    let keyfile = b.dir.path().join("unlock.key");
    std::fs::write(&keyfile, secret).expect("write key file");
    let out = Command::new("cryptsetup")
        .args(["luksDump", "-q", "--dump-volume-key", "--volume-key-file"])
        .arg(b.dir.path().join("unlock.vk"))
        .args(["--key-slot", &slot.to_string(), "--key-file"])
        .arg(&keyfile)
        .arg(&b.image)
        .output()
        .expect("cryptsetup");
    let _ = std::fs::remove_file(b.dir.path().join("unlock.vk"));
    out.status.success()
}

/// The keyslots of the digest of the `backup-previous` segment (the old key).
fn old_key_keyslots(md: &Value) -> Vec<u32> {
    let Some((previous, _)) = md["segments"].as_object().and_then(|s| {
        s.iter().find(|(_, s)| {
            s["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "backup-previous"))
        })
    }) else {
        return Vec::new();
    };
    md["digests"]
        .as_object()
        .and_then(|d| {
            d.values().find(|d| {
                d["segments"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s == previous.as_str()))
            })
        })
        .map(token_slots)
        .unwrap_or_default()
}

fn window_finished_by(destroyed: usize, next_boot: bool) {
    let (_template, mut i) = finishing_window(destroyed);
    let (slot, key) = escrowed(&i.b, &i.identity).expect("the escrowed recovery key");
    assert!(unlocks(&i.b, slot, key.as_bytes()));
    if destroyed == 2 {
        // The defect's worst form: with the image's keyslots gone, libcryptsetup activates
        // the volume with no key until the header is finished.
        assert!(!i.b.opens(None, key.as_bytes()));
    }
    if next_boot {
        i.b.tpm.reset();
        if let Err(e) = i.first_boot() {
            panic!("{e}");
        }
    }
    if let Err(e) = i.finish() {
        panic!("{e}");
    }
    let wrong = i.provisioned();
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn the_finishing_window_is_finished_by_the_next_finish_provisioning() {
    window_finished_by(0, false);
}

#[test]
fn the_finishing_window_with_one_old_keyslot_gone_is_finished() {
    window_finished_by(1, false);
}

#[test]
fn the_finishing_window_with_all_old_keyslots_gone_is_finished_by_the_next_boot() {
    window_finished_by(2, true);
}

/// `recover` (the manual path, no TPM) finishes the header before it activates: with the
/// image's keyslots gone, libcryptsetup would refuse the recovery key. (The activation
/// itself needs device-mapper, which the host tests do not have.)
#[test]
fn recover_finishes_the_finishing_window_first() {
    let (_template, i) = finishing_window(2);
    let (_, key) = escrowed(&i.b, &i.identity).expect("the escrowed recovery key");
    let keyfile = i.b.dir.path().join("recovery.txt");
    std::fs::write(&keyfile, &key).expect("write key");
    let r = i.b.run(&[
        "recover",
        &p(&i.b.image),
        "crash-recover",
        "--key-file",
        &p(&keyfile),
    ]);
    let md = metadata(&i.b.image);
    assert!(!reencrypting(&md), "exit {}: {}: {md}", r.code, r.stderr);
    assert!(i.b.opens(None, key.as_bytes()));
}

/// sealroot's own last header update is two header restores, each one write of both
/// header copies and the keyslot areas: the first changes only the secondary copy, the
/// second the primary and the wiped areas. A kill stops a write after any prefix; each
/// such state, put on the window's image, is finished by the next run.
#[test]
fn a_kill_during_the_last_header_update_is_finished_by_the_next_run() {
    let (_template, mut i) = finishing_window(2);
    let window = std::fs::read(&i.b.image).expect("read image");
    let r = common::run_with_env(
        &["finish-provisioning", &p(&i.b.image)],
        b"",
        &[("SEALROOT_CRASH_AT", "reencrypt-committed")],
    );
    assert_eq!(r.code, -1, "not killed: {}", r.stderr);
    let committed = std::fs::read(&i.b.image).expect("read image");
    assert!(!reencrypting(&metadata(&i.b.image)));
    let hdr = metadata(&i.b.image)["config"]["json_size"]
        .as_str()
        .and_then(|s| s.parse::<usize>().ok())
        .expect("json_size")
        + 4096;
    // (from, to) byte ranges written.
    let states: [&[(usize, usize)]; 4] = [
        &[(hdr, hdr + hdr / 2)],
        &[(hdr, 2 * hdr)],
        &[(hdr, 2 * hdr), (0, hdr / 2)],
        &[(0, 2 * hdr + (1 << 20))],
    ];
    for written in states {
        let mut torn = window.clone();
        for &(from, to) in written {
            torn[from..to].copy_from_slice(&committed[from..to]);
        }
        std::fs::write(&i.b.image, &torn).expect("write image");
        if let Err(e) = i.finish() {
            panic!("{written:?} written: {e}");
        }
        let wrong = i.provisioned();
        assert!(wrong.is_empty(), "{written:?} written: {wrong:?}");
    }
}

/// Debugging aid: `CRASH_IMG=… CRASH_KEY=… cargo test --test crash -- --ignored plaintext_of`.
#[test]
#[ignore]
fn plaintext_of() {
    let img = PathBuf::from(std::env::var("CRASH_IMG").expect("CRASH_IMG"));
    let key = std::fs::read(std::env::var("CRASH_KEY").expect("CRASH_KEY")).expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    eprintln!("plaintext {:?}", plaintext_hash(&img, &key, dir.path()));
}
