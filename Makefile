# sealroot — see README.md. Every target installs the Debian packages it needs (as root).
PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo

STATIC_BIN := target/static/sealroot

.PHONY: all build release static check-static test e2e demo demo-host bench install clean

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
	$(MAKE) check-static
	SEALROOT_BIN=$(CURDIR)/$(STATIC_BIN) $(CARGO) test --tests
	$(MAKE) e2e

# Boots a Debian 12 guest with a sealed LUKS2 root under QEMU + OVMF + swtpm (tests/vm).
e2e: static
	./scripts/deps.sh e2e
	./tests/vm/run.sh

# The static binary, the initramfs-tools integration and the dracut module. initramfs-tools
# and dracut look under /usr/share/initramfs-tools and /usr/lib/dracut whatever PREFIX is.
install: static
	install -D -m 755 $(STATIC_BIN) $(DESTDIR)$(PREFIX)/sbin/sealroot
	install -D -m 644 share/boot.sh $(DESTDIR)/usr/share/sealroot/boot.sh
	install -d $(DESTDIR)/lib/systemd/system/multi-user.target.wants
	sed 's|@SBINDIR@|$(PREFIX)/sbin|' share/sealroot-finish-provisioning.service \
		>$(DESTDIR)/lib/systemd/system/sealroot-finish-provisioning.service
	ln -sf ../sealroot-finish-provisioning.service \
		$(DESTDIR)/lib/systemd/system/multi-user.target.wants/sealroot-finish-provisioning.service
	sed 's|/usr/sbin/sealroot|$(PREFIX)/sbin/sealroot|' share/sealroot-update-approvals.service \
		>$(DESTDIR)/lib/systemd/system/sealroot-update-approvals.service
	ln -sf ../sealroot-update-approvals.service \
		$(DESTDIR)/lib/systemd/system/multi-user.target.wants/sealroot-update-approvals.service
	install -D -m 755 share/hooks/approve-next $(DESTDIR)/usr/share/sealroot/approve-next
	install -D -m 755 share/hooks/initramfs-post-update \
		$(DESTDIR)/etc/initramfs/post-update.d/sealroot
	install -D -m 755 share/hooks/kernel-postinst $(DESTDIR)/etc/kernel/postinst.d/zz-sealroot
	install -D -m 755 initramfs-tools/hooks/sealroot \
		$(DESTDIR)/usr/share/initramfs-tools/hooks/sealroot
	install -D -m 755 initramfs-tools/scripts/local-top/sealroot \
		$(DESTDIR)/usr/share/initramfs-tools/scripts/local-top/sealroot
	for f in dracut/modules.d/91sealroot/*; do \
		install -D -m 755 $$f $(DESTDIR)/usr/lib/dracut/modules.d/91sealroot/$$(basename $$f); \
	done
	chmod 644 $(DESTDIR)/usr/lib/dracut/modules.d/91sealroot/sealroot.service

# The VM demo: a guest whose sealed root unlocks itself, then the fallbacks.
demo: static
	./scripts/deps.sh e2e
	E2E_SHOW=1 ./tests/vm/run.sh

# A quick tour of the commands on an image file and a swtpm (no VM).
demo-host: release
	./scripts/deps.sh demo
	./scripts/demo-host.sh

bench: static
	./scripts/deps.sh bench
	./scripts/bench.sh

clean:
	$(CARGO) clean
