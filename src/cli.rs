//! Command-line parsing only; `main` maps results to exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use sealroot::tpm::pcr::{PcrBank, parse_pcr_list};

pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other failure
  2  usage error or bad input (wrong passphrase, refused removal)
  3  no usable token (none enrolled, corrupt, or sealed by another TPM)
  4  TPM unavailable
  5  policy mismatch: a PCR changed since enrollment (or the fence is extended)
  6  wrong PIN, PIN needed, or dictionary-attack lockout
  7  device missing or not LUKS2

TPM: --tcti, else $SEALROOT_TCTI, else device:/dev/tpmrm0, else device:/dev/tpm0
(tpm2-tss spelling: device:PATH, swtpm:host=H,port=P, mssim:host=H,port=P).
Logging: SEALROOT_LOG=info|debug (never shows secrets).";

#[derive(Parser)]
#[command(
    name = "sealroot",
    version = sealroot::VERSION,
    about = "Unlock LUKS2 volumes at boot with a key sealed to the TPM",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Also write every message to the kernel log (/dev/kmsg), for the initrd.
    #[arg(long, global = true)]
    pub kmsg: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct TctiArg {
    /// TPM to use, in tpm2-tss TCTI spelling.
    #[arg(long, value_name = "TCTI")]
    pub tcti: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Seal a new key to this TPM and add a keyslot and token for it.
    #[command(after_help = EXIT_CODES)]
    Enroll {
        device: PathBuf,
        /// PCRs bound to their current values ("7", "4,9"); the fence PCR is added on top.
        /// Default 7: Secure Boot state, stable across kernel updates.
        #[arg(long, value_name = "LIST", value_parser = parse_pcrs, default_value = "7", conflicts_with = "srk_public")]
        pcrs: PcrList,
        /// PCR bank (default sha256; with --pcr-values, the values' bank).
        #[arg(long, value_name = "BANK", value_parser = clap::value_parser!(PcrBank))]
        pcr_bank: Option<PcrBank>,
        /// Seal offline, for the TPM whose storage key this TPM2B_PUBLIC is (from
        /// `sealroot srk-public`, `tpm2_readpublic -o` or `systemd-analyze srk`): no TPM
        /// is opened; the target imports the key at each unlock.
        #[arg(long, value_name = "FILE", conflicts_with = "tcti")]
        srk_public: Option<PathBuf>,
        /// With --srk-public: the value of every bound PCR at the target's boot, as
        /// `7:sha256=HEX,9:sha256=HEX` or a JSON file
        /// ({"pcr_bank": "sha256", "pcr_values": {"7": "HEX"}}). The fence PCR is expected
        /// at zeros and need not be given.
        #[arg(
            long,
            value_name = "SPEC",
            requires = "srk_public",
            conflicts_with = "policy_key"
        )]
        pcr_values: Option<String>,
        /// Seal to a signed policy: ECDSA P-256 public key (PEM) whose approvals
        /// (`sealroot approve`) say which PCR values unseal; the fence stays in the object.
        #[arg(long, value_name = "PUB", conflicts_with = "pcrs")]
        policy_key: Option<PathBuf>,
        /// Seal to a signed policy whose key is made here: its private half is kept in the
        /// token, encrypted under the sealed secret, and each unlock leaves it in root's
        /// keyring so that this machine approves its own updates (`update-approvals`, run
        /// by the initrd and kernel hooks). --pcrs are what the approvals cover; the first
        /// approval is for their current values. Root of the booted system can then
        /// approve any boot chain.
        #[arg(long, conflicts_with_all = ["policy_key", "srk_public"])]
        local_approval: bool,
        /// With --policy-key: an NV counter on this TPM, so that `sealroot revoke` makes
        /// every earlier approval useless.
        #[arg(long, requires = "policy_key", conflicts_with = "srk_public")]
        revocable: bool,
        /// Also require a PIN (asked twice on the terminal, or read from --pin-file).
        #[arg(long)]
        pin: bool,
        /// File holding the new PIN (one trailing newline ignored); `-` for stdin.
        #[arg(long, value_name = "FILE", requires = "pin")]
        pin_file: Option<PathBuf>,
        /// File holding an existing passphrase, exact bytes (as cryptsetup --key-file).
        #[arg(long, value_name = "FILE")]
        unlock_key_file: Option<PathBuf>,
        /// Also add a recovery key, printed once on stdout.
        #[arg(long)]
        recovery_key: bool,
        /// PCR that must still be at its reset value (all zeros), extended after unlocking;
        /// `none` to disable the fence.
        #[arg(long, value_name = "N|none", default_value = "15", value_parser = parse_fence)]
        fence_pcr: FencePcr,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Unseal and open volumes: DEVICE NAME [DEVICE NAME...], then extend the fence once.
    #[command(after_help = EXIT_CODES)]
    Unlock {
        /// A volume is a path, or as crypttab names it: UUID=, PARTUUID=, LABEL=,
        /// PARTLABEL= (udev's /dev/disk links).
        #[arg(value_name = "VOLUME NAME", num_args = 2.., required = true)]
        pairs: Vec<String>,
        /// Wait up to SECS for the volumes to appear (the boot scripts), opening the TPM
        /// meanwhile. A UUID= volume is also found on the kernel's own disk and partition
        /// nodes, before udev links it, when exactly one device carries that UUID.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=3600))]
        wait: Option<u64>,
        /// With --wait: then wait up to SECS for the TPM's device (`device:` TCTIs).
        #[arg(long, value_name = "SECS", default_value_t = 3, requires = "wait", value_parser = clap::value_parser!(u64).range(0..=3600))]
        tpm_wait: u64,
        /// Verify the key against the keyslot without activating (fences like a real unlock).
        #[arg(long)]
        test: bool,
        /// File holding the PIN for PIN-protected tokens; `-` for stdin.
        #[arg(long, value_name = "FILE", conflicts_with = "askpass")]
        pin_file: Option<PathBuf>,
        /// Ask for PINs by running PROG "PROMPT" and reading its stdout (the initrd's
        /// prompt machinery, e.g. /lib/cryptsetup/askpass: console or plymouth).
        #[arg(long, value_name = "PROG")]
        askpass: Option<PathBuf>,
        /// Signature file for systemd tokens with a signed PCR policy
        /// (default: tpm2-pcr-signature.json where systemd looks for it).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// An approval file for sealroot tokens with a policy key (besides the header's
        /// approvals); repeatable.
        #[arg(long = "approval", value_name = "FILE")]
        approvals: Vec<PathBuf>,
        /// Do not extend the fence PCR afterwards (tests and tooling).
        #[arg(long)]
        no_fence: bool,
        /// Trusted configuration (the initrd scripts pass it from /etc/sealroot/initrd.conf):
        /// the fence PCR, extended after every attempt; sealroot tokens sealed with another
        /// (or none) are refused. `none`: no fence, for tooling outside the boot path.
        #[arg(long, value_name = "N|none", default_value = "15", value_parser = parse_fence)]
        fence_pcr: FencePcr,
        /// Trusted configuration: the persistent handle of the storage key every token's
        /// parent must be.
        #[arg(long, value_name = "HANDLE", default_value = "0x81000001", value_parser = parse_handle)]
        srk_handle: u32,
        /// Trusted configuration: that key's TPM Name (hex), pinned when the initrd was
        /// built; without it the TPM's key is read (one more TPM command).
        #[arg(long, value_name = "HEX", value_parser = parse_name)]
        srk_name: Option<SrkName>,
        /// Give up (exit 4) when the TPM has not answered for this many seconds, PIN
        /// prompts not counted: a hung TPM must not hang the boot.
        #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        tpm_timeout: u64,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Show tokens, keyslots and whether each enrolled PCR still matches.
    #[command(after_help = EXIT_CODES)]
    Status {
        device: PathBuf,
        #[arg(long)]
        json: bool,
        /// Signature file for signed PCR policies, as for `unlock`
        /// (default: tpm2-pcr-signature.json where systemd looks for it).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// Approval files, as for `unlock`.
        #[arg(long = "approval", value_name = "FILE")]
        approvals: Vec<PathBuf>,
        /// This boot's event log, to say which event differs from an approved boot.
        #[arg(
            long,
            value_name = "FILE",
            default_value = sealroot::cmd::predict::DEFAULT_LOG
        )]
        eventlog: PathBuf,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Write the TPM2B_PUBLIC of the storage root key at 0x81000001 (created with the TCG
    /// template when absent, as enroll does), for sealing to this TPM from elsewhere.
    #[command(after_help = EXIT_CODES)]
    SrkPublic {
        /// Write here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Sign PCR values for the tokens of DEVICE sealed to a policy key (enroll
    /// --policy-key): they unlock under those values without being sealed again.
    #[command(after_help = EXIT_CODES)]
    Approve {
        device: PathBuf,
        /// The policy key's private half (PEM, PKCS#8 or SEC1, ECDSA P-256).
        #[arg(long, value_name = "PRIV")]
        key: PathBuf,
        /// A set of PCR values to approve (`4:sha256=HEX,9:sha256=HEX` or a JSON file);
        /// repeat for "any of these" (PolicyOR, up to 8).
        #[arg(long, value_name = "SPEC", required = true)]
        pcr_values: Vec<String>,
        /// Only this token.
        #[arg(long, value_name = "ID")]
        token: Option<u32>,
        /// Write the approval to FILE (for `unlock --approval`) instead of the header.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Remove the token's older approvals from the header.
        #[arg(long, conflicts_with = "out")]
        replace: bool,
    },
    /// Predict the PCR values of the next boot from this boot's event log, with a new
    /// kernel, initrd or command line; prints the JSON that --pcr-values reads.
    #[command(after_help = EXIT_CODES)]
    Predict {
        /// The TCG event log (default: the kernel's copy of this boot's).
        #[arg(
            long,
            value_name = "FILE",
            default_value = sealroot::cmd::predict::DEFAULT_LOG
        )]
        eventlog: PathBuf,
        /// The next kernel (its Authenticode hash replaces the last EFI application in PCR 4).
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// The next initrd (EFI stub LoadFile2 measurement in PCR 9).
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The next command line, as the boot loader is given it (PCR 9).
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        /// The next boot is QEMU's direct kernel boot (-kernel -initrd -append, q35, OVMF)
        /// with this much memory (-m, MiB): QEMU patches the kernel's setup header and
        /// OVMF adds " initrd=initrd" to the command line.
        #[arg(long, value_name = "MIB")]
        qemu_direct_boot: Option<u64>,
        #[arg(long, value_name = "LIST", value_parser = parse_pcrs, default_value = "4,7,9")]
        pcrs: PcrList,
        #[arg(long, value_name = "BANK", default_value = "sha256", value_parser = clap::value_parser!(PcrBank))]
        bank: PcrBank,
        /// Replay the log unchanged and compare it with the live PCRs.
        #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline", "qemu_direct_boot"])]
        verify: bool,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Approve the next boot on a machine that approves its own (enroll
    /// --local-approval): with the local key this boot's unlock left in root's keyring,
    /// each such volume gets one approval covering this boot and the predicted next one.
    /// Run by the initramfs-tools and kernel hooks after an update; --prune after a
    /// successful boot.
    #[command(after_help = EXIT_CODES)]
    UpdateApprovals {
        /// Only these volumes (default: every volume whose local key is in the keyring).
        devices: Vec<PathBuf>,
        /// The next kernel.
        #[arg(long, value_name = "FILE")]
        kernel: Option<PathBuf>,
        /// The next initrd.
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The next command line, as the boot loader is given it (default: the contents
        /// of /etc/kernel/cmdline when it exists, else this boot's).
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        /// The next boot is QEMU's direct kernel boot with this much memory (see predict).
        #[arg(long, value_name = "MIB")]
        qemu_direct_boot: Option<u64>,
        /// Narrow the approvals to this boot, once it has succeeded, when it is one the
        /// hooks approved as the next (nothing when this boot is not approved).
        #[arg(long, conflicts_with_all = ["kernel", "initrd", "cmdline"])]
        prune: bool,
        /// A passphrase of DEVICE (exact bytes; `-` for stdin): recovers the local key
        /// after a boot that did not unlock by the TPM, and leaves it in root's keyring.
        #[arg(long, value_name = "FILE")]
        unlock_key_file: Option<PathBuf>,
        #[arg(
            long,
            value_name = "FILE",
            default_value = sealroot::cmd::predict::DEFAULT_LOG
        )]
        eventlog: PathBuf,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Retire every approval of the revocable tokens of DEVICE (their NV counter moves
    /// on); approve again afterwards.
    #[command(after_help = EXIT_CODES)]
    Revoke {
        device: PathBuf,
        /// Only this token.
        #[arg(long, value_name = "ID")]
        token: Option<u32>,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Mark an image so that each instance, on its first boot, re-encrypts itself to its
    /// own key, seals it to its own TPM and escrows a recovery key (no TPM needed here).
    #[command(after_help = EXIT_CODES)]
    Provision {
        device: PathBuf,
        /// File holding an existing passphrase, exact bytes (as cryptsetup --key-file).
        #[arg(long, value_name = "FILE")]
        unlock_key_file: Option<PathBuf>,
        /// PCRs each instance binds to its first boot's values; the fence PCR on top.
        #[arg(long, value_name = "LIST", value_parser = parse_pcrs, default_value = "7")]
        pcrs: PcrList,
        #[arg(long, value_name = "BANK", default_value = "sha256", value_parser = clap::value_parser!(PcrBank))]
        pcr_bank: PcrBank,
        #[arg(long, value_name = "N|none", default_value = "15", value_parser = parse_fence)]
        fence_pcr: FencePcr,
        /// age recipient (age1…) each instance's recovery key is encrypted to, in the header.
        #[arg(long, value_name = "RECIPIENT", conflicts_with = "no_recovery")]
        escrow: Option<String>,
        /// Instances get no recovery key.
        #[arg(long)]
        no_recovery: bool,
        /// Re-encrypt each instance to its own volume key on first boot (the default).
        #[arg(long, overrides_with = "no_reencrypt")]
        reencrypt: bool,
        /// Keep the image's volume key on every instance (only the keyslots change).
        #[arg(long, overrides_with = "reencrypt")]
        no_reencrypt: bool,
        /// Re-encrypt the data in the initrd, before the root is mounted (the first boot
        /// takes as long as that), instead of after boot with `finish-provisioning`.
        #[arg(long, conflicts_with = "no_reencrypt")]
        reencrypt_in_initrd: bool,
    },
    /// Do a provisioned image's first-boot part on DEVICE now, without activating it (an
    /// image file, tests); at boot `unlock` does it. Does not fence.
    #[command(after_help = EXIT_CODES)]
    FirstBoot {
        device: PathBuf,
        /// Trusted configuration, as for unlock.
        #[arg(long, value_name = "N|none", default_value = "15", value_parser = parse_fence)]
        fence_pcr: FencePcr,
        #[arg(long, value_name = "HANDLE", default_value = "0x81000001", value_parser = parse_handle)]
        srk_handle: u32,
        #[arg(long, value_name = "HEX", value_parser = parse_name)]
        srk_name: Option<SrkName>,
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// After boot: re-encrypt the data of volumes whose first boot set that up, then remove
    /// what is left of the image (sealroot-finish-provisioning.service runs it). SIGTERM
    /// pauses cleanly; the next run resumes.
    #[command(after_help = EXIT_CODES)]
    FinishProvisioning {
        /// LUKS2 devices (default: the backing devices of every active LUKS2 mapping).
        devices: Vec<PathBuf>,
    },
    /// Show the recovery key escrowed at first boot (an age file: `age -d -i IDENTITY`).
    #[command(after_help = EXIT_CODES)]
    Escrow {
        #[command(subcommand)]
        action: EscrowAction,
    },
    /// Open a volume with the recovery key or a passphrase (no TPM needed).
    #[command(after_help = EXIT_CODES)]
    Recover {
        device: PathBuf,
        name: String,
        #[arg(long)]
        test: bool,
        /// Read the key from FILE (`-` for stdin) instead of the terminal.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Remove sealroot tokens and their keyslots.
    #[command(after_help = EXIT_CODES)]
    Remove {
        device: PathBuf,
        #[arg(
            long,
            value_name = "ID",
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        token: Option<u32>,
        #[arg(long)]
        all: bool,
        /// Remove even the last keyslot that opens the volume.
        #[arg(long)]
        force: bool,
    },
    /// Print the initrd's trusted configuration from /etc/sealroot/sealroot.conf (the
    /// initrd hooks run it at build time; a bad configuration fails the build).
    #[command(after_help = EXIT_CODES)]
    InitrdConfig {
        /// Host configuration to read instead of /etc/sealroot/sealroot.conf.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The TPM for `srk_name=tpm`.
        #[command(flatten)]
        tcti: TctiArg,
    },
    /// Extend the fence PCR now (for hooks with nothing to unlock).
    #[command(after_help = EXIT_CODES)]
    Fence {
        #[arg(long, value_name = "N", default_value_t = 15, value_parser = clap::value_parser!(u32).range(0..24))]
        pcr: u32,
        /// Give up (exit 4) when the TPM has not answered for this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        tpm_timeout: u64,
        #[command(flatten)]
        tcti: TctiArg,
    },
}

#[derive(Subcommand)]
pub enum EscrowAction {
    /// Print the escrowed recovery key of DEVICE, encrypted (armored age).
    Show { device: PathBuf },
}

#[derive(Clone, Debug)]
pub struct PcrList(pub Vec<u32>);

fn parse_pcrs(s: &str) -> Result<PcrList, String> {
    parse_pcr_list(s).map(PcrList)
}

fn parse_handle(s: &str) -> Result<u32, String> {
    sealroot::trust::parse_persistent_handle(s)
        .ok_or_else(|| format!("'{s}' is not a persistent handle (0x81000000-0x81ffffff)"))
}

#[derive(Clone, Debug)]
pub struct SrkName(pub Vec<u8>);

fn parse_name(s: &str) -> Result<SrkName, String> {
    sealroot::trust::parse_srk_name(s)
        .map(SrkName)
        .ok_or_else(|| "an SRK Name is 34 bytes of hex starting 000b (SHA-256)".to_string())
}

#[derive(Clone, Copy, Debug)]
pub struct FencePcr(pub Option<u32>);

fn parse_fence(s: &str) -> Result<FencePcr, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(FencePcr(None));
    }
    match parse_pcr_list(s)?.as_slice() {
        [one] => {
            sealroot::trust::check_fence(*one, &[])?;
            Ok(FencePcr(Some(*one)))
        }
        _ => Err("give one PCR number or 'none'".into()),
    }
}
