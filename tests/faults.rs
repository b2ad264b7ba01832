//! Faults (issue 16): a TPM that answers slowly, hangs or disappears mid-unlock (a proxy
//! between sealroot and swtpm that delays, swallows or drops commands), dictionary-attack
//! lockout, a TPM with no free object or session slots, a read-only image, a full /run and
//! an unwritable working directory. Each shows: a clear message on one line per problem,
//! the documented exit code (README "Exit codes"), the fence extended wherever a TPM still
//! answers, the image unchanged (hash before and after), and no wait past the documented
//! timeouts (wall-clock bounds are generous guards, not benchmarks).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BusCapture, Fixture, Run, Swtpm};

const FENCE_PCR: u32 = 15;
const TPM_CC_UNSEAL: u32 = 0x15E;
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x16B;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Every response is held back this long.
    Slow(Duration),
    /// The first n commands are answered; later ones are read and never answered.
    HangAfter(usize),
    /// Command n (counting from 0) is dropped: its connection is closed unanswered. When
    /// `back` the TPM answers again afterwards (a glitch), else every later connection is
    /// closed at once (the TPM is gone).
    DropAt { n: usize, back: bool },
}

/// A TPM bus with a fault: forwards the swtpm command port (one command per connection, as
/// the swtpm TCTI sends them) and the control port next to it. Its threads end when it
/// drops (also when a test fails).
struct FaultProxy {
    port: u16,
    commands: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn read_message(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 10];
    s.read_exact(&mut header).ok()?;
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let mut msg = header.to_vec();
    msg.resize(size.max(10), 0);
    s.read_exact(&mut msg[10..]).ok()?;
    Some(msg)
}

