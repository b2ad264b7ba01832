//! Writes sealroot's man pages and shell completions, generated from the same clap
//! definitions the binary parses with, so they cannot drift: `sealroot-doc OUTDIR` makes
//! OUTDIR/man8/sealroot.8 and sealroot-VERB.8 for each verb, and
//! OUTDIR/completions/{sealroot.bash,_sealroot,sealroot.fish}. Used by `make doc` and the
//! Debian package.

#[allow(dead_code)]
#[path = "../cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn write_man(cmd: &clap::Command, name: String, dir: &Path) -> std::io::Result<()> {
    let mut out = Vec::new();
    let file = dir.join(format!("{name}.8"));
    // clap names are &'static without its "string" feature; this program runs once.
    let name: &'static str = Box::leak(name.into_boxed_str());
    clap_mangen::Man::new(cmd.clone().name(name))
        .section("8")
        .manual("sealroot")
        .source(format!("sealroot {}", sealroot::VERSION))
        .render(&mut out)?;
    std::fs::write(file, out)
}

fn generate(out: &Path) -> std::io::Result<()> {
    let mut cmd = cli::Cli::command();
    cmd.build();
    let man = out.join("man8");
    std::fs::create_dir_all(&man)?;
    write_man(&cmd, "sealroot".into(), &man)?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        write_man(sub, format!("sealroot-{}", sub.get_name()), &man)?;
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "sealroot", &completions)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: sealroot-doc OUTDIR");
        return ExitCode::from(2);
    };
    match generate(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sealroot-doc: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
