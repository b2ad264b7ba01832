//! Every input kept under fuzz/regressions/<target>/ (a crash the fuzzer found, fixed in
//! src/) replayed through the same harness function as the fuzz target, under plain
//! `cargo test`: none may panic. The seed corpora (fuzz/corpus/<target>/) are replayed too,
//! so the harnesses keep working on real inputs. See fuzz/README.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod harness;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Replays every file under `dir`/<target>/ through its harness; returns the files that
/// panicked (with the message) and the number replayed. A directory that names no target
/// is a failure too: its inputs would silently not be replayed.
fn replay(dir: &Path, lookup: impl Fn(&str) -> Option<harness::Harness>) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut count = 0;
    let Ok(targets) = std::fs::read_dir(dir) else {
        return (failures, 0);
    };
    let mut targets: Vec<PathBuf> = targets.map(|e| e.expect("dir entry").path()).collect();
    targets.sort();
    for target_dir in targets.into_iter().filter(|p| p.is_dir()) {
        let name = target_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(harness) = lookup(&name) else {
            failures.push(format!("{}: no fuzz target {name}", target_dir.display()));
            continue;
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&target_dir)
            .expect("read target dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("read input");
            count += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: panicked: {message}", file.display()));
            }
        }
    }
    (failures, count)
}

#[test]
fn every_regression_input_is_handled_without_a_panic() {
    let (failures, count) = replay(&root().join("regressions"), harness::target);
    eprintln!("replayed {count} regression inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_seed_is_handled_without_a_panic() {
    let (failures, count) = replay(&root().join("corpus"), harness::target);
    assert!(count > 0, "no seed corpora under fuzz/corpus");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_target_has_seeds_and_a_fuzz_target() {
    for (name, _) in harness::TARGETS {
        let seeds = root().join("corpus").join(name);
        let n = std::fs::read_dir(&seeds).map(|d| d.count()).unwrap_or(0);
        assert!(n > 0, "{}: no seeds", seeds.display());
        let target = root().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{}: missing", target.display());
    }
}

/// The replay itself: an input whose harness panics is reported, so the regression test
/// above cannot pass by not noticing.
#[test]
fn a_panicking_input_fails_the_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("boom");
    std::fs::create_dir(&target).expect("mkdir");
    std::fs::write(target.join("crash-1"), b"x").expect("write");
    std::fs::write(target.join("fine"), b"").expect("write");
    fn boom(data: &[u8]) {
        assert!(data.is_empty(), "boom");
    }
    let (failures, count) = replay(dir.path(), |name| {
        (name == "boom").then_some(boom as harness::Harness)
    });
    assert_eq!(count, 2);
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("crash-1") && failures[0].contains("boom"));
    let (failures, _) = replay(dir.path(), |_| None);
    assert!(failures[0].contains("no fuzz target boom"));
}
