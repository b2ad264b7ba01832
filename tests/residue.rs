//! Secret residue (issue 16): what an unlock leaves behind. `unlock --test` is stopped just
//! before it exits (`SEALROOT_TEST_PAUSE_BEFORE_EXIT=1`: it sends itself SIGSTOP when the
//! command is done), and its whole memory (every readable mapping in /proc/PID/maps, read
//! through /proc/PID/mem: stack, heap, anonymous mappings, libraries), its argv and
//! environment are searched for the unsealed secret, the keyslot passphrase derived from it,
//! the LUKS volume key and the PIN (and the authValue derived from it), each raw, as hex
//! (both cases), as base64 and, for keys, as any 16-byte fragment. A second, identical run
//! under strace shows every file it opened for writing and every byte it wrote anywhere (log
//! lines with SEALROOT_LOG=debug, the TPM socket); both are searched the same way.
//!
//! The values searched for come from elsewhere: the secret is unsealed with tpm2-tools
//! (PIN authValue from the documented formula), proven by cryptsetup opening the keyslot
//! with its base64, and the volume key is what `cryptsetup luksDump --dump-volume-key`
//! prints. Controls show the search can fail: forms planted in a buffer are all found, a
//! marker in sealroot's environment is found on its stack, and the PIN is found in the
//! memory of a shell that read it and did not wipe it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    Fixture, Needle, Reaped, contains, export_token, forms, opens_keyslot, search,
    unseal_independently,
};

/// Residue: place → what was found there, with copies.
type Findings = BTreeMap<String, Vec<(String, usize)>>;

fn record(findings: &mut Findings, place: &str, needles: &[Needle], bytes: &[u8]) {
    let found = search(needles, bytes);
    if !found.is_empty() {
        findings.entry(place.to_string()).or_default().extend(found);
    }
}

/// Every readable mapping of a stopped process, labelled as /proc/PID/maps names it
/// ("[stack]", "[heap]", a library path, "[anon]"). Panics when the stack or heap cannot be
/// read: a reader that sees nothing would pass every check.
fn read_memory(pid: i32) -> Vec<(String, Vec<u8>)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut out = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms) = (fields[0], fields[1]);
        if !perms.starts_with('r') {
            continue;
        }
        let label = fields.get(5).map_or("[anon]", |v| v).to_string();
        let (start, end) = range.split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("start");
        let end = u64::from_str_radix(end, 16).expect("end");
        let mut buf = vec![0u8; (end - start) as usize];
        match mem.read_exact_at(&mut buf, start) {
            Ok(()) => out.push((label, buf)),
            // [vvar] and the like are not readable through mem.
            Err(_) => assert!(
                !matches!(label.as_str(), "[stack]" | "[heap]"),
                "cannot read {label} of {pid}"
            ),
        }
    }
    assert!(out.iter().any(|(l, _)| l == "[stack]"), "no stack read");
    out
}

/// Waits until `pid` is stopped (state T); false when it exited first.
fn wait_stopped(child: &mut Reaped, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.pid()));
        if let Ok(stat) = stat {
            // "PID (comm) STATE ...": the state follows the last ')'.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if state == Some("T") {
                return true;
            }
        }
        if let Some(c) = child.0.as_mut()
            && let Ok(Some(_)) = c.try_wait()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("random");
    hex::encode(b)
}

struct Scenario {
    f: Fixture,
    args: Vec<String>,
    needles: Vec<Needle>,
    image_hash: String,
}

