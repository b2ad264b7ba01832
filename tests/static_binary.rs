//! The static build (`make test` sets SEALROOT_BIN=target/static/sealroot): it depends on
//! nothing but itself — no interpreter, no shared objects — and does its whole job in an
//! empty root holding only the binary, the disk image and three /dev nodes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Fixture;

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

/// The binary under test when it is the static build; None (test skipped, with a line
/// saying so) for the ordinary development build.
fn static_binary() -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("SEALROOT_BIN")?);
    if program_header_types(&bin).contains(&PT_INTERP) {
        eprintln!("skipped: SEALROOT_BIN is a dynamic executable");
        return None;
    }
    Some(bin)
}

/// p_type of every ELF64 program header.
fn program_header_types(path: &Path) -> Vec<u32> {
    let elf = std::fs::read(path).expect("read binary");
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let o = phoff + i * size;
            u32::from_le_bytes(elf[o..o + 4].try_into().unwrap())
        })
        .collect()
}

#[test]
fn static_binary_needs_no_loader_and_no_shared_objects() {
    let Some(bin) = static_binary() else {
        eprintln!("skipped: set SEALROOT_BIN to the static build (make test does)");
        return;
    };
    let types = program_header_types(&bin);
    assert!(!types.contains(&PT_INTERP), "has an ELF interpreter");
    assert!(!types.contains(&PT_DYNAMIC), "has a dynamic section");
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let said =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(said.contains("not a dynamic executable"), "ldd: {said}");
}

#[test]
fn static_binary_works_in_an_empty_root() {
    let Some(bin) = static_binary() else {
        eprintln!("skipped: set SEALROOT_BIN to the static build (make test does)");
        return;
    };
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: chroot needs root");
        return;
    }
    let f = Fixture::new();
    let root = f.path("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::copy(&bin, root.join("sealroot")).unwrap();
    std::fs::copy(&f.image, root.join("disk.img")).unwrap();
    std::fs::copy(&f.passfile, root.join("passphrase")).unwrap();
    common::make_dev_nodes(&root);
    let listing: Vec<String> = walk(&root);
    assert_eq!(
        listing,
        [
            "dev",
            "dev/null",
            "dev/random",
            "dev/urandom",
            "disk.img",
            "passphrase",
            "sealroot"
        ]
    );
    let tcti = f.tpm.tcti();
    let in_root = |args: &[&str]| {
        let out = Command::new("/usr/sbin/chroot")
            .arg(&root)
            .arg("/sealroot")
            .args(args)
            .env_clear()
            .output()
            .expect("chroot");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    };
    let (code, err) = in_root(&[
        "enroll",
        "/disk.img",
        "--unlock-key-file",
        "/passphrase",
        "--tcti",
        &tcti,
    ]);
    assert_eq!(code, 0, "enroll: {err}");
    let (code, err) = in_root(&["unlock", "/disk.img", "root", "--test", "--tcti", &tcti]);
    assert_eq!(code, 0, "unlock: {err}");
    let (code, err) = in_root(&["unlock", "/disk.img", "root", "--test", "--tcti", &tcti]);
    assert_eq!(code, 5, "the fence holds: {err}");
    let (code, err) = in_root(&[
        "recover",
        "/disk.img",
        "root",
        "--test",
        "--key-file",
        "/passphrase",
    ]);
    assert_eq!(code, 0, "recover: {err}");
    let (code, err) = in_root(&["status", "/disk.img", "--tcti", &tcti]);
    assert_eq!(code, 0, "status: {err}");
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}
