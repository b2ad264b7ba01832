//! Only the static build needs help: tpm2-tss built with --enable-nodl calls the TCTI init
//! functions directly, but its .pc files do not list the TCTI archives, and GNU ld needs
//! them (and libtss2-mu, which they use) after everything that references them.
//! rust-lld (the default linker since Rust 1.90) emits a dynamic section in a static
//! non-PIE binary, which glibc's static startup cannot handle: the static build links with
//! GNU ld (`-C linker-features=-lld`, set by scripts/build-static.sh).
fn main() {
    build_id();
    println!("cargo:rerun-if-env-changed=SEALROOT_STATIC_PREFIX");
    if std::env::var_os("CARGO_FEATURE_STATIC").is_none() {
        return;
    }
    let Some(prefix) = std::env::var_os("SEALROOT_STATIC_PREFIX") else {
        println!(
            "cargo:warning=feature `static` without SEALROOT_STATIC_PREFIX: use `make static`"
        );
        return;
    };
    let lib = std::path::Path::new(&prefix).join("lib");
    println!("cargo:rustc-link-arg=-L{}", lib.display());
    // rustc ends its own library list with -Bdynamic.
    println!("cargo:rustc-link-arg=-Wl,-Bstatic");
    for archive in [
        "tss2-tcti-device",
        "tss2-tcti-swtpm",
        "tss2-tcti-mssim",
        "tss2-tctildr",
        "tss2-mu",
        "mbedcrypto",
        // The swtpm/mssim TCTIs resolve host names: libc again, after them.
        "c",
    ] {
        println!("cargo:rustc-link-arg=-l{archive}");
    }
}

/// `sealroot --version` names the build: SEALROOT_BUILD when set (a package built from a
/// tarball), else `git describe` of the tree, else "unknown".
fn build_id() {
    println!("cargo:rerun-if-env-changed=SEALROOT_BUILD");
    for path in [".git/HEAD", ".git/index", ".git/refs/tags"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let id = std::env::var("SEALROOT_BUILD").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "safe.directory=*",
                "describe",
                "--tags",
                "--always",
                "--dirty",
                "--abbrev=12",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    });
    println!(
        "cargo:rustc-env=SEALROOT_BUILD={}",
        id.unwrap_or_else(|| "unknown".into())
    );
}
