# Debian package of the board daemon: `make deb`, `make deb-test` (included by the top-level Makefile,
# which defines PYTHON, BIN and STAMP — the development venv that makes the bundle and fetches the wheel).
#
#   make deb       -> build/deb/autlearn_<version>_<arch>.deb, then lintian, systemd-analyze verify and
#                     systemd-analyze security --offline=true (exposure must be 2.0 or lower)
#   make deb-test  -> the package installed and run in a clean Debian 12 root (tools/deb_test.sh)
#   ARCH=arm64     -> either of them for another architecture (default: this machine's): a cross build
#                     (dpkg-buildpackage -a, Debian's arm64 libc6/libstdc++6 for dpkg-shlibdeps) and a
#                     test root run through qemu-user-static (docs in debian/README.packaging.md)
#
# dpkg-buildpackage itself never touches the network: the two inputs it needs that Debian does not carry
# are made here first — a small bundle (autlearn-build image --data mnist5k, TensorFlow of the venv, at
# build time only) and the ai-edge-litert wheel (pip download, from the package registry).

PYTHON ?= python3
BIN    ?= .venv/bin
STAMP  ?= .venv/.installed

DEB_DIR        := build/deb
DEB_VERSION    := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_BUILD_ARCH := $(shell dpkg --print-architecture)
DEB_ARCH       := $(or $(ARCH),$(DEB_BUILD_ARCH))
DEB_FILE       := $(DEB_DIR)/autlearn_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_BUNDLE     := $(DEB_DIR)/bundle
DEB_WHEELS     := $(DEB_DIR)/wheels-$(DEB_ARCH)
# The LiteRT interpreter vendored into the package (the daemon's own pin: requirements-dev.txt).
LITERT_VERSION ?= $(or $(shell sed -n 's/^ai-edge-litert==//p' requirements-dev.txt),2.3.0)
# The architectures ai-edge-litert publishes Linux wheels for (Debian name -> the wheels' machine tag).
LITERT_MACHINE_amd64 := x86_64
LITERT_MACHINE_arm64 := aarch64
DEB_MACHINE    := $(LITERT_MACHINE_$(DEB_ARCH))
ifneq ($(filter deb deb-test,$(MAKECMDGOALS)),)
ifeq ($(DEB_MACHINE),)
$(error make deb ARCH=$(DEB_ARCH): there is no ai-edge-litert $(LITERT_VERSION) wheel for the architecture $(DEB_ARCH) (LiteRT publishes Linux wheels for amd64 and arm64 only) and the package vendors one; use ARCH=amd64 or ARCH=arm64)
endif
endif
# Its wheel must fit the board's Python and glibc, not the venv's: those of Debian 12 (bookworm, the
# changelog's suite), which is also what this build machine runs (/usr/bin/python3, debian/rules uses it).
DEB_PYVER      := $(shell /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
DEB_GLIBC      ?= 2.36
DEB_PLATFORMS  := $(foreach v,$(shell seq 17 $(word 2,$(subst ., ,$(DEB_GLIBC)))),--platform manylinux_2_$(v)_$(DEB_MACHINE))
# Debian packages the build and its checks need; a cross build also needs the target's C and C++
# runtime (dpkg-shlibdeps reads their symbols files) and its binutils (dh_strip).
DEB_TOOLS      := debhelper dh-python python3 fakeroot patchelf lintian systemd man-db
ifneq ($(DEB_ARCH),$(DEB_BUILD_ARCH))
DEB_HOST_GNU   := $(shell dpkg-architecture -a$(DEB_ARCH) -qDEB_HOST_GNU_TYPE 2>/dev/null)
DEB_TOOLS      += libc6:$(DEB_ARCH) libstdc++6:$(DEB_ARCH) libgcc-s1:$(DEB_ARCH) binutils-$(subst _,-,$(DEB_HOST_GNU))
DEB_CROSS      := -a$(DEB_ARCH)
endif
DEB_INPUTS     := $(wildcard debian/* debian/*/* daemon/autlearn/*.py daemon/autlearn/*/*.py) systemd/autlearnd.service \
                  configs/autlearnd.toml README.md docs/bundle-format.md docs/protocol.md mk/deb.mk
# Exposure level ×10, as systemd-analyze's --threshold counts it: 20 = 2.0.
DEB_SECURITY_MAX ?= 20

.PHONY: deb deb-test deb-tools deb-check deb-clean

deb-tools:
	@if [ "$(DEB_ARCH)" != "$(DEB_BUILD_ARCH)" ] && ! dpkg --print-foreign-architectures | grep -qx '$(DEB_ARCH)'; then \
		echo "dpkg --add-architecture $(DEB_ARCH) (to install Debian's $(DEB_ARCH) libc6 and libstdc++6 for the cross build)"; \
		dpkg --add-architecture $(DEB_ARCH) && apt-get update -qq; \
	fi
	@missing=""; for p in $(DEB_TOOLS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The bundle the package ships as /usr/share/autlearn/bundle (about two minutes on two cores).
$(DEB_BUNDLE)/manifest.json: $(STAMP) $(wildcard cloud_builder/autlearn_build/*.py)
	@mkdir -p $(DEB_DIR) && rm -rf $(DEB_BUNDLE).tmp
	@echo "building the packaged bundle: autlearn-build image --data mnist5k --degrade 1 (log: $(DEB_DIR)/bundle.log)"
	@$(BIN)/autlearn-build image --data mnist5k --degrade 1 --seed 0 --out $(DEB_BUNDLE).tmp >$(DEB_DIR)/bundle.log 2>&1 \
		|| { tail -20 $(DEB_DIR)/bundle.log; exit 1; }
	@rm -rf $(DEB_BUNDLE) && mv $(DEB_BUNDLE).tmp $(DEB_BUNDLE) && touch $@

# The wheel for the target's machine, Python and glibc, refused here (debian/check-wheel) unless every
# native library in it is an ELF file for that machine needing no newer glibc than Debian 12's.
$(DEB_WHEELS)/.litert-$(LITERT_VERSION)-py$(DEB_PYVER)-$(DEB_MACHINE): $(STAMP) debian/check-wheel
	@rm -rf $(DEB_WHEELS) && mkdir -p $(DEB_WHEELS)
	@$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(DEB_PYVER) \
		--implementation cp $(DEB_PLATFORMS) -d $(DEB_WHEELS) ai-edge-litert==$(LITERT_VERSION) \
		>$(DEB_DIR)/pip-download-$(DEB_ARCH).log 2>&1 \
		|| { tail -5 $(DEB_DIR)/pip-download-$(DEB_ARCH).log; \
		     echo "mk/deb.mk: no ai-edge-litert $(LITERT_VERSION) wheel for $(DEB_ARCH) (cp$(subst .,,$(DEB_PYVER)), manylinux_2_17..$(subst .,_,$(DEB_GLIBC))_$(DEB_MACHINE)) could be downloaded from the package registry"; exit 1; }
	@/usr/bin/python3 debian/check-wheel $(DEB_ARCH) $(DEB_GLIBC) $(DEB_WHEELS)/ai_edge_litert-*.whl
	@touch $@

$(DEB_FILE): $(DEB_INPUTS) $(DEB_BUNDLE)/manifest.json $(DEB_WHEELS)/.litert-$(LITERT_VERSION)-py$(DEB_PYVER)-$(DEB_MACHINE)
	@$(MAKE) --no-print-directory -f mk/deb.mk deb-tools ARCH=$(DEB_ARCH)
	@rm -f $(DEB_DIR)/autlearn_*_$(DEB_ARCH).deb $(DEB_DIR)/autlearn_*_$(DEB_ARCH).buildinfo $(DEB_DIR)/autlearn_*_$(DEB_ARCH).changes
	AUTLEARN_BUNDLE=$(abspath $(DEB_BUNDLE)) AUTLEARN_WHEELS=$(abspath $(DEB_WHEELS)) AUTLEARN_GLIBC=$(DEB_GLIBC) \
		dpkg-buildpackage -b $(DEB_CROSS) -us -uc -rfakeroot >$(DEB_DIR)/dpkg-buildpackage-$(DEB_ARCH).log 2>&1 \
		|| { tail -30 $(DEB_DIR)/dpkg-buildpackage-$(DEB_ARCH).log; exit 1; }
	@mv ../autlearn_$(DEB_VERSION)_$(DEB_ARCH).deb ../autlearn_$(DEB_VERSION)_$(DEB_ARCH).buildinfo \
		../autlearn_$(DEB_VERSION)_$(DEB_ARCH).changes $(DEB_DIR)/
	@dpkg-buildpackage -b $(DEB_CROSS) -us -uc -T clean >/dev/null 2>&1 || true

deb: $(DEB_FILE)
	@$(MAKE) --no-print-directory -f mk/deb.mk deb-check ARCH=$(DEB_ARCH)

# The checks `make deb` prints: lintian (no errors allowed), systemd-analyze verify of the unit as
# installed (in the unpacked package, so its ExecStart= and man pages exist) and its offline security score.
deb-check:
	@echo "== $(DEB_FILE) ($$(du -h $(DEB_FILE) | cut -f1))"
	@dpkg-deb -f $(DEB_FILE) Package Version Architecture Installed-Size Depends | sed 's/^/   /'
	@echo "== lintian"
	@lintian --fail-on error --tag-display-limit 0 $(DEB_FILE) >$(DEB_DIR)/lintian.txt 2>&1; rc=$$?; \
		grep -v 'running with root privileges' $(DEB_DIR)/lintian.txt | sed 's/^/   /'; \
		if [ $$rc -eq 0 ]; then echo "   no errors ($$(grep -c '^W:' $(DEB_DIR)/lintian.txt) warnings, explained in debian/README.packaging.md)"; \
		else echo "   lintian found errors"; exit 1; fi
	@rm -rf $(DEB_DIR)/root && dpkg-deb -x $(DEB_FILE) $(DEB_DIR)/root
	@echo "== systemd-analyze verify (the unit as packaged; ExecStart= and man pages taken from the unpacked package)"
	@mkdir -p $(DEB_DIR)/verify && sed 's|^ExecStart=/usr/bin/|ExecStart=$(abspath $(DEB_DIR)/root)/usr/bin/|' \
		$(DEB_DIR)/root/lib/systemd/system/autlearnd.service >$(DEB_DIR)/verify/autlearnd.service
	@MANPATH=$(abspath $(DEB_DIR)/root)/usr/share/man systemd-analyze verify $(DEB_DIR)/verify/autlearnd.service \
		>$(DEB_DIR)/verify.txt 2>&1; rc=$$?; \
		sed 's/^/   /' $(DEB_DIR)/verify.txt; \
		if [ $$rc -eq 0 ] && [ ! -s $(DEB_DIR)/verify.txt ]; then echo "   clean"; else echo "   verify: not clean"; exit 1; fi
	@echo "== systemd-analyze security --offline=true (must be <= $(DEB_SECURITY_MAX)/10; failed checks shown)"
	@systemd-analyze security --offline=true --threshold=$(DEB_SECURITY_MAX) --no-pager \
		$(DEB_DIR)/root/lib/systemd/system/autlearnd.service >$(DEB_DIR)/security.txt 2>&1; rc=$$?; \
		grep -v '^✓' $(DEB_DIR)/security.txt | sed 's/^/   /'; exit $$rc

deb-test: deb
	tools/deb_test.sh $(DEB_FILE)

deb-clean:
	rm -rf $(DEB_DIR) var/deb-test
