//! Shared fixtures: a private swtpm per test, LUKS2 image files, and running the binary.
//! Every process started here is stopped by its PID when its guard drops, also when the
//! test panics.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The binary under test: `$SEALROOT_BIN` (e.g. the static build) or cargo's build.
pub fn bin() -> PathBuf {
    std::env::var_os("SEALROOT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sealroot")))
}

pub struct Swtpm {
    pub state: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = a.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port`
/// (/proc/net/tcp names the socket's inode; the process's fds name the sockets it holds).
fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let wanted = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[1] == wanted && f[3] == LISTEN).then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

impl Swtpm {
    /// A factory-fresh TPM on its own state dir inside `dir`.
    pub fn start(dir: &Path) -> Swtpm {
        let state = dir.join(format!("tpm-{}", rand_suffix()));
        std::fs::create_dir_all(&state).expect("state dir");
        Swtpm::start_on(state)
    }

    /// Starts swtpm on an existing state dir (a TPM reset when the previous one stopped).
    pub fn start_on(state: PathBuf) -> Swtpm {
        for _ in 0..20 {
            let port = free_port_pair();
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", state.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm must be installed (make deps)");
            let mut tpm = Swtpm {
                state: state.clone(),
                port,
                child: Some(child),
            };
            if tpm.wait_ready() {
                return tpm;
            }
            tpm.stop(); // lost the port race: try another pair
        }
        panic!("swtpm did not start");
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Another test's swtpm may hold the port this one failed to bind: only a
                // listener owned by our child counts, or this test would share a TPM.
                return self
                    .child
                    .as_ref()
                    .is_some_and(|c| listens_on(c.id(), self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Power-cycles the TPM: PCRs return to their reset values, persistent objects stay.
    pub fn reset(&mut self) {
        self.stop();
        let next = Swtpm::start_on(self.state.clone());
        self.port = next.port;
        self.child = next.into_child();
    }

    /// The same after an orderly TPM2_Shutdown: a reset that costs no dictionary-attack
    /// strike (a TPM stopped without one counts a strike when a PIN object was used).
    pub fn orderly_reset(&mut self) {
        self.tools(&["tpm2_shutdown", "-c"]);
        self.reset();
    }

    fn into_child(mut self) -> Option<Child> {
        self.child.take()
    }

    /// Runs a tpm2-tools command against this TPM: an implementation independent of
    /// sealroot's, so the tests do not check sealroot against itself. Returns stdout.
    pub fn tools(&self, args: &[&str]) -> String {
        Tools(&self.tcti()).tools(args)
    }

    /// Makes the TCG RSA-2048 SRK template persistent at 0x81000001 with tpm2-tools (before
    /// anything else creates an SRK there) and writes its TPM2B_PUBLIC, as
    /// `tpm2_readpublic -o` does, to `out`.
    pub fn provision_rsa_srk(&self, out: &Path) {
        let ctx = out.with_extension("ctx");
        let ctx = ctx.to_str().expect("utf8");
        self.tools(&[
            "tpm2_createprimary",
            "-C",
            "o",
            "-G",
            "rsa2048:aes128cfb",
            "-g",
            "sha256",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt",
            "-c",
            ctx,
        ]);
        self.tools(&["tpm2_evictcontrol", "-C", "o", "-c", ctx, "0x81000001"]);
        self.tools(&["tpm2_flushcontext", "-t"]); // raw swtpm: no resource manager
        let out = out.to_str().expect("utf8");
        self.tools(&["tpm2_readpublic", "-c", "0x81000001", "-o", out]);
    }

    /// TPM2_PT_LOCKOUT_COUNTER, read with tpm2-tools: the dictionary-attack strikes so far.
    #[allow(dead_code)]
    pub fn lockout_counter(&self) -> u64 {
        let out = self.tools(&["tpm2_getcap", "properties-variable"]);
        for l in out.lines() {
            if l.trim_start().starts_with("TPM2_PT_LOCKOUT_COUNTER") {
                let value = l.split(':').nth(1).map(str::trim).unwrap_or_default();
                return u64::from_str_radix(value.trim_start_matches("0x"), 16).expect("counter");
            }
        }
        panic!("no lockout counter in: {out}");
    }

    /// Extends `pcr` in the sha256 bank (what a firmware or bootloader would do).
    pub fn extend(&self, pcr: u32, data: &[u8]) {
        self.extend_banks(pcr, &[sealroot::tpm::pcr::PcrBank::Sha256], data);
    }

    /// Extends `pcr` in each of `banks` with the bank's digest of `data` (TPM2_PCR_Extend).
    pub fn extend_banks(&self, pcr: u32, banks: &[sealroot::tpm::pcr::PcrBank], data: &[u8]) {
        let digests: Vec<String> = banks
            .iter()
            .map(|b| format!("{}={}", b.name(), hex::encode(b.hash(data))))
            .collect();
        self.tools(&["tpm2_pcrextend", &format!("{pcr}:{}", digests.join(","))]);
    }

    pub fn read(&self, pcr: u32) -> Vec<u8> {
        self.read_bank(sealroot::tpm::pcr::PcrBank::Sha256, pcr)
    }

    /// One PCR's value, read with tpm2_pcrread ("  7 : 0x…").
    pub fn read_bank(&self, bank: sealroot::tpm::pcr::PcrBank, pcr: u32) -> Vec<u8> {
        let out = self.tools(&["tpm2_pcrread", &format!("{}:{pcr}", bank.name())]);
        let value = out
            .lines()
            .find_map(|l| {
                let (index, value) = l.split_once(':')?;
                (index.trim() == pcr.to_string()).then(|| value.trim().trim_start_matches("0x"))
            })
            .expect("tpm2_pcrread printed the PCR");
        hex::decode(value).expect("hex PCR value")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).expect("random");
    hex::encode(b)
}

pub const PASSPHRASE: &str = "correct horse battery staple";

/// A test: its temp dir, its TPM, one LUKS2 image with passphrase `PASSPHRASE` in slot 0.
pub struct Fixture {
    pub dir: TempDir,
    pub tpm: Swtpm,
    pub image: PathBuf,
    pub passfile: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let tpm = Swtpm::start(dir.path());
        let passfile = dir.path().join("passphrase");
        std::fs::write(&passfile, PASSPHRASE).expect("write passphrase");
        let image = make_image(dir.path(), "disk.img", &passfile);
        Fixture {
            dir,
            tpm,
            image,
            passfile,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    /// Runs sealroot against this fixture's TPM.
    pub fn run(&self, args: &[&str]) -> Run {
        let tcti = self.tpm.tcti();
        let mut full: Vec<&str> = args.to_vec();
        if takes_tcti(args) {
            full.push("--tcti");
            full.push(&tcti);
        }
        run(&full)
    }

    pub fn enroll(&self, extra: &[&str]) -> Run {
        let img = self.image.to_str().expect("utf8");
        let pf = self.passfile.to_str().expect("utf8");
        let mut args = vec!["enroll", img, "--unlock-key-file", pf];
        args.extend_from_slice(extra);
        let r = self.run(&args);
        assert_eq!(r.code, 0, "enroll failed: {}", r.stderr);
        r
    }

    /// Enrolls with PIN `pin`, then puts the TPM in dictionary-attack lockout (one try
    /// allowed, 600 s to recover) with one wrong PIN. Returns the right PIN's file.
    pub fn enroll_pin_then_lock_out(&self, pin: &str) -> PathBuf {
        let file = self.write("pin", format!("{pin}\n").as_bytes());
        self.enroll(&["--pin", "--pin-file", file.to_str().expect("utf8")]);
        self.tpm.tools(&[
            "tpm2_dictionarylockout",
            "--setup-parameters",
            "--max-tries=1",
            "--recovery-time=600",
            "--lockout-recovery-time=600",
        ]);
        let wrong = self.write("wrong", b"wrong-pin\n");
        let r = self.unlock_test(&["--no-fence", "--pin-file", wrong.to_str().expect("utf8")]);
        assert_eq!(r.code, 6, "a wrong PIN: {}", r.stderr);
        file
    }

    pub fn unlock_test(&self, extra: &[&str]) -> Run {
        let img = self.image.to_str().expect("utf8");
        let mut args = vec!["unlock", img, "root", "--test"];
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// `recover --test` with `key` typed (from a file, with a newline as a user would).
    pub fn recover_test(&self, key: &str) -> Run {
        let file = self.write("typed", format!("{key}\n").as_bytes());
        let img = self.image.to_str().expect("utf8");
        let file = file.to_str().expect("utf8");
        self.run(&["recover", img, "root", "--test", "--key-file", file])
    }

    /// The SRK Name `status` prints for the image's token (what an initrd pins).
    pub fn srk_name(&self) -> String {
        let status = self.run(&["status", self.image.to_str().expect("utf8")]);
        status
            .stdout
            .split("Name ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("status names the SRK")
            .to_string()
    }

    pub fn image_hash(&self) -> String {
        file_hash(&self.image)
    }
}

fn takes_tcti(args: &[&str]) -> bool {
    matches!(
        args.first(),
        Some(&"enroll")
            | Some(&"unlock")
            | Some(&"status")
            | Some(&"update-approvals")
            | Some(&"fence")
            | Some(&"initrd-config")
            | Some(&"srk-public")
            | Some(&"first-boot")
            | Some(&"revoke")
            | Some(&"predict")
    ) && !args.contains(&"--tcti")
}

pub fn make_image(dir: &Path, name: &str, passfile: &Path) -> PathBuf {
    make_image_of(dir, name, passfile, 8 << 20)
}

/// The same, `size` bytes (sparse).
pub fn make_image_of(dir: &Path, name: &str, passfile: &Path, size: u64) -> PathBuf {
    let image = dir.join(name);
    let f = std::fs::File::create(&image).expect("create image");
    f.set_len(size).expect("size image");
    drop(f);
    let out = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "-q",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            // Room for 15 keyslots of 512-bit keys, in a small image that hashes fast.
            "--luks2-keyslots-size",
            "4M",
            "--key-file",
        ])
        .arg(passfile)
        .arg(&image)
        .output()
        .expect("cryptsetup must be installed (make deps)");
    assert!(
        out.status.success(),
        "luksFormat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// Runs a helper tool (cryptsetup, age, …) that must succeed; its output.
pub fn checked(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a helper tool (make deps)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn file_hash(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read image")))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary in a new session (no controlling terminal), so nothing can block on a
/// prompt; stdin is empty.
pub fn run(args: &[&str]) -> Run {
    run_with_stdin(args, b"")
}

pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Run {
    run_with_env(args, stdin, &[])
}

/// The binary with these arguments, without SEALROOT_TCTI from the test's environment, its
/// output piped, in a new session (no controlling terminal: nothing can block on a prompt).
pub fn sealroot_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("SEALROOT_TCTI")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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

/// The same with extra environment variables (what an initrd may inherit).
pub fn run_with_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
    let mut cmd = sealroot_command(args);
    cmd.envs(env.iter().copied()).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sealroot");
    if let Some(mut si) = child.stdin.take() {
        let _ = si.write_all(stdin);
    }
    let out: Output = child.wait_with_output().expect("wait sealroot");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !r.stderr.contains("panicked"),
        "sealroot panicked: {}",
        r.stderr
    );
    r
}

/// cryptsetup token export/import, to read and tamper with tokens as another tool would.
pub fn export_token(image: &Path, id: u32) -> serde_json::Value {
    let out = Command::new("cryptsetup")
        .args(["token", "export", "--token-id", &id.to_string()])
        .arg(image)
        .output()
        .expect("cryptsetup");
    assert!(out.status.success(), "token export failed");
    serde_json::from_slice(&out.stdout).expect("token JSON")
}

pub fn replace_token(image: &Path, id: u32, json: &serde_json::Value) {
    let mut child = Command::new("cryptsetup")
        .args([
            "token",
            "import",
            "--token-replace",
            "--token-id",
            &id.to_string(),
        ])
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(json.to_string().as_bytes())
        .expect("write token");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "token import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A logging proxy between a TCTI and swtpm: what a bus sniffer or an interposer sees.
/// Forwards the command port (and the control port next to it) and records every byte
/// sent to the TPM as one command per write and every byte returned.
pub struct BusCapture {
    pub port: u16,
    commands: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    responses: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl BusCapture {
    pub fn start(tpm: &Swtpm) -> BusCapture {
        use std::sync::{Arc, Mutex};
        let (cmd, ctl) = loop {
            let a = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = a.local_addr().expect("addr").port();
            if port < u16::MAX
                && let Ok(b) = TcpListener::bind(("127.0.0.1", port + 1))
            {
                break (a, b);
            }
        };
        let port = cmd.local_addr().expect("addr").port();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let responses = Arc::new(Mutex::new(Vec::new()));
        for (listener, target, record) in [(cmd, tpm.port, true), (ctl, tpm.port + 1, false)] {
            let (commands, responses) = (commands.clone(), responses.clone());
            std::thread::spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let (commands, responses) = (commands.clone(), responses.clone());
                    // TPM responses, back to the client.
                    std::thread::spawn(move || {
                        pump(s2, c2, |b| {
                            if record {
                                responses.lock().expect("lock").extend_from_slice(b)
                            }
                        })
                    });
                    pump(client, server, |b| {
                        if record {
                            commands.lock().expect("lock").push(b.to_vec())
                        }
                    });
                }
            });
        }
        BusCapture {
            port,
            commands,
            responses,
        }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Everything that crossed the bus, both ways.
    pub fn all_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.commands.lock().expect("lock").concat();
        out.extend_from_slice(&self.responses.lock().expect("lock"));
        out
    }

    /// Each command with its response, framed by their size fields (the client sends a
    /// command and waits for its response before the next).
    pub fn exchanges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let commands = frames(&self.commands.lock().expect("lock").concat());
        let responses = frames(&self.responses.lock().expect("lock"));
        commands.into_iter().zip(responses).collect()
    }

    /// The command codes sent (bytes 6..10 of each command), in order.
    pub fn command_codes(&self) -> Vec<u32> {
        self.commands
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| c.len() >= 10)
            .map(|c| u32::from_be_bytes([c[6], c[7], c[8], c[9]]))
            .collect()
    }
}

/// TPM commands or responses, one after another, split by their header's size field.
fn frames(mut stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while stream.len() >= 10 {
        let size = u32::from_be_bytes([stream[2], stream[3], stream[4], stream[5]]) as usize;
        let size = size.clamp(10, stream.len());
        out.push(stream[..size].to_vec());
        stream = &stream[size..];
    }
    out
}

fn pump(mut from: TcpStream, mut to: TcpStream, mut record: impl FnMut(&[u8])) {
    use std::io::Read;
    let mut buf = [0u8; 8192];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        record(&buf[..n]);
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// The secret a sealroot token seals, unsealed with tpm2-tools alone (Load under the
/// recorded SRK handle, a policy session with PolicyPCR over the token's PCRs and, with a
/// PIN, PolicyAuthValue and the authValue derived here from the documented formula), so a
/// test's notion of the secret does not come from sealroot. Every handle is flushed.
pub fn unseal_independently(f: &Fixture, token_id: u32, pin: Option<&[u8]>) -> Vec<u8> {
    unseal_independently_via(f, &f.tpm.tcti(), token_id, pin)
}

/// The same through `tcti` (a `BusCapture`: tpm2-tools' session is neither salted nor
/// encrypted, so the secret crosses that bus in clear).
pub fn unseal_independently_via(
    f: &Fixture,
    tcti: &str,
    token_id: u32,
    pin: Option<&[u8]>,
) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD as B64;
    let token = export_token(&f.image, token_id);
    let blob = B64
        .decode(token["tpm2_blob"].as_str().expect("tpm2_blob"))
        .expect("base64 blob");
    let private_len = 2 + usize::from(u16::from_be_bytes([blob[0], blob[1]]));
    let dir = tempfile::tempdir_in(f.dir.path()).expect("tempdir");
    let file = |name: &str| dir.path().join(name).to_str().expect("utf8").to_string();
    std::fs::write(file("priv"), &blob[..private_len]).expect("write");
    std::fs::write(file("pub"), &blob[private_len..]).expect("write");
    let pcrs: Vec<String> = token["tpm2_pcrs"]
        .as_array()
        .expect("tpm2_pcrs")
        .iter()
        .map(|p| p.to_string())
        .collect();
    let handle = token["tpm2_srk_handle"].as_str().expect("handle");
    let (obj, session, out) = (file("obj.ctx"), file("session.ctx"), file("secret"));
    let t = Tools(tcti);
    t.tools(&[
        "tpm2_load",
        "-C",
        handle,
        "-u",
        &file("pub"),
        "-r",
        &file("priv"),
        "-c",
        &obj,
    ]);
    t.tools(&["tpm2_startauthsession", "--policy-session", "-S", &session]);
    let selection = format!("sha256:{}", pcrs.join(","));
    t.tools(&["tpm2_policypcr", "-S", &session, "-l", &selection]);
    let mut auth = format!("session:{session}");
    if let Some(pin) = pin {
        t.tools(&["tpm2_policyauthvalue", "-S", &session]);
        auth.push_str(&format!(
            "+hex:{}",
            hex::encode(pin_auth_value(&token, pin))
        ));
    }
    t.tools(&["tpm2_unseal", "-c", &obj, "-p", &auth, "-o", &out]);
    t.tools(&["tpm2_flushcontext", &session]);
    t.tools(&["tpm2_flushcontext", "-t"]);
    std::fs::read(&out).expect("unsealed secret")
}

/// tpm2-tools against the TPM behind a TCTI.
struct Tools<'a>(&'a str);

impl Tools<'_> {
    /// Runs a tpm2-tools command, which must succeed; its stdout.
    fn tools(&self, args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", self.0)
            .output()
            .expect("run tpm2-tools");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A sealroot token's authValue for `pin`, from the formula the README documents:
/// trim0(SHA-256(base64(PBKDF2-HMAC-SHA256(PIN, salt, iterations, 32)))), written here
/// without sealroot's code.
pub fn pin_auth_value(token: &serde_json::Value, pin: &[u8]) -> Vec<u8> {
    use base64::engine::general_purpose::STANDARD as B64;
    let salt = B64
        .decode(token["tpm2_pin_salt"].as_str().expect("salt"))
        .expect("base64 salt");
    let iterations = token["tpm2_pin_iterations"].as_u64().expect("iterations") as u32;
    let mut stretched = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(pin, &salt, iterations, &mut stretched);
    let digest = Sha256::digest(B64.encode(stretched).as_bytes());
    let end = digest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    digest[..end].to_vec()
}

/// The LUKS volume key as cryptsetup dumps it with `passfile` (independent of sealroot).
pub fn volume_key(image: &Path, passfile: &Path) -> Vec<u8> {
    let out = checked(
        Command::new("cryptsetup")
            .args([
                "luksDump",
                "--dump-volume-key",
                "--batch-mode",
                "--key-file",
            ])
            .arg(passfile)
            .arg(image),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let dump = text.split("MK dump:").nth(1).expect("MK dump in luksDump");
    let hex: String = dump.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex::decode(hex).expect("hex volume key")
}

/// Whether `passphrase` opens `keyslot` of `image`, asked of cryptsetup (passed on stdin).
pub fn opens_keyslot(image: &Path, keyslot: u32, passphrase: &[u8]) -> bool {
    let mut child = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file", "-", "--key-slot"])
        .arg(keyslot.to_string())
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cryptsetup");
    let _ = child.stdin.take().expect("stdin").write_all(passphrase);
    child.wait().expect("wait").success()
}

/// A child process killed (SIGKILL) and reaped by its PID when the guard drops, also when
/// the test panics.
pub struct Reaped(pub Option<Child>);

impl Reaped {
    pub fn pid(&self) -> i32 {
        self.0.as_ref().expect("child").id() as i32
    }

    /// Waits for the exit; the code (-1 when killed by a signal).
    pub fn wait(&mut self) -> i32 {
        let mut c = self.0.take().expect("child");
        c.wait().expect("wait").code().unwrap_or(-1)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One value that must not survive, by name.
pub struct Needle {
    pub what: &'static str,
    pub value: Vec<u8>,
}

/// The forms a value can take in memory or a log: raw, hex (either case), base64 (without
/// padding, which depends on the alignment in a larger text), and for keys of 32 bytes or
/// more every 16-byte fragment (half an AES-256 key, an XTS half-key's first round key).
pub fn forms(value: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), value.to_vec()),
        ("hex".to_string(), hex::encode(value).into_bytes()),
        ("HEX".to_string(), hex::encode_upper(value).into_bytes()),
        (
            "base64".to_string(),
            base64::engine::general_purpose::STANDARD
                .encode(value)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec(),
        ),
    ];
    if value.len() >= 32 {
        for start in (0..value.len()).step_by(16) {
            let end = (start + 16).min(value.len());
            out.push((format!("raw[{start}..{end}]"), value[start..end].to_vec()));
        }
    }
    out
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    memchr::memmem::find_iter(haystack, needle).count()
}

/// Every (needle, form) found in `haystack`, with its number of copies.
pub fn search(needles: &[Needle], haystack: &[u8]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for n in needles {
        for (form, bytes) in forms(&n.value) {
            let c = count(haystack, &bytes);
            if c > 0 {
                found.push((format!("{} ({form})", n.what), c));
            }
        }
    }
    found
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// /dev/null, /dev/random and /dev/urandom in a root made for a chroot (what
/// libcryptsetup and a shell need).
#[allow(dead_code)]
pub fn make_dev_nodes(root: &Path) {
    std::fs::create_dir_all(root.join("dev")).expect("dev");
    for (name, minor) in [("null", 3), ("random", 8), ("urandom", 9)] {
        nix::sys::stat::mknod(
            &root.join("dev").join(name),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, minor),
        )
        .expect("mknod");
    }
}

/// The Debian 13 packages of the root `trixie_root` makes: systemd-cryptenroll 257 (in
/// systemd-cryptsetup) and the tpm2-tss libraries systemd dlopens (esys, rc, mu; esys brings
/// the TCTIs, swtpm's among them). Found by trying: without esys or rc, systemd-cryptenroll
/// says "TPM2 support not installed".
pub const TRIXIE_PACKAGES: &[&str] = &[
    "systemd-cryptsetup",
    "libtss2-esys-3.0.2-0t64",
    "libtss2-rc0t64",
    "libtss2-mu-4.0.1-0t64",
];

/// A Debian 13 ("trixie") root with `TRIXIE_PACKAGES`, for the newer systemd Debian 12 lacks:
/// made once per test process by scripts/debian-root.sh into target/debian-roots/trixie (a
/// debootstrap, cached as a tarball keyed by its inputs; the script's locks make parallel
/// test binaries safe). Panics with the script's messages when it cannot be made: such tests
/// fail, they are never skipped.
pub fn trixie_root() -> PathBuf {
    // The outcome is kept either way: a failure is reported by every test that needs the
    // root, without running debootstrap again for each.
    static ROOT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = manifest.join("target/debian-roots/trixie");
        let started = Instant::now();
        let r = Command::new(manifest.join("scripts/debian-root.sh"))
            .arg("trixie")
            .arg(&out)
            .args(TRIXIE_PACKAGES)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/debian-root.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&r.stderr);
        if !r.status.success() {
            return Err(format!(
                "the Debian 13 root for systemd-cryptenroll could not be made \
                 (scripts/debian-root.sh trixie {}; needs root, debootstrap and the mirror):\n{stderr}",
                out.display()
            ));
        }
        eprint!("{stderr}");
        eprintln!(
            "trixie root ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(out)
    });
    root.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Where `trixie_systemd_cryptenroll` shows the image's directory inside the root.
pub const IMAGE_DIR_IN_ROOT: &str = "/mnt/image";

/// Runs `systemd-cryptenroll ARGS IMAGE` from `root` (see `trixie_root`) on the host's image
/// file. It runs in a private mount namespace (`unshare --mount`) and a chroot: the image's
/// directory is bind-mounted at `IMAGE_DIR_IN_ROOT` (arguments naming files in it are
/// rewritten to that path), /proc is mounted, /dev is a tmpfs with only null, zero, full,
/// random and urandom (never the host's TPM), /tmp and /run are tmpfs. The mounts exist only
/// in that namespace: nothing shows on the host, and they go when the process ends, also when
/// it or the test is killed (it gets SIGKILL when the test's thread dies). Nothing is written
/// into the root. Secrets go through `env` (PASSWORD, NEWPIN, …) or files, never argv; the
/// host's environment is not passed on. A TPM, when one is used, is reached through a TCTI
/// over TCP (`--tpm2-device=swtpm:host=127.0.0.1,port=P`).
pub fn trixie_systemd_cryptenroll(
    root: &Path,
    image: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    const SETUP: &str = r#"set -eu
root=$1 dir=$2
shift 2
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom; do
    : >"$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
for d in tmp run mnt; do mount -t tmpfs -o mode=0755 tmpfs "$root/$d"; done
mkdir "$root/mnt/image"
mount --bind "$dir" "$root/mnt/image"
exec chroot "$root" "$@"
"#;
    let dir = image
        .parent()
        .filter(|d| d.is_absolute())
        .expect("the image's path is absolute");
    let name = image.file_name().expect("image file name");
    let host_prefix = format!("{}/", dir.display());
    let inner_prefix = format!("{IMAGE_DIR_IN_ROOT}/");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        SETUP,
        "sh",
    ])
    .arg(root)
    .arg(dir)
    .arg("/usr/bin/systemd-cryptenroll")
    .args(args.iter().map(|a| a.replace(&host_prefix, &inner_prefix)))
    .arg(Path::new(IMAGE_DIR_IN_ROOT).join(name))
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("LANG", "C.UTF-8")
    .envs(env.iter().copied())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: setsid and prctl are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            // No controlling terminal: a missing secret fails instead of prompting.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.output().expect("run unshare (util-linux)")
}
