mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, EscrowAction};
use sealroot::cmd::{
    approve, enroll, escrow, fence, finish_provisioning, initrd_config, predict, provision,
    recover, remove, revoke, srk_public, status, unlock, update_approvals,
};
use sealroot::console;
use sealroot::devices::Source;
use sealroot::error::{Error, exit};
use sealroot::luks::volume::quiet_library_log;

fn main() -> ExitCode {
    // C libraries (tpm2-tss keeps a session's HMAC key — session key ‖ the PIN's
    // authValue — in a node it frees unwiped) leave secrets in freed heap memory: glibc
    // overwrites every chunk it frees outside its per-thread cache with this byte. Set
    // before anything allocates.
    // SAFETY: mallopt only changes allocator settings.
    unsafe { nix::libc::mallopt(nix::libc::M_PERTURB, 0x5a) };
    quiet_tss_log();
    init_logging();
    let cli = Cli::parse();
    if cli.kmsg {
        console::enable_kmsg();
    }
    quiet_library_log();
    // Secrets must never reach swap or a core dump.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // Nor can another process of the same user read them through ptrace or /proc/PID/mem.
    let _ = nix::sys::prctl::set_dumpable(false);
    let code = run(cli.command);
    pause_before_exit();
    ExitCode::from(code)
}

/// Test hook: `SEALROOT_TEST_PAUSE_BEFORE_EXIT=1` stops the process (SIGSTOP to itself) when
/// the command is done, just before main returns, so tests/residue.rs can read its whole
/// memory for secrets left behind; SIGCONT lets it exit. The boot scripts run sealroot
/// with an empty environment.
fn pause_before_exit() {
    if std::env::var_os("SEALROOT_TEST_PAUSE_BEFORE_EXIT").is_some_and(|v| v == "1") {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// tpm2-tss prints its own warnings on stderr for every TPM error, including expected ones;
/// keep them off unless the user asked for them.
fn quiet_tss_log() {
    // tpm2-tss at debug level prints the Unseal response and the key that decrypts it:
    // its log is off whatever the environment (the kernel command line can set it).
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe { std::env::set_var("TSS2_LOG", "all+none") };
}

fn init_logging() {
    // tss-esapi logs every failed TPM command at error level, including the expected ones
    // (an empty SRK handle, a PCR mismatch); sealroot reports what matters itself.
    let env = env_logger::Env::new().filter_or("SEALROOT_LOG", "warn");
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            use std::io::Write;
            // In the initrd (--kmsg) the record also goes to the kernel log, where it
            // carries the boot's clock: the boot benchmark splits the unlock with it.
            console::log_record(record.level(), &record.args().to_string());
            writeln!(
                buf,
                "[{} {}] {}",
                buf.timestamp_micros(),
                record.level(),
                record.args()
            )
        })
        .init();
}

fn report(e: &Error) -> u8 {
    console::error(&e.to_string());
    e.exit_code()
}