/// A volume enrolled with or without a PIN, and every value that must not survive, each
/// obtained without sealroot.
fn scenario(pin: Option<&str>) -> Scenario {
    let f = Fixture::new();
    let mut extra = Vec::new();
    if let Some(pin) = pin {
        let file = f.write("pin", format!("{pin}\n").as_bytes());
        extra = vec![
            "--pin".to_string(),
            "--pin-file".to_string(),
            file.to_str().unwrap().to_string(),
        ];
    }
    f.enroll(&extra.iter().map(String::as_str).collect::<Vec<_>>());
    let secret = unseal_independently(&f, 0, pin.map(str::as_bytes));
    assert_eq!(secret.len(), 32, "sealroot seals 32 bytes");
    let passphrase = B64.encode(&secret).into_bytes();
    let token = export_token(&f.image, 0);
    let keyslot: u32 = token["keyslots"][0].as_str().unwrap().parse().unwrap();
    assert!(
        opens_keyslot(&f.image, keyslot, &passphrase),
        "base64 of the independently unsealed secret must open keyslot {keyslot}"
    );
    let volume_key = common::volume_key(&f.image, &f.passfile);
    assert_eq!(volume_key.len(), 64, "aes-xts-plain64, 512-bit key");
    let mut needles = vec![
        Needle {
            what: "unsealed secret",
            value: secret,
        },
        Needle {
            what: "keyslot passphrase",
            value: passphrase,
        },
        Needle {
            what: "volume key",
            value: volume_key,
        },
    ];
    let mut args: Vec<String> = ["unlock", f.image.to_str().unwrap(), "root", "--test"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(pin) = pin {
        let auth = common::pin_auth_value(&token, pin.as_bytes());
        needles.push(Needle {
            what: "PIN",
            value: pin.as_bytes().to_vec(),
        });
        needles.push(Needle {
            what: "PIN authValue",
            value: auth,
        });
        args.push("--pin-file".into());
        args.push(f.path("pin").to_str().unwrap().to_string());
    }
    args.push("--tcti".into());
    args.push(f.tpm.tcti());
    let image_hash = f.image_hash();
    Scenario {
        f,
        args,
        needles,
        image_hash,
    }
}

fn sealroot_command(program: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env_remove("SEALROOT_TCTI")
        .env("SEALROOT_LOG", "debug")
        .stdin(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Decodes the quoted strings of one strace line printed with -xx ("\x41\x42").
fn strace_strings(line: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let body = &after[..close];
        let hex: String = body.split("\\x").collect();
        if let Ok(bytes) = hex::decode(&hex) {
            out.extend_from_slice(&bytes);
        }
        rest = &after[close + 1..];
    }
    out
}

/// What the strace run shows.
struct Traced {
    /// Every byte written anywhere (files, stderr, sockets), per syscall.
    written: Vec<u8>,
    /// Paths opened for writing, created, renamed, removed or truncated.
    changed_paths: Vec<String>,
    /// Paths written to through a file descriptor (write/pwrite on a file's fd).
    files_written: Vec<String>,
    stderr: Vec<u8>,
    code: i32,
}

fn run_traced(s: &Scenario, cwd: &Path) -> Traced {
    let trace = s.f.path("strace.txt");
    let stderr = s.f.path("traced-stderr");
    let mut cmd = sealroot_command(Path::new("strace"), cwd);
    cmd.args(["-f", "-qq", "-xx", "-s", "1000000", "-e"])
        .arg("trace=%file,%desc,%network")
        .arg("-o")
        .arg(&trace)
        .arg(common::bin())
        .args(&s.args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = Reaped(Some(cmd.spawn().expect("strace must be installed")));
    let code = child.wait();
    let text = std::fs::read_to_string(&trace).expect("strace output");
    let mut written = Vec::new();
    let mut changed_paths = Vec::new();
    let mut files_written = Vec::new();
    let mut fds: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        // "PID syscall(args) = result"
        let Some(call) = line.split_whitespace().nth(1) else {
            continue;
        };
        let name = call.split('(').next().unwrap_or_default();
        let args = line.split_once('(').map_or("", |(_, a)| a);
        let first_arg = args.split([',', ')']).next().unwrap_or_default().trim();
        let result = line.rsplit(" = ").next().unwrap_or_default().trim();
        let path = || String::from_utf8_lossy(&strace_strings(args)).into_owned();
        match name {
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "sendto" | "sendmsg" => {
                let data = strace_strings(args);
                if let Some(p) = fds.get(first_arg) {
                    files_written.push(p.clone());
                }
                written.extend_from_slice(&data);
                written.push(0);
            }
            "open" | "openat" | "creat" => {
                let writable = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                    .iter()
                    .any(|f| args.contains(f));
                if (writable || name == "creat") && !result.starts_with('-') {
                    changed_paths.push(format!("{name} {}", path()));
                    if let Some(fd) = result.split_whitespace().next() {
                        fds.insert(fd.to_string(), path());
                    }
                }
            }
            "close" => {
                fds.remove(first_arg);
            }
            n if [
                "mkdir",
                "mkdirat",
                "unlink",
                "unlinkat",
                "rename",
                "renameat",
                "renameat2",
                "link",
                "linkat",
                "symlink",
                "symlinkat",
                "truncate",
                "ftruncate",
                "mknod",
                "mknodat",
                "fallocate",
            ]
            .contains(&n) =>
            {
                changed_paths.push(format!("{name} {}", path()));
            }
            _ => {}
        }
    }
    Traced {
        written,
        changed_paths,
        files_written,
        stderr: std::fs::read(&stderr).unwrap(),
        code,
    }
}

/// Every file below `dir` with its contents' hash.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), common::file_hash(&p));
            }
        }
    }
    out
}

