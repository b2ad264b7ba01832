#!/bin/sh
# Writes the seed corpora under fuzz/corpus/ from real inputs: tokens that sealroot,
# systemd-cryptenroll and clevis write on LUKS2 image files against a private swtpm, the
# structures inside them, approvals and provision tokens, the test event logs, the test
# vectors of shared/reference (REFERENCE, default /work/shared/reference). Run once by
# hand (the results are committed); needs `./scripts/deps.sh build test` and a built
# sealroot (SEALROOT, default target/debug/sealroot).
# Usage: fuzz/make-seeds.sh
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SEALROOT=${SEALROOT:-$ROOT/target/debug/sealroot}
C=$ROOT/fuzz/corpus
W=$(mktemp -d)
SWTPM_PID=
cleanup() {
    if [ -n "$SWTPM_PID" ]; then kill "$SWTPM_PID" 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT

for t in token_sealroot token_systemd token_clevis token_provision systemd_signature \
    approval tpm_blob tpm_public esys_tr pcr_values eventlog pe_image initrd_config; do
    mkdir -p "$C/$t"
done

PORT=$((20000 + $$ % 20000))
mkdir "$W/tpm"
swtpm socket --tpm2 --tpmstate dir="$W/tpm" \
    --server type=tcp,port=$PORT,bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((PORT + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear >/dev/null 2>&1 &
SWTPM_PID=$!
TCTI="swtpm:host=127.0.0.1,port=$PORT"
export TPM2TOOLS_TCTI=$TCTI
sleep 1

printf 'fuzz-seed-pass' >"$W/pass"
printf '1234\n' >"$W/pin"
image() {
    truncate -s 8M "$W/$1"
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
        --luks2-keyslots-size 4M --key-file "$W/pass" "$W/$1"
}
# export IMAGE TOKEN-ID FILE: the token as cryptsetup prints it.
export_token() {
    cryptsetup token export --token-id "$2" "$W/$1" >"$3"
}
enroll() {
    img=$1
    shift
    "$SEALROOT" enroll "$W/$img" --unlock-key-file "$W/pass" --tcti "$TCTI" "$@" >/dev/null 2>&1
}

# systemd-cryptenroll 252 (Debian 12) and clevis 19: a few tries each (swtpm sessions).
# No resource manager in front of swtpm: what a tool leaves loaded is flushed before the next.
flush() { for what in -t -l -s; do tpm2_flushcontext $what >/dev/null 2>&1 || true; done; }
try() {
    for _ in 1 2 3; do
        flush
        "$@" >/dev/null 2>"$W/try.err" && return 0
    done
    echo "seeds: failed: $*: $(tail -3 "$W/try.err")" >&2
    return 1
}
image k
try clevis luks bind -y -k "$W/pass" -d "$W/k" tpm2 '{"pcr_ids":"7","pcr_bank":"sha256","key":"rsa"}' || true
try clevis luks bind -y -k "$W/pass" -d "$W/k" sss '{"t":1,"pins":{"tpm2":{"pcr_ids":"7"}}}' || true
for id in 0 1; do
    export_token k $id "$C/token_clevis/bind-$id.json" 2>/dev/null || rm -f "$C/token_clevis/bind-$id.json"
done

image s
try env PASSWORD=fuzz-seed-pass systemd-cryptenroll --tpm2-device="$TCTI" --tpm2-pcrs=7 "$W/s" </dev/null || true
try env PASSWORD=fuzz-seed-pass NEWPIN=1234 systemd-cryptenroll --tpm2-device="$TCTI" \
    --tpm2-pcrs=0+7 --tpm2-with-pin=yes "$W/s" </dev/null || true
for id in 0 1; do
    export_token s $id "$C/token_systemd/cryptenroll-$id.json" 2>/dev/null || rm -f "$C/token_systemd/cryptenroll-$id.json"
done

# The policy key of the harness (fuzz/src/lib.rs POLICY_KEY), so approvals verify there.
sed -n '/^const POLICY_KEY/,/END PRIVATE KEY/p' fuzz/src/lib.rs |
    sed -e 's/^const POLICY_KEY: &str = "//' -e 's/";$//' >"$W/policy.pem"
openssl pkey -in "$W/policy.pem" -pubout -out "$W/policy.pub" 2>/dev/null

# sealroot tokens: default, PIN, other banks and PCRs, no fence, policy key (+ approvals).
image a
enroll a
enroll a --pin --pin-file "$W/pin"
enroll a --pcrs 0,7 --pcr-bank sha1
enroll a --pcrs 4,7,9 --pcr-bank sha384 || true
enroll a --fence-pcr none --recovery-key
for id in 0 1 2 3 4 5; do
    export_token a $id "$W/tok" 2>/dev/null || continue
    if grep -q '"type":"sealroot"' "$W/tok"; then cp "$W/tok" "$C/token_sealroot/enrolled-$id.json"; fi
done

image b
enroll b --policy-key "$W/policy.pub" --pin --pin-file "$W/pin"
zeros=$(printf '%064d' 0)
"$SEALROOT" approve "$W/b" --key "$W/policy.pem" --pcr-values "7:sha256=$zeros" \
    --pcr-values "7:sha256=$(printf '%064d' 1)" --out "$W/approval.json" >/dev/null
export_token b 0 "$W/b0"
cp "$W/b0" "$C/token_sealroot/policy-key.json"
python3 - "$W/b0" "$W/approval.json" "$C/token_sealroot/policy-key-with-approval.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1])); a = json.load(open(sys.argv[2]))
json.dump([t, a], open(sys.argv[3], "w"), separators=(",", ":"))
EOF
cp "$W/approval.json" "$C/approval/two-sets.json"
cp "$W/policy.pub" "$C/initrd_config/policy-key.pub.pem"

image c
enroll c --policy-key "$W/policy.pub" --revocable
"$SEALROOT" approve "$W/c" --key "$W/policy.pem" --pcr-values "7:sha256=$zeros,9:sha256=$zeros" \
    --out "$W/approval-nv.json" >/dev/null
cp "$W/approval-nv.json" "$C/approval/revocable.json"
export_token c 0 "$C/token_sealroot/revocable.json"

image d
enroll d --local-approval --pcrs 7
for id in 0 1 2; do
    export_token d $id "$W/tok" 2>/dev/null || continue
    case $(cat "$W/tok") in
        *'"type":"sealroot"'*) cp "$W/tok" "$C/token_sealroot/local-approval.json" ;;
        *'"type":"sealroot-approval"'*) cp "$W/tok" "$C/approval/local.json" ;;
    esac
done

# Offline sealing to this TPM's SRK (ECC) and to an RSA key's public area.
"$SEALROOT" srk-public --out "$W/srk.pub" --tcti "$TCTI" >/dev/null
cp "$W/srk.pub" "$C/tpm_public/srk-ecc.pub"
image e
"$SEALROOT" enroll "$W/e" --unlock-key-file "$W/pass" --srk-public "$W/srk.pub" \
    --pcr-values "7:sha256=$zeros" >/dev/null
export_token e 0 "$C/token_sealroot/offline-ecc.json"
tpm2_createprimary -Q -C o -G rsa2048:aes128cfb -g sha256 \
    -a 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|decrypt' \
    -c "$W/rsa.ctx" >/dev/null
tpm2_readpublic -Q -c "$W/rsa.ctx" -o "$W/rsa.pub" >/dev/null
tpm2_flushcontext -t >/dev/null
cp "$W/rsa.pub" "$C/tpm_public/srk-rsa.pub"
"$SEALROOT" enroll "$W/e" --unlock-key-file "$W/pass" --srk-public "$W/rsa.pub" \
    --pcr-values "7:sha256=$zeros" >/dev/null
export_token e 1 "$C/token_sealroot/offline-rsa.json"

# Provision tokens.
age_recipient=age1uvkwqystaqn973fs02htqpuyuhapauusktutz3gw28euwpqsh39spm397g
image p
"$SEALROOT" provision "$W/p" --unlock-key-file "$W/pass" --escrow "$age_recipient" \
    --no-reencrypt >/dev/null
export_token p 0 "$C/token_provision/escrow.json"
image q
"$SEALROOT" provision "$W/q" --unlock-key-file "$W/pass" --no-recovery --pcrs 7,9 \
    --reencrypt --reencrypt-in-initrd >/dev/null
export_token q 0 "$C/token_provision/reencrypt.json"

# The reference vectors (tokens-systemd.md §11, tokens-clevis.md §11), with variants the
# real tools write: tpm2_srk and a salted PIN (systemd >= 253), the unsealed bytes for
# the clevis decryption ("__fuzz_unsealed", read by the harness only).
python3 - "$C" "${REFERENCE:-/work/shared/reference}" <<'EOF'
import base64, json, re, sys, os
corpus, ref = sys.argv[1], sys.argv[2]
def blocks(path):
    text = open(path).read() if os.path.exists(path) else ""
    return [b.strip() for b in re.findall(r"```\n(.*?)```", text, re.S)]
def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
sd = [json.loads(b) for b in blocks(f"{ref}/tokens-systemd.md") if b.startswith("{")]
tokens = [t for t in sd if t.get("type") == "systemd-tpm2"]
sigs = [t for t in sd if "sha256" in t]
srk = "gQAAAQAiAAv5sLge1GM24g8z8nGVwj63AzM3lF2hByQxbh7A0TfsJwAAAAEAWgAjAAsAAwRyAAAABgCAAEMAEAADABAAIFsbfkcs48O3R29GrqlI9KOrqZPkoXQQb6WcYwwN4NibACDM5iwqa8lnLk89PJ10t0O6cpBaKn3nEayvLDm/8KVV8w=="
for i, t in enumerate(tokens):
    dump(t, f"{corpus}/token_systemd/vector-{i}.json")
if tokens:
    t = dict(tokens[0]); t["tpm2_srk"] = srk; t["tpm2-pin"] = True
    t["tpm2_salt"] = base64.b64encode(bytes(range(32))).decode()
    dump(t, f"{corpus}/token_systemd/srk-salted-pin.json")
    t = dict(tokens[0]); t["tpm2-primary-alg"] = "rsa"; t["tpm2-pin"] = True
    t["tpm2-blob"] = [t["tpm2-blob"]]; t["tpm2-policy-hash"] = [t["tpm2-policy-hash"]]
    dump(t, f"{corpus}/token_systemd/rsa-arrays.json")
for i, s in enumerate(sigs):
    dump(s, f"{corpus}/systemd_signature/vector-{i}.json")
cv = [json.loads(b) for b in blocks(f"{ref}/tokens-clevis.md") if b.startswith('{"type":"clevis"') and "\u2026" not in b]
jwk = '{"alg":"A256GCM","k":"um7NVnFkzNM7RAsc8McKO1bHGy8PZrA8lUxmDn2lA0s","key_ops":["encrypt","decrypt"],"kty":"oct"}'
for i, t in enumerate(cv):
    dump(t, f"{corpus}/token_clevis/vector-{i}.json")
    u = dict(t); u["__fuzz_unsealed"] = jwk[:-1] + ',"x":1}'
    dump(u, f"{corpus}/token_clevis/vector-{i}-unsealed.json")
EOF

# The binary structures inside the tokens: blobs, public areas, serialized ESYS_TRs.
python3 - "$C" <<'EOF'
import base64, glob, json, os, sys
corpus = sys.argv[1]
def b64u(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
def tpm2b(buf):
    n = int.from_bytes(buf[:2], "big")
    return buf[:2 + n], buf[2 + n:]
seen = set()
def put(target, name, data):
    if data in seen:
        return
    seen.add(data)
    open(f"{corpus}/{target}/{name}", "wb").write(data)
for path in sorted(glob.glob(f"{corpus}/token_*/*.json")):
    stem = os.path.basename(path)[:-5]
    kind = os.path.basename(os.path.dirname(path))[6:]
    t = json.load(open(path))
    if isinstance(t, list):
        t = t[0]
    blob = None
    if kind == "sealroot":
        blob = base64.b64decode(t["tpm2_blob"])
        put("tpm_public", f"{kind}-{stem}-srk.bin", base64.b64decode(t["tpm2_srk_public"]))
        if "tpm2_policy_key" in t:
            tmpl = base64.b64decode(t["tpm2_policy_key"])
            put("tpm_public", f"{kind}-{stem}-policy-key.bin", len(tmpl).to_bytes(2, "big") + tmpl)
    elif kind == "systemd":
        b = t["tpm2-blob"]
        blob = base64.b64decode(b[0] if isinstance(b, list) else b)
        if "tpm2_srk" in t:
            put("esys_tr", f"{stem}.bin", base64.b64decode(t["tpm2_srk"]))
    elif kind == "clevis":
        h = json.loads(b64u(t["jwe"]["protected"]))
        c = h.get("clevis", {})
        tpm2 = c.get("tpm2")
        if tpm2 is None and "sss" in c:
            for inner in c["sss"].get("jwe", []):
                ih = json.loads(b64u(inner.split(".")[0]))
                tpm2 = ih.get("clevis", {}).get("tpm2") or tpm2
        if tpm2:
            blob = b64u(tpm2["jwk_priv"]) + b64u(tpm2["jwk_pub"])
    if blob:
        put("tpm_blob", f"{kind}-{stem}.bin", blob)
        priv, rest = tpm2b(blob)
        pub, rest = tpm2b(rest)
        put("tpm_public", f"{kind}-{stem}-sealed.bin", pub)
EOF

# Approvals, PCR value lists and files, configuration, event logs, PE images.
cp tests/testdata/eventlog/*.bin "$C/eventlog/"
printf '7:sha256=%s,9:sha256=%s' "$zeros" "$(printf '%064d' 9)" >"$C/pcr_values/list.txt"
printf '0=%s, 7=%s' "$(printf '%040d' 0)" "$(printf '%040d' 7)" >"$C/pcr_values/list-sha1.txt"
printf '{"pcr_bank":"sha256","pcr_values":{"4":"%s","9":"%s"},"events":[]}' "$zeros" "$zeros" \
    >"$C/pcr_values/predict.json"
printf '0+7, 15' >"$C/pcr_values/pcr-list.txt"
cat >"$C/initrd_config/full.conf" <<'EOF'
# sealroot trusted configuration
fence_pcr=15
srk_handle=0x81000001
srk_name=000bf9b0b81ed46336e20f33f27195c23eb7033337945da10724316e1ec0d137ec27
tcti=swtpm:host=127.0.0.1,port=2321
EOF
printf 'srk_name = tpm\nfence_pcr=7\ntcti=device:/dev/tpmrm0\n' >"$C/initrd_config/tpm.conf"
printf '%s' "$age_recipient" >"$C/initrd_config/age-recipient.txt"
printf 'cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv-cbdefghi-jklnrtuv\n' >"$C/initrd_config/recovery-key.txt"
printf 'BOOT_IMAGE=/vmlinuz root=/dev/mapper/root ro quiet initrd=initrd\n' >"$C/initrd_config/cmdline.txt"
python3 fuzz/make-pe.py "$C/pe_image"
echo "seeds: $(find "$C" -type f | wc -l) files, $(du -sh "$C" | cut -f1)"
