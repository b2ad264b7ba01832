//! Reading passphrases and PINs: from a file (or `-` for stdin, or `/dev/fd/N`), or from the
//! terminal without echo. Never from argv or the environment.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
use zeroize::Zeroize;

use crate::error::Error;
use crate::secret::Secret;

/// Longest secret accepted (cryptsetup's limit for interactive passphrases is 512).
pub const MAX_SECRET: usize = 8192;

/// Exact file contents (as cryptsetup's --key-file): no newline is stripped.
pub fn read_key_file(path: &Path) -> Result<Secret, Error> {
    read_path(path)
}

/// A PIN or typed passphrase stored in a file: one trailing newline is not part of it.
pub fn read_line_file(path: &Path) -> Result<Secret, Error> {
    let mut s = read_path(path)?;
    s.trim_end_matches(|b| b == b'\n' || b == b'\r');
    Ok(s)
}

fn read_path(path: &Path) -> Result<Secret, Error> {
    let shown = path.display();
    let result = if path == Path::new("-") {
        Secret::read_from(&mut std::io::stdin().lock(), MAX_SECRET)
    } else {
        File::open(path).and_then(|mut f| Secret::read_from(&mut f, MAX_SECRET))
    };
    result.map_err(|e| Error::Usage(format!("cannot read {shown}: {e}")))
}

pub fn terminal_available() -> bool {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}

/// Prompts on the controlling terminal and reads one line with echo off.
pub fn read_terminal(prompt: &str) -> Result<Secret, Error> {
    let no_tty = |e: std::io::Error| {
        Error::Usage(format!(
            "no terminal to ask on ({e}); pass the secret in a file instead"
        ))
    };
    let mut tty = File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(no_tty)?;
    let saved = tcgetattr(tty.as_fd()).map_err(|e| no_tty(e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tty.write_all(prompt.as_bytes()).map_err(no_tty)?;
    tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &quiet).map_err(|e| no_tty(e.into()))?;
    let read = read_line(&mut tty);
    // Restore echo whatever happened, before reporting anything.
    let _ = tcsetattr(tty.as_fd(), SetArg::TCSAFLUSH, &saved);
    read.map_err(no_tty)
}

fn read_line(tty: &mut File) -> std::io::Result<Secret> {
    let mut s = Secret::with_capacity(MAX_SECRET);
    let mut byte = [0u8; 1];
    loop {
        match tty.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if !s.push(byte[0]) {
                    byte.zeroize();
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "input too long",
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    byte.zeroize();
    s.trim_end_matches(|b| b == b'\r');
    Ok(s)
}

/// Runs `prog PROMPT` (an askpass helper such as /lib/cryptsetup/askpass, which asks on the
/// console or through plymouth) and takes one line of its stdout. The secret crosses only a
/// pipe.
pub fn read_askpass(prog: &Path, prompt: &str) -> Result<Secret, Error> {
    let fail = |e: std::io::Error| Error::Usage(format!("cannot run {}: {e}", prog.display()));
    let mut child = std::process::Command::new(prog)
        .arg(prompt)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let read = match child.stdout.take() {
        Some(mut out) => Secret::read_from(&mut out, MAX_SECRET),
        None => Ok(Secret::with_capacity(1)),
    };
    let status = child.wait().map_err(fail)?;
    let mut s = read.map_err(fail)?;
    if !status.success() {
        return Err(Error::Usage(format!("{} was cancelled", prog.display())));
    }
    s.trim_end_matches(|b| b == b'\n' || b == b'\r');
    Ok(s)
}