fn measure(pin: Option<&str>, fence: bool) {
    measure_with(pin, fence, &[]);
}

fn measure_with(pin: Option<&str>, fence: bool, extra: &[&str]) {
    let started = Instant::now();
    let mut s = scenario(pin);
    if !fence {
        // tpm2-tss keeps the decrypted Unseal response in its buffer until the next command:
        // without the fence's PCR_Event after it, only sealroot's wipe removes it.
        s.args.insert(4, "--no-fence".into());
    }
    for (i, arg) in extra.iter().enumerate() {
        s.args.insert(4 + i, (*arg).into());
    }
    let mut findings = Findings::new();
    let cwd = tempfile::tempdir_in(s.f.dir.path()).unwrap();

    // 1. Under strace: what it writes, where.
    let before = snapshot(s.f.dir.path());
    let traced = run_traced(&s, cwd.path());
    assert_eq!(
        traced.code,
        0,
        "{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    // The trace saw the log lines and the TPM socket (Unseal's command code, 0x15E).
    assert!(contains(&traced.written, b"LUKS2 header loaded"));
    assert!(contains(&traced.written, &[0x00, 0x00, 0x01, 0x5e]));
    assert_eq!(contains(&traced.written, b"sealroot-fence-v1"), fence);
    record(
        &mut findings,
        "strace: bytes written",
        &s.needles,
        &traced.written,
    );
    record(
        &mut findings,
        "stderr (debug log)",
        &s.needles,
        &traced.stderr,
    );
    assert!(
        traced.files_written.is_empty(),
        "wrote to files: {:?}",
        traced.files_written
    );
    // libcryptsetup opens the image read-write to take its flock; nothing else is opened for
    // writing, created or removed.
    let image = s.f.image.to_str().unwrap();
    let unexpected: Vec<_> = traced
        .changed_paths
        .iter()
        .filter(|p| **p != format!("openat {image}"))
        .collect();
    assert!(unexpected.is_empty(), "file system changes: {unexpected:?}");
    let mut after = snapshot(s.f.dir.path());
    after.retain(|p, _| !p.ends_with("strace.txt") && !p.ends_with("traced-stderr"));
    assert_eq!(before, after, "files in the test's directory changed");
    assert_eq!(s.f.image_hash(), s.image_hash, "the image changed");

    // 2. Stopped before exit: memory, argv, environment. A reset (orderly: no strike) makes
    // the fence PCR zero again.
    s.f.tpm.orderly_reset();
    let tcti = s.f.tpm.tcti();
    s.args.pop();
    s.args.push(tcti);
    let marker = format!("residue-marker-{}", random_hex(12));
    let stderr = s.f.path("paused-stderr");
    let mut cmd = sealroot_command(&common::bin(), cwd.path());
    cmd.args(&s.args)
        .env("SEALROOT_TEST_PAUSE_BEFORE_EXIT", "1")
        .env("SEALROOT_RESIDUE_MARKER", &marker)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = Reaped(Some(cmd.spawn().expect("spawn sealroot")));
    assert!(
        wait_stopped(&mut child, Duration::from_secs(60)),
        "sealroot did not stop before exit: {}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    let pid = child.pid();
    let memory = read_memory(pid);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT).unwrap();
    let code = child.wait();
    let log = std::fs::read(&stderr).unwrap();
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&log));
    assert_eq!(s.f.tpm.read(15) != vec![0u8; 32], fence, "the fence");

    // Controls: the reader saw the stack and the environment.
    let stack: Vec<u8> = memory
        .iter()
        .filter(|(l, _)| l == "[stack]")
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(
        contains(&stack, marker.as_bytes()),
        "marker not on the stack"
    );
    assert!(
        contains(&environ, marker.as_bytes()),
        "marker not in environ"
    );

    let total: usize = memory.iter().map(|(_, b)| b.len()).sum();
    for (label, bytes) in &memory {
        record(&mut findings, &format!("memory {label}"), &s.needles, bytes);
    }
    record(&mut findings, "argv", &s.needles, &cmdline);
    record(&mut findings, "environ", &s.needles, &environ);
    record(&mut findings, "stderr (debug log)", &s.needles, &log);
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "files left in the working directory"
    );
    assert_eq!(s.f.image_hash(), s.image_hash, "the image changed");

    let what: Vec<&str> = s.needles.iter().map(|n| n.what).collect();
    eprintln!(
        "residue ({}{}): searched {} MiB in {} mappings, argv, environ, {} bytes written (strace), {} + {} bytes of debug log, for {what:?} ({} patterns: raw, hex, HEX, base64, 16-byte fragments): {} found; {:.1} s",
        if pin.is_some() { "PIN" } else { "no PIN" },
        if fence { "" } else { ", --no-fence" },
        total >> 20,
        memory.len(),
        traced.written.len(),
        traced.stderr.len(),
        log.len(),
        s.needles
            .iter()
            .map(|n| forms(&n.value).len())
            .sum::<usize>(),
        findings.values().map(Vec::len).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    assert!(findings.is_empty(), "secret residue: {findings:#?}");
}