fn run(command: Command) -> u8 {
    match command {
        Command::Enroll {
            device,
            pcrs,
            pcr_bank,
            srk_public,
            pcr_values,
            policy_key,
            local_approval,
            revocable,
            pin,
            pin_file,
            unlock_key_file,
            recovery_key,
            fence_pcr,
            tcti,
        } => {
            let o = enroll::EnrollOptions {
                device: device.clone(),
                pcrs: pcrs.0,
                bank: pcr_bank,
                offline: srk_public.map(|srk_public| enroll::OfflineTarget {
                    srk_public,
                    pcr_values,
                }),
                policy_key,
                local_approval,
                revocable,
                pin,
                pin_file,
                unlock_key_file,
                recovery_key,
                fence_pcr: fence_pcr.0,
                tcti: tcti.tcti,
            };
            match enroll::run(&o) {
                Ok(done) => {
                    eprintln!(
                        "sealroot: enrolled {}: token {}, keyslot {}{}",
                        device.display(),
                        done.token,
                        done.keyslot,
                        done.recovery_keyslot
                            .map(|s| format!(", recovery keyslot {s}"))
                            .unwrap_or_default()
                    );
                    exit::OK
                }
                Err(e) => report(&e),
            }
        }
        Command::Unlock {
            pairs,
            wait,
            tpm_wait,
            test,
            pin_file,
            askpass,
            signature,
            approvals,
            no_fence,
            fence_pcr,
            srk_handle,
            srk_name,
            tpm_timeout,
            tcti,
        } => {
            sealroot::watchdog::start(std::time::Duration::from_secs(tpm_timeout));
            if pairs.len() % 2 != 0 {
                return report(&Error::Usage(
                    "unlock takes DEVICE NAME pairs; the last device has no name".into(),
                ));
            }
            let targets = pairs
                .chunks(2)
                .map(|p| (Source::parse(&p[0]), p[1].clone()))
                .collect();
            let r = unlock::run(&unlock::UnlockOptions {
                targets,
                wait: wait.map(|secs| unlock::DeviceWait {
                    volumes: std::time::Duration::from_secs(secs),
                    tpm: std::time::Duration::from_secs(tpm_wait),
                }),
                test,
                tcti: tcti.tcti,
                pin_file,
                askpass,
                signature,
                approvals,
                no_fence,
                trust: sealroot::trust::Trust {
                    fence_pcr: fence_pcr.0,
                    parent: sealroot::tpm::srk::ExpectedParent {
                        handle: srk_handle,
                        name: srk_name.map(|n| n.0),
                    },
                    ..Default::default()
                },
                provision: !test,
            });
            report_unlock(&r)
        }
        Command::FirstBoot {
            device,
            fence_pcr,
            srk_handle,
            srk_name,
            tcti,
        } => {
            let r = unlock::run(&unlock::UnlockOptions {
                targets: vec![(Source::Path(device), "first-boot".into())],
                wait: None,
                test: true,
                tcti: tcti.tcti,
                pin_file: None,
                askpass: None,
                signature: None,
                approvals: Vec::new(),
                no_fence: true,
                trust: sealroot::trust::Trust {
                    fence_pcr: fence_pcr.0,
                    parent: sealroot::tpm::srk::ExpectedParent {
                        handle: srk_handle,
                        name: srk_name.map(|n| n.0),
                    },
                    ..Default::default()
                },
                provision: true,
            });
            report_unlock(&r)
        }
        Command::Status {
            device,
            json,
            signature,
            approvals,
            eventlog,
            tcti,
        } => {
            match status::run(&status::StatusOptions {
                device,
                signature,
                approvals,
                eventlog,
                tcti: tcti.tcti,
            }) {
                Ok(v) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                    } else {
                        print!("{}", status::render_text(&v));
                    }
                    exit::OK
                }
                Err(e) => report(&e),
            }
        }
        Command::SrkPublic { out, tcti } => match srk_public::run(&srk_public::SrkPublicOptions {
            out,
            tcti: tcti.tcti,
        }) {
            Ok(line) => {
                eprintln!("sealroot: {line}");
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Approve {
            device,
            key,
            pcr_values,
            token,
            out,
            replace,
        } => match approve::run(&approve::ApproveOptions {
            device,
            key,
            pcr_values,
            token,
            out,
            replace,
        }) {
            Ok(done) => {
                for (token, place) in done {
                    eprintln!("sealroot: approval for token {token}: {place}");
                }
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Predict {
            eventlog,
            kernel,
            initrd,
            cmdline,
            qemu_direct_boot,
            pcrs,
            bank,
            verify,
            tcti,
        } => match predict::run(&predict::PredictOptions {
            eventlog,
            kernel,
            initrd,
            cmdline,
            loader: sealroot::predict::loader(qemu_direct_boot),
            pcrs: pcrs.0,
            bank,
            verify,
            tcti: tcti.tcti,
        }) {
            Ok(text) => {
                print!("{text}");
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::UpdateApprovals {
            devices,
            kernel,
            initrd,
            cmdline,
            qemu_direct_boot,
            prune,
            unlock_key_file,
            eventlog,
            tcti,
        } => match update_approvals::run(&update_approvals::UpdateOptions {
            eventlog,
            kernel,
            initrd,
            cmdline,
            loader: sealroot::predict::loader(qemu_direct_boot),
            prune,
            devices,
            unlock_key_file,
            tcti: tcti.tcti,
        }) {
            Ok(lines) => {
                for line in lines {
                    eprintln!("sealroot: {line}");
                }
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Revoke {
            device,
            token,
            tcti,
        } => match revoke::run(&revoke::RevokeOptions {
            device,
            token,
            tcti: tcti.tcti,
        }) {
            Ok(done) => {
                for (token, value, removed) in done {
                    eprintln!(
                        "sealroot: token {token}: earlier approvals revoked (counter now {value}; {removed} removed from the header); approve the current values again"
                    );
                }
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Provision {
            device,
            unlock_key_file,
            pcrs,
            pcr_bank,
            fence_pcr,
            escrow,
            no_recovery,
            reencrypt: _,
            no_reencrypt,
            reencrypt_in_initrd,
        } => match provision::run(&provision::ProvisionOptions {
            device: device.clone(),
            unlock_key_file,
            pcrs: pcrs.0,
            bank: pcr_bank,
            fence_pcr: fence_pcr.0,
            escrow,
            no_recovery,
            reencrypt: !no_reencrypt,
            reencrypt_in_initrd,
        }) {
            Ok((token, slot)) => {
                eprintln!(
                    "sealroot: {} marked for provisioning: token {token}, provisioning keyslot {slot}",
                    device.display()
                );
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::FinishProvisioning { devices } => {
            sealroot::stop::install();
            match finish_provisioning::run(&devices) {
                Ok(0) => {
                    eprintln!("sealroot: nothing to finish");
                    exit::OK
                }
                Ok(n) => {
                    eprintln!("sealroot: provisioning finished on {n} volume(s)");
                    exit::OK
                }
                Err(e) => report(&e),
            }
        }
        Command::Escrow {
            action: EscrowAction::Show { device },
        } => match escrow::show(&device) {
            Ok(text) => {
                print!("{text}");
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Recover {
            device,
            name,
            test,
            key_file,
        } => match recover::run(&recover::RecoverOptions {
            device: device.clone(),
            name: name.clone(),
            test,
            key_file,
        }) {
            Ok(slot) => {
                if test {
                    eprintln!(
                        "sealroot: the key opens keyslot {slot} of {}",
                        device.display()
                    );
                } else {
                    eprintln!(
                        "sealroot: {} opened as {name} with keyslot {slot}",
                        device.display()
                    );
                }
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::Remove {
            device,
            token,
            all: _,
            force,
        } => match remove::run(&remove::RemoveOptions {
            device: device.clone(),
            token,
            force,
        }) {
            Ok(r) => {
                eprintln!(
                    "sealroot: removed token(s) {:?} and keyslot(s) {:?} from {}",
                    r.tokens,
                    r.keyslots,
                    device.display()
                );
                exit::OK
            }
            Err(e) => report(&e),
        },
        Command::InitrdConfig { config, tcti } => {
            match initrd_config::run(&initrd_config::InitrdConfigOptions {
                config,
                tcti: tcti.tcti,
            }) {
                Ok(text) => {
                    print!("{text}");
                    exit::OK
                }
                Err(e) => report(&e),
            }
        }
        Command::Fence {
            pcr,
            tpm_timeout,
            tcti,
        } => {
            sealroot::watchdog::start(std::time::Duration::from_secs(tpm_timeout));
            match fence::run(&fence::FenceOptions {
                pcr,
                tcti: tcti.tcti,
            }) {
                Ok(()) => exit::OK,
                Err(e) => report(&e),
            }
        }
    }
}

/// One line per failed volume; the exit code of the first failure (or of the fence).
fn report_unlock(r: &unlock::UnlockReport) -> u8 {
    if let Some(e) = &r.fence_error {
        console::error(&format!("could not extend the fence PCR: {e}"));
    }
    let mut code = exit::OK;
    for (device, e) in &r.failures {
        console::error(&format!("{}: {e}", device.display()));
        if code == exit::OK {
            code = e.exit_code();
        }
    }
    if code == exit::OK && r.fence_error.is_some() {
        code = exit::FAILURE;
    }
    code
}
