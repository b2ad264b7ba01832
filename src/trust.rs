//! Trusted configuration: what `unlock` may believe without the LUKS2 header, because it
//! comes from inside the measured initrd (the integration scripts pass it on the command
//! line, from the file the initrd hook wrote at build time). Header values are checked
//! against it; see ../README.md, "Trust boundary".

use crate::tpm::fence::DEFAULT_FENCE_PCR;
use crate::tpm::srk::ExpectedParent;

pub struct Trust {
    /// `srk_name=tpm`: pin the Name of the key this machine's TPM holds at `srk_handle`
    /// when the initrd is built (an installed machine rebuilding its own initrd; never in
    /// an image builder's chroot, whose TPM is the builder's).
    pub srk_name_from_tpm: bool,
    /// The TPM for the boot scripts when it is not the kernel's device (a test harness,
    /// a simulator); only the scripts read it, from the initrd's file, never from the
    /// kernel command line.
    pub tcti: Option<String>,
    /// Extended after every unlock attempt; sealroot tokens must be sealed to it at its
    /// reset value. None only for tooling outside the boot path (`--fence-pcr none`).
    pub fence_pcr: Option<u32>,
    /// The storage key every recorded parent must be.
    pub parent: ExpectedParent,
}

impl Default for Trust {
    fn default() -> Trust {
        Trust {
            srk_name_from_tpm: false,
            tcti: None,
            fence_pcr: Some(DEFAULT_FENCE_PCR),
            parent: ExpectedParent::default(),
        }
    }
}

/// A persistent handle written `0x81xxxxxx`: the one spelling configuration, command line
/// and tokens use.
pub fn parse_persistent_handle(s: &str) -> Option<u32> {
    s.strip_prefix("0x")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .filter(|h| (0x8100_0000..=0x81FF_FFFF).contains(h))
}

/// An SRK Name as tpm2_readpublic prints it: SHA-256 nameAlg (000b) and 32 bytes, in hex.
/// "0x01535200": an owner-defined NV index (0x01000000-0x01ffffff).
pub fn parse_nv_index(s: &str) -> Option<u32> {
    let hex = s.strip_prefix("0x")?;
    let v = u32::from_str_radix(hex, 16).ok()?;
    (hex.len() == 8 && (0x0100_0000..=0x01ff_ffff).contains(&v)).then_some(v)
}

pub fn parse_srk_name(s: &str) -> Option<Vec<u8>> {
    hex::decode(s)
        .ok()
        .filter(|n| n.len() == 34 && n[..2] == [0x00, 0x0b])
}

/// Where the host's configuration is read at initrd build time (absent: defaults).
pub const HOST_CONFIG: &str = "/etc/sealroot/sealroot.conf";

impl Trust {
    /// Parses `key=value` lines (`#` comments): fence_pcr, srk_handle, srk_name. Anything
    /// else, or a value that fails its check, is an error: a bad configuration must stop
    /// the initrd build, not weaken the boot.
    pub fn parse(text: &str) -> Result<Trust, String> {
        let mut t = Trust::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("line {}: {what}", n + 1);
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| at(format!("'{line}' is not key=value")))?;
            let value = value.trim();
            match key.trim() {
                "fence_pcr" => {
                    let pcr = value
                        .parse()
                        .map_err(|_| at(format!("fence_pcr '{value}' is not a PCR number")))?;
                    check_fence(pcr, &[]).map_err(at)?;
                    t.fence_pcr = Some(pcr);
                }
                "srk_handle" => {
                    t.parent.handle = parse_persistent_handle(value)
                        .ok_or_else(|| at(format!("srk_handle '{value}' is not 0x81xxxxxx")))?;
                }
                "srk_name" if value == "tpm" => t.srk_name_from_tpm = true,
                "srk_name" => {
                    let name = parse_srk_name(value).ok_or_else(|| {
                            at("srk_name must be 34 bytes of hex starting 000b (the SHA-256 Name that tpm2_readpublic prints)".into())
                        })?;
                    t.parent.name = Some(name);
                }
                "tcti" => {
                    let plain = |c: char| c.is_ascii_alphanumeric() || ":/=,._-".contains(c);
                    let known = ["device:/dev/", "swtpm:", "mssim:"];
                    if !value.chars().all(plain) || !known.iter().any(|k| value.starts_with(k)) {
                        return Err(at(format!(
                            "tcti '{value}' is not device:/dev/…, swtpm:… or mssim:…"
                        )));
                    }
                    t.tcti = Some(value.to_string());
                }
                other => return Err(at(format!("unknown key '{other}'"))),
            }
        }
        Ok(t)
    }

    /// The file the initrd carries; the boot scripts read it back (share/boot.sh).
    pub fn render(&self) -> String {
        let mut out =
            String::from("# sealroot trusted configuration, written when this initrd was built\n");
        if let Some(t) = &self.tcti {
            out += &format!("tcti={t}\n");
        }
        if let Some(f) = self.fence_pcr {
            out += &format!("fence_pcr={f}\n");
        }
        out += &format!("srk_handle=0x{:08x}\n", self.parent.handle);
        if let Some(name) = &self.parent.name {
            out += &format!("srk_name={}\n", hex::encode(name));
        }
        out
    }
}

/// A PCR can be a fence only if it is all zeros after a TPM reset and software at
/// locality 0 cannot reset it: 16 (debug) and 23 (application) are resettable, 17–22
/// (dynamic root of trust) reset to all ones. Nor can a bound PCR be the fence.
pub fn check_fence(pcr: u32, bound: &[u32]) -> Result<(), String> {
    if pcr > 15 {
        return Err(format!(
            "PCR {pcr} cannot be a fence: PCRs 16 and 23 can be reset by any program and 17-22 do not start at zeros; use one of 0-15 (default 15)"
        ));
    }
    if bound.contains(&pcr) {
        return Err(format!(
            "PCR {pcr} cannot be both bound to its current value and the fence"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_round_trips_and_refuses_what_it_does_not_know() {
        let name = format!("000b{}", "ab".repeat(32));
        let text = format!("# c\nfence_pcr=14\nsrk_handle=0x81000002\nsrk_name={name}\n");
        let t = Trust::parse(&text).unwrap();
        assert_eq!(t.fence_pcr, Some(14));
        assert_eq!(t.parent.handle, 0x8100_0002);
        assert_eq!(
            Trust::parse(&t.render()).unwrap().parent.name,
            t.parent.name
        );
        for bad in [
            "fence_pcr=23",
            "fence_pcr=none",
            "srk_handle=0x40000001",
            "srk_name=00",
            "fence=15",
            "tcti=swtpm:host=$(reboot)",
            "tcti=file:/x",
            "junk",
        ] {
            assert!(Trust::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Trust::parse("").unwrap().fence_pcr, Some(15));
    }

    #[test]
    fn resettable_and_bound_pcrs_are_no_fence() {
        assert!(check_fence(15, &[7]).is_ok());
        for pcr in [16, 17, 22, 23] {
            assert!(check_fence(pcr, &[7]).is_err(), "{pcr}");
        }
        assert!(check_fence(7, &[7]).is_err());
    }
}
