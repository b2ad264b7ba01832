//! Man pages and completions come from the same clap definitions the binary parses, and
//! `--version` names the build.

mod common;

use std::process::Command;

#[test]
fn a_man_page_per_verb_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sealroot-doc"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let help = common::run(&["--help"]).stdout;
    // Every verb `--help` lists (two-space indented "  verb  description" lines).
    let verbs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|v| *v != "help")
        .collect();
    assert!(verbs.contains(&"update-approvals"), "{help}");
    for verb in verbs {
        let page = dir.path().join(format!("man8/sealroot-{verb}.8"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH sealroot-"), "{verb}");
    }
    assert!(dir.path().join("man8/sealroot.8").exists());
    for f in ["sealroot.bash", "_sealroot", "sealroot.fish"] {
        let text = std::fs::read_to_string(dir.path().join("completions").join(f)).unwrap();
        assert!(text.contains("update-approvals"), "{f}");
    }
}

#[test]
fn version_names_the_build() {
    let r = common::run(&["--version"]);
    assert_eq!(r.code, 0);
    let line = r.stdout.trim();
    assert!(
        line.starts_with(&format!("sealroot {} (", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    assert!(!line.contains("(unknown)"), "built from a git tree: {line}");
    let f = common::Fixture::new();
    let r = f.run(&["status", f.image.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        format!("sealroot {}", json["sealroot"].as_str().unwrap()),
        line
    );
}
