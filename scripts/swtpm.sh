# Sourced by the demo and the benchmark: one private swtpm on a free TCP port pair,
# stopped by its PID on exit. Needs $WORK (a scratch dir).

SWTPM_PID=""
SWTPM_PORT=""

swtpm_start() {
    mkdir -p "$WORK/tpm"
    tries=0
    while [ $tries -lt 20 ]; do
        tries=$((tries + 1))
        # A random even port; swtpm takes PORT for commands and PORT+1 for control.
        SWTPM_PORT=$(( ( $(od -An -N2 -tu2 /dev/urandom) % 20000 ) * 2 + 20000 ))
        swtpm socket --tpm2 --tpmstate dir="$WORK/tpm" \
            --server type=tcp,port=$SWTPM_PORT,bindaddr=127.0.0.1 \
            --ctrl type=tcp,port=$((SWTPM_PORT + 1)),bindaddr=127.0.0.1 \
            --flags not-need-init,startup-clear \
            --log file="$WORK/swtpm.log",level=${SWTPM_LOG_LEVEL:-1} >/dev/null 2>&1 &
        SWTPM_PID=$!
        i=0
        while [ $i -lt 100 ]; do
            if ! kill -0 "$SWTPM_PID" 2>/dev/null; then break; fi
            if (exec 3<>/dev/tcp/127.0.0.1/$SWTPM_PORT) 2>/dev/null; then
                export TCTI="swtpm:host=127.0.0.1,port=$SWTPM_PORT"
                return 0
            fi
            sleep 0.05
            i=$((i + 1))
        done
        swtpm_stop
    done
    echo "could not start swtpm" >&2
    return 1
}

swtpm_stop() {
    if [ -n "$SWTPM_PID" ]; then
        kill "$SWTPM_PID" 2>/dev/null || true
        wait "$SWTPM_PID" 2>/dev/null || true
        SWTPM_PID=""
    fi
}

# A power cycle: PCRs back to their reset values, the SRK stays.
swtpm_reset() {
    swtpm_stop
    swtpm_start
}

# The same, in place (same process and port): an orderly TPM2_Shutdown (else the TPM
# counts a dictionary-attack failure), TPM2_Init through the control channel, then
# TPM2_Startup(CLEAR).
swtpm_reboot() {
    tpm2_shutdown -c -T "$TCTI" >/dev/null 2>&1
    swtpm_ioctl --tcp 127.0.0.1:$((SWTPM_PORT + 1)) -i >/dev/null
    tpm2_startup -c -T "$TCTI" >/dev/null 2>&1
}