#[test]
fn unlock_without_a_pin_leaves_no_secret_behind() {
    measure(None, true);
}

#[test]
fn unlock_without_the_fence_leaves_no_secret_behind() {
    measure(None, false);
}

/// The boot's way (`--wait`): the session started while waiting, the unseal on a second
/// thread while the header loads.
#[test]
fn unlock_at_boot_leaves_no_secret_behind() {
    measure_with(None, true, &["--wait", "5"]);
}

#[test]
fn unlock_with_a_pin_leaves_no_secret_behind() {
    let pin = format!("P{}", random_hex(8));
    measure(Some(&pin), true);
}

#[test]
fn the_search_finds_every_form_of_a_planted_secret() {
    let value: Vec<u8> = (0u8..64).map(|b| b.wrapping_mul(37) ^ 0xa5).collect();
    let needles = [Needle {
        what: "planted",
        value: value.clone(),
    }];
    for (form, bytes) in forms(&value) {
        let mut haystack = vec![0x11u8; 4096];
        haystack.splice(1000..1000, bytes.iter().copied());
        haystack.splice(3000..3000, bytes.iter().copied());
        let found = search(&needles, &haystack);
        let this = format!("planted ({form})");
        assert!(
            found.iter().any(|(w, c)| *w == this && *c >= 2),
            "{form} not found twice: {found:?}"
        );
    }
    assert!(search(&needles, &[0x11u8; 4096]).is_empty());
}

/// The reader and the search, on a process that keeps a PIN and does not wipe it: a shell
/// that read it into a variable, stopped the same way.
#[test]
fn the_memory_reader_finds_a_pin_a_process_did_not_wipe() {
    let dir = tempfile::tempdir().unwrap();
    let pin = format!("P{}", random_hex(8));
    let file = dir.path().join("pin");
    std::fs::write(&file, format!("{pin}\n")).unwrap();
    let child = Command::new("sh")
        .arg("-c")
        .arg("IFS= read -r p < \"$1\"; kill -STOP $$; echo \"${#p}\" >/dev/null")
        .arg("sh")
        .arg(&file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(Some(child));
    assert!(wait_stopped(&mut child, Duration::from_secs(10)));
    let memory = read_memory(child.pid());
    let needles = [Needle {
        what: "PIN",
        value: pin.into_bytes(),
    }];
    let found: usize = memory
        .iter()
        .flat_map(|(_, b)| search(&needles, b))
        .map(|(_, c)| c)
        .sum();
    assert!(found >= 1, "the PIN in the shell's memory was not found");
    // The file the shell read is the test's own: sealroot's run is what is measured.
    drop(child);
    let _ = std::fs::remove_file(&file);
}