impl FaultProxy {
    fn start(tpm: &Swtpm, fault: Fault) -> FaultProxy {
        let (cmd, ctl) = loop {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = a.local_addr().unwrap().port();
            if port < u16::MAX
                && let Ok(b) = TcpListener::bind(("127.0.0.1", port + 1))
            {
                break (a, b);
            }
        };
        let port = cmd.local_addr().unwrap().port();
        let commands = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target = tpm.port;
        {
            let (commands, stop) = (commands.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in cmd.incoming().flatten() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let (commands, stop) = (commands.clone(), stop.clone());
                    std::thread::spawn(move || serve(client, target, fault, &commands, &stop));
                }
            });
        }
        {
            let (commands, stop) = (commands.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in ctl.incoming().flatten() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let gone = matches!(fault, Fault::DropAt { n, back: false }
                        if commands.load(Ordering::SeqCst) >= n);
                    if gone {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target + 1)) else {
                        continue;
                    };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || pump(s2, c2));
                    std::thread::spawn(move || pump(client, server));
                }
            });
        }
        FaultProxy {
            port,
            commands,
            stop,
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn commands(&self) -> usize {
        self.commands.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake both accept loops so they see the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = TcpStream::connect(("127.0.0.1", self.port + 1));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn serve(
    mut client: TcpStream,
    target: u16,
    fault: Fault,
    commands: &AtomicUsize,
    stop: &AtomicBool,
) {
    let mut server: Option<TcpStream> = None;
    while let Some(cmd) = read_message(&mut client) {
        let n = commands.fetch_add(1, Ordering::SeqCst);
        match fault {
            Fault::HangAfter(k) if n >= k => {
                // Never answer; hold the connection until the test ends.
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Fault::DropAt { n: k, back } if n == k || (!back && n > k) => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            _ => {}
        }
        if server.is_none() {
            server = TcpStream::connect(("127.0.0.1", target)).ok();
        }
        let Some(s) = server.as_mut() else { return };
        if s.write_all(&cmd).is_err() {
            return;
        }
        let Some(resp) = read_message(s) else { return };
        if let Fault::Slow(d) = fault {
            std::thread::sleep(d);
        }
        if client.write_all(&resp).is_err() {
            return;
        }
    }
}

fn fenced(f: &Fixture) -> bool {
    f.tpm.read(FENCE_PCR) != vec![0u8; 32]
}

/// The lines sealroot printed: every one a `sealroot:` line (no library noise, no
/// multi-line dumps), at least one.
fn lines(r: &Run) -> Vec<&str> {
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no message");
    for l in &lines {
        assert!(l.starts_with("sealroot: "), "not a sealroot line: {l:?}");
    }
    lines
}

fn timed(f: impl FnOnce() -> Run) -> (Run, Duration) {
    let t0 = Instant::now();
    let r = f();
    (r, t0.elapsed())
}

fn unlock_via(f: &Fixture, tcti: &str, extra: &[&str]) -> (Run, Duration) {
    let mut args = vec!["--tcti", tcti];
    args.extend_from_slice(extra);
    timed(|| f.unlock_test(&args))
}

#[test]
fn a_slow_tpm_within_the_timeout_still_unlocks() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    let delay = Duration::from_millis(250);
    let proxy = FaultProxy::start(&f.tpm, Fault::Slow(delay));
    let (r, took) = unlock_via(&f, &proxy.tcti(), &["--tpm-timeout", "10"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let n = proxy.commands();
    assert_eq!(
        n, 7,
        "ReadPublic, Load, StartAuthSession, PolicyPCR, Unseal, Flush, PCR_Event"
    );
    assert!(
        took >= delay * n as u32,
        "the delay was not applied: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(fenced(&f));
    assert_eq!(f.image_hash(), hash);
    eprintln!("slow TPM: {n} commands, {delay:?} each, unlocked in {took:?}");
}

#[test]
fn a_tpm_that_hangs_mid_unlock_is_given_up_after_the_timeout() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    // ReadPublic, Load and StartAuthSession are answered; PolicyPCR never is.
    let proxy = FaultProxy::start(&f.tpm, Fault::HangAfter(3));
    let (r, took) = unlock_via(&f, &proxy.tcti(), &["--tpm-timeout", "2"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("did not answer within 2 s"), "{l:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "{took:?}"
    );
    // The TPM behind a hung bus cannot be fenced by anyone: `fence` (what the boot scripts
    // run next) gives up the same way, and the scripts power off since a TPM is present.
    let (fence, fence_took) =
        timed(|| common::run(&["fence", "--tpm-timeout", "2", "--tcti", &proxy.tcti()]));
    assert_eq!(fence.code, 4, "{}", fence.stderr);
    assert!(fence_took < Duration::from_secs(12), "{fence_took:?}");
    assert!(!fenced(&f), "nothing reached the TPM after the hang");
    assert_eq!(f.image_hash(), hash);
    eprintln!("hung TPM: unlock gave up after {took:?}, fence after {fence_took:?}");
}

#[test]
fn a_tpm_that_disappears_mid_unlock_is_reported_at_once() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    // Unseal (command 4) is dropped, and the TPM is gone from then on.
    let proxy = FaultProxy::start(&f.tpm, Fault::DropAt { n: 4, back: false });
    let (r, took) = unlock_via(&f, &proxy.tcti(), &["--tpm-timeout", "10"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let l = lines(&r);
    assert!(
        l.iter()
            .any(|l| l.contains("TPM unavailable") && l.contains("Unseal")),
        "{l:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let (fence, fence_took) =
        timed(|| common::run(&["fence", "--tpm-timeout", "10", "--tcti", &proxy.tcti()]));
    assert_eq!(fence.code, 4, "{}", fence.stderr);
    assert!(fence_took < Duration::from_secs(8), "{fence_took:?}");
    assert!(!fenced(&f));
    assert_eq!(f.image_hash(), hash);
    eprintln!("TPM gone at Unseal: {l:?} after {took:?}");
}

#[test]
fn a_tpm_connection_lost_once_mid_unlock_still_gets_the_fence() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    let proxy = FaultProxy::start(&f.tpm, Fault::DropAt { n: 4, back: true });
    let (r, took) = unlock_via(&f, &proxy.tcti(), &["--tpm-timeout", "10"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let l = lines(&r);
    assert!(l.iter().any(|l| l.contains("TPM unavailable")), "{l:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(
        fenced(&f),
        "the TPM answers again, so the fence must be extended"
    );
    assert_eq!(f.image_hash(), hash);
    eprintln!("TPM connection lost once at Unseal: {l:?} after {took:?}");
}

#[test]
fn a_tpm_in_lockout_costs_no_strike_and_is_said_in_one_line() {
    let f = Fixture::new();
    let pin = f.enroll_pin_then_lock_out("2468");
    let pin = pin.to_str().unwrap();
    let hash = f.image_hash();
    let strikes = f.tpm.lockout_counter();
    let bus = BusCapture::start(&f.tpm);
    // The right PIN, in lockout: refused before any authorization is attempted.
    let (r, took) = unlock_via(&f, &bus.tcti(), &["--pin-file", pin]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("dictionary-attack lockout"), "{l:?}");
    let codes = bus.command_codes();
    assert!(!codes.contains(&TPM_CC_UNSEAL), "{codes:x?}");
    assert!(!codes.contains(&TPM_CC_POLICY_AUTH_VALUE), "{codes:x?}");
    assert_eq!(f.tpm.lockout_counter(), strikes, "a strike was spent");
    assert!(fenced(&f));
    assert_eq!(f.image_hash(), hash);
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("lockout: {l:?}, commands {codes:x?}, strikes {strikes} before and after");
}

/// StartAuthSession (unsalted, unbound HMAC session) sent straight to swtpm, left loaded:
/// without a resource manager nothing flushes it. Returns the response code.
fn start_raw_session(tpm: &Swtpm) -> u32 {
    let mut cmd = vec![0x80, 0x01, 0, 0, 0, 0, 0x00, 0x00, 0x01, 0x76];
    cmd.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // tpmKey: TPM_RH_NULL
    cmd.extend_from_slice(&0x4000_0007u32.to_be_bytes()); // bind: TPM_RH_NULL
    cmd.extend_from_slice(&16u16.to_be_bytes()); // nonceCaller
    cmd.extend_from_slice(&[0x5a; 16]);
    cmd.extend_from_slice(&0u16.to_be_bytes()); // encryptedSalt
    cmd.push(0x00); // TPM_SE_HMAC
    cmd.extend_from_slice(&0x0010u16.to_be_bytes()); // symmetric: TPM_ALG_NULL
    cmd.extend_from_slice(&0x000Bu16.to_be_bytes()); // authHash: SHA-256
    let size = cmd.len() as u32;
    cmd[2..6].copy_from_slice(&size.to_be_bytes());
    let mut s = TcpStream::connect(("127.0.0.1", tpm.port)).unwrap();
    s.write_all(&cmd).unwrap();
    let resp = read_message(&mut s).expect("response");
    u32::from_be_bytes([resp[6], resp[7], resp[8], resp[9]])
}

fn transient_handles(tpm: &Swtpm) -> usize {
    tpm.tools(&["tpm2_getcap", "handles-transient"])
        .lines()
        .filter(|l| l.trim_start().starts_with("- 0x"))
        .count()
}

#[test]
fn a_tpm_with_no_free_object_slots_is_reported_and_still_fenced() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    // Transient primaries left loaded by another program until the TPM refuses more.
    let mut loaded = 0;
    for i in 0..8 {
        let ctx = f.path(&format!("primary{i}.ctx"));
        let out = Command::new("tpm2_createprimary")
            .args(["-C", "o", "-G", "ecc", "-c"])
            .arg(&ctx)
            .env("TPM2TOOLS_TCTI", f.tpm.tcti())
            .output()
            .unwrap();
        if !out.status.success() {
            break;
        }
        loaded += 1;
    }
    assert_eq!(transient_handles(&f.tpm), loaded);
    assert!(loaded < 8, "the TPM never ran out of object slots");
    let (r, took) = unlock_via(&f, &f.tpm.tcti(), &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("no room"), "{l:?}");
    assert!(
        fenced(&f),
        "PCR_Event needs no slot: the fence must be extended"
    );
    assert_eq!(
        transient_handles(&f.tpm),
        loaded,
        "sealroot flushed what it loaded"
    );
    assert_eq!(f.image_hash(), hash);
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("object slots: {loaded} loaded by others; {l:?}");
}

#[test]
fn a_tpm_with_no_free_session_slots_is_reported_and_still_fenced() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    let mut loaded = 0;
    let mut refused = 0;
    for _ in 0..8 {
        match start_raw_session(&f.tpm) {
            0 => loaded += 1,
            rc => {
                refused = rc;
                break;
            }
        }
    }
    assert_eq!(
        refused, 0x903,
        "TPM_RC_SESSION_MEMORY after {loaded} sessions"
    );
    let (r, took) = unlock_via(&f, &f.tpm.tcti(), &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("no room"), "{l:?}");
    assert!(
        fenced(&f),
        "PCR_Event needs no session slot: the fence must be extended"
    );
    assert_eq!(
        transient_handles(&f.tpm),
        0,
        "sealroot flushed the object it loaded"
    );
    assert_eq!(f.image_hash(), hash);
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("session slots: {loaded} loaded by others; {l:?}");
}

/// Runs sealroot in a private mount namespace after `setup` (shell, as root), so bind
/// mounts and tmpfs exist only for it; `cwd` is its working directory.
fn run_in_namespace(setup: &str, cwd: &Path, args: &[&str]) -> (Run, Duration) {
    let script = format!("set -e\n{setup}\ncd \"$1\"\nshift\nexec \"$@\"\n");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ])
    .arg(cwd)
    .arg(common::bin())
    .args(args)
    .env_remove("SEALROOT_TCTI")
    .stdin(Stdio::null());
    let t0 = Instant::now();
    let out = cmd.output().expect("unshare (util-linux)");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    (r, t0.elapsed())
}

#[test]
fn a_read_only_image_still_unlocks_and_enroll_refuses_clearly() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    let dir = f.dir.path().to_str().unwrap().to_string();
    let ro = format!("mount --bind '{dir}' '{dir}'\nmount -o remount,bind,ro '{dir}'");
    let img = f.image.to_str().unwrap();
    let tcti = f.tpm.tcti();
    let cwd = Path::new("/");
    let (r, took) = run_in_namespace(
        &ro,
        cwd,
        &["unlock", img, "root", "--test", "--tcti", &tcti],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(fenced(&f));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let pass = f.passfile.to_str().unwrap();
    let (e, _) = run_in_namespace(
        &ro,
        cwd,
        &["enroll", img, "--unlock-key-file", pass, "--tcti", &tcti],
    );
    assert_eq!(e.code, 1, "enroll on a read-only image: {}", e.stderr);
    let l = lines(&e);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].contains("cannot be written (Read-only file system"),
        "{l:?}"
    );
    assert_eq!(f.image_hash(), hash);
    let tokens = f.run(&["status", "--json", img]).stdout;
    let v: serde_json::Value = serde_json::from_str(&tokens).unwrap();
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(1), "{tokens}");
    eprintln!(
        "read-only image: unlock --test 0 in {took:?}; enroll {}: {l:?}",
        e.code
    );
}

#[test]
fn a_full_run_and_an_unwritable_working_directory_change_nothing() {
    let f = Fixture::new();
    f.enroll(&[]);
    let hash = f.image_hash();
    let cwd = f.path("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let c = cwd.to_str().unwrap();
    // /run: a tmpfs filled to the last byte; the working directory read-only.
    let setup = format!(
        "mount -t tmpfs -o size=64k tmpfs /run\n\
         dd if=/dev/zero of=/run/fill bs=4k 2>/dev/null || true\n\
         mount -t tmpfs -o ro tmpfs '{c}'\n\
         if (echo x >/run/probe) 2>/dev/null; then echo /run is not full >&2; exit 99; fi\n\
         if (echo x >'{c}/probe') 2>/dev/null; then echo cwd is writable >&2; exit 98; fi"
    );
    let img = f.image.to_str().unwrap();
    let tcti = f.tpm.tcti();
    let (r, took) = run_in_namespace(
        &setup,
        &cwd,
        &["unlock", img, "root", "--test", "--tcti", &tcti],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert!(fenced(&f));
    assert_eq!(f.image_hash(), hash);
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("full /run, read-only working directory: unlocked in {took:?}");
}
