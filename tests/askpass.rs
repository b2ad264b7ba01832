//! The dracut module's console askpass (dracut/modules.d/91sealroot/sealroot-askpass.sh),
//! run on a pseudo-terminal bound over /dev/console in a private mount namespace: a PIN
//! keeps its blanks, and echo comes back when the prompt is interrupted.
//! Needs root (mount namespace).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::pty::openpty;
use nix::sys::termios::{LocalFlags, tcgetattr};

const SCRIPT: &str = "dracut/modules.d/91sealroot/sealroot-askpass.sh";

struct Console {
    master: std::fs::File,
    slave: OwnedFd,
    _bin: tempfile::TempDir,
}

/// Starts the askpass with the pty's slave as /dev/console and a PATH holding only sh and
/// stty (so neither plymouth nor systemd-ask-password is found).
fn start() -> Option<(Console, Child)> {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root (mount namespace)");
        return None;
    }
    let pty = openpty(None, None).expect("openpty");
    let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).expect("ttyname");
    let bin = tempfile::tempdir().unwrap();
    for tool in ["sh", "stty"] {
        let real = which(tool);
        std::os::unix::fs::symlink(real, bin.path().join(tool)).unwrap();
    }
    let script = std::fs::canonicalize(SCRIPT).unwrap();
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$1" /dev/console && shift && PATH=$1 && shift && exec sh "$@""#)
        .arg("sh")
        .arg(&slave_path)
        .arg(bin.path())
        .arg(&script)
        .arg("PIN: ")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    let master = std::fs::File::from(pty.master);
    Some((
        Console {
            master,
            slave: pty.slave,
            _bin: bin,
        },
        child,
    ))
}

fn which(tool: &str) -> PathBuf {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not found"))
}

impl Console {
    /// Reads the terminal until `want` appeared (or 10 s passed).
    fn wait_for(&mut self, want: &str) -> String {
        nix::fcntl::fcntl(
            &self.master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        while !seen.contains(want) && Instant::now() < deadline {
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        assert!(seen.contains(want), "the console showed: {seen:?}");
        // The prompt is printed just before echo is turned off.
        std::thread::sleep(Duration::from_millis(300));
        seen
    }

    fn echo_on(&self) -> bool {
        tcgetattr(&self.slave)
            .expect("tcgetattr")
            .local_flags
            .contains(LocalFlags::ECHO)
    }
}

#[test]
fn a_pin_keeps_its_blanks() {
    let Some((mut console, child)) = start() else {
        return;
    };
    console.wait_for("PIN: ");
    console.master.write_all(b"  12 34 \n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "  12 34 \n");
    assert!(console.echo_on(), "echo left off");
}

#[test]
fn echo_comes_back_when_the_prompt_is_interrupted() {
    let Some((mut console, mut child)) = start() else {
        return;
    };
    console.wait_for("PIN: ");
    assert!(!console.echo_on(), "echo was on while asking for the PIN");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        console.echo_on(),
        "echo left off after an interrupted prompt"
    );
}
