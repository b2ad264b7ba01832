//! `sealroot status`: enrolled tokens and which PCRs differ now.

mod common;

use common::Fixture;

#[test]
fn status_names_the_pcr_that_changed() {
    let f = Fixture::new();
    f.enroll(&["--recovery-key"]);
    let img = f.image.to_str().unwrap();
    let ok = f.run(&["status", img]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("would unseal now: yes"), "{}", ok.stdout);
    assert!(ok.stdout.contains("sealroot-recovery"), "{}", ok.stdout);

    f.tpm.extend(7, b"changed");
    let text = f.run(&["status", img]);
    assert!(text.stdout.contains("PCR 7: DIFFERS"), "{}", text.stdout);
    assert!(text.stdout.contains("PCR 15: matches"), "{}", text.stdout);
    let json = f.run(&["status", img, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["tokens"][0]["pcrs_differ"], serde_json::json!([7]));
    assert_eq!(v["tokens"][0]["type"], "sealroot");
    assert_eq!(v["tokens"][1]["type"], "sealroot-recovery");
}

#[test]
fn status_without_tpm_still_lists_tokens() {
    let f = Fixture::new();
    f.enroll(&[]);
    let r = f.run(&[
        "status",
        f.image.to_str().unwrap(),
        "--tcti",
        "device:/nonexistent/tpm0",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("token 0: sealroot"), "{}", r.stdout);
    assert!(r.stdout.contains("TPM unavailable"), "{}", r.stdout);
}

#[test]
fn srk_public_and_status_name_the_key_as_tpm2_tools_does() {
    let f = Fixture::new();
    let out = f.path("srk.pub");
    let r = f.run(&["srk-public", "--out", out.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tools = f.path("tools.pub");
    let name_file = f.path("tools.name");
    f.tpm.tools(&[
        "tpm2_readpublic",
        "-c",
        "0x81000001",
        "-o",
        tools.to_str().unwrap(),
        "-n",
        name_file.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&tools).unwrap());
    let name = hex::encode(std::fs::read(&name_file).unwrap());
    assert!(r.stderr.contains(&name), "{}", r.stderr);
    // The token enrolled afterwards records that key; status names it.
    f.enroll(&[]);
    let s = f.run(&["status", "--json", f.image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["tokens"][0]["srk_name"], serde_json::json!(name));
    assert_eq!(v["tokens"][0]["srk_handle"], "0x81000001");
}
