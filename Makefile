# sealroot — see README.md. Every target installs the Debian packages it needs (as root).
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo

STATIC_BIN := target/static/sealroot

.PHONY: all build release static check-static test fuzz crash-test e2e demo demo-host bench bench-boot doc install-files install deb clean

all: build

build:
	./scripts/deps.sh build
	$(CARGO) build

release:
	./scripts/deps.sh build
	$(CARGO) build --release

# The one binary the initrd carries: fully static, no shared objects, no dlopen.
static:
	./scripts/build-static.sh

check-static: static
	file $(STATIC_BIN) | grep -q 'statically linked'
	ldd $(STATIC_BIN) 2>&1 | grep -q 'not a dynamic executable'
	@echo "$(STATIC_BIN): statically linked, not a dynamic executable, $$(stat -c %s $(STATIC_BIN)) bytes"

# The whole suite: format, lints, unit tests and the swtpm/LUKS2 integration tests, run
# against the development build and again against the static build.
test:
	./scripts/deps.sh build test
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) test
	FUZZ_SECONDS=2 ./scripts/fuzz.sh short
	$(MAKE) check-static
	SEALROOT_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --tests
	$(MAKE) e2e

# Every parser of untrusted bytes under libFuzzer, >= 10 million executions in all
# (fuzz/README.md); `make test` runs a short pass of each target.
fuzz:
	./scripts/fuzz.sh long

# Random SIGKILLs of enroll, remove, provision/first boot and re-encryption: 1,000 trials
# (tests/crash.rs; `make test` runs a few of each).
crash-test:
	./scripts/deps.sh build test
	SEALROOT_CRASH_TRIALS=1000 $(CARGO) test --test crash -- --nocapture --test-threads=2

# Boots Debian 12 and 13 guests with a sealed LUKS2 root under QEMU + OVMF + swtpm
# (tests/vm), sealroot installed in them from the package `make deb` built.
e2e: static deb
	./scripts/deps.sh e2e
	./tests/vm/run.sh

# Man pages (sealroot(8), sealroot-VERB(8)) and shell completions, generated from the
# clap definitions by src/bin/sealroot-doc.rs.
DOC_OUT ?= target/doc-gen
doc:
	./scripts/deps.sh build
	$(CARGO) build --bin sealroot-doc
	rm -rf $(DOC_OUT)
	target/debug/sealroot-doc $(DOC_OUT)

# The static binary, the initramfs-tools integration and the dracut module, the update
# hooks, units, man pages and completions. initramfs-tools and dracut look under
# /usr/share/initramfs-tools and /usr/lib/dracut whatever PREFIX is. `install` also enables
# the units (the Debian package leaves that to dh_installsystemd).
install-files: static doc
	install -D -m 755 $(STATIC_BIN) $(DESTDIR)$(PREFIX)/sbin/sealroot
	install -D -m 644 share/boot.sh $(DESTDIR)/usr/share/sealroot/boot.sh
	install -d $(DESTDIR)/lib/systemd/system
	sed 's|@SBINDIR@|$(PREFIX)/sbin|' share/sealroot-finish-provisioning.service \
		>$(DESTDIR)/lib/systemd/system/sealroot-finish-provisioning.service
	sed 's|/usr/sbin/sealroot|$(PREFIX)/sbin/sealroot|' share/sealroot-update-approvals.service \
		>$(DESTDIR)/lib/systemd/system/sealroot-update-approvals.service
	install -D -m 755 share/hooks/approve-next $(DESTDIR)/usr/share/sealroot/approve-next
	install -D -m 755 share/hooks/initramfs-post-update \
		$(DESTDIR)/etc/initramfs/post-update.d/sealroot
	install -D -m 755 share/hooks/kernel-postinst $(DESTDIR)/etc/kernel/postinst.d/zz-sealroot
	install -D -m 644 share/etc/sealroot.conf $(DESTDIR)/etc/sealroot/sealroot.conf
	install -D -m 644 share/etc/default-sealroot $(DESTDIR)/etc/default/sealroot
	install -D -m 755 initramfs-tools/hooks/sealroot \
		$(DESTDIR)/usr/share/initramfs-tools/hooks/sealroot
	install -D -m 755 initramfs-tools/scripts/local-top/sealroot \
		$(DESTDIR)/usr/share/initramfs-tools/scripts/local-top/sealroot
	for f in dracut/modules.d/91sealroot/*; do \
		install -D -m 755 $$f $(DESTDIR)/usr/lib/dracut/modules.d/91sealroot/$$(basename $$f); \
	done
	chmod 644 $(DESTDIR)/usr/lib/dracut/modules.d/91sealroot/sealroot.service
	install -d $(DESTDIR)/usr/share/man/man8
	install -m 644 $(DOC_OUT)/man8/*.8 $(DESTDIR)/usr/share/man/man8/
	install -D -m 644 $(DOC_OUT)/completions/sealroot.bash \
		$(DESTDIR)/usr/share/bash-completion/completions/sealroot
	install -D -m 644 $(DOC_OUT)/completions/_sealroot \
		$(DESTDIR)/usr/share/zsh/vendor-completions/_sealroot
	install -D -m 644 $(DOC_OUT)/completions/sealroot.fish \
		$(DESTDIR)/usr/share/fish/vendor_completions.d/sealroot.fish

install: install-files
	install -d $(DESTDIR)/lib/systemd/system/multi-user.target.wants
	for u in sealroot-finish-provisioning sealroot-update-approvals; do \
		ln -sf ../$$u.service $(DESTDIR)/lib/systemd/system/multi-user.target.wants/$$u.service; \
	done

# The Debian package (debian/), into target/deb/, checked by lintian (dh_installinitramfs
# adds the update-initramfs trigger: a new sealroot reaches the initrd). dpkg-buildpackage
# writes next to the source tree; the results are moved. -d: Rust is rustup's, not a
# Debian build dependency.
deb:
	./scripts/deps.sh build static deb
	dpkg-buildpackage -b -us -uc -d
	mkdir -p target/deb
	mv ../sealroot_*_amd64.deb ../sealroot_*_amd64.buildinfo ../sealroot_*_amd64.changes target/deb/
	lintian --fail-on error,warning --info target/deb/sealroot_*_amd64.deb

# The VM demo: a guest whose sealed root unlocks itself, then the fallbacks.
demo: static deb
	./scripts/deps.sh e2e
	E2E_SHOW=1 ./tests/vm/run.sh bookworm/initramfs-tools

# A quick tour of the commands on an image file and a swtpm (no VM).
demo-host: release
	./scripts/deps.sh demo
	./scripts/demo-host.sh

bench: static
	./scripts/deps.sh bench
	./scripts/bench.sh

# Boot latency in the VM (not part of `make test`): sealroot against systemd-cryptsetup on
# its own systemd-tpm2 token, same guest, same PCR 7 policy; BENCH_BOOTS boots each (6).
bench-boot: static deb
	./scripts/deps.sh e2e
	./scripts/bench-boot.sh

clean:
	$(CARGO) clean
