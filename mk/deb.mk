# Debian package of the board daemon: `make deb`, `make deb-test` (included by the top-level Makefile,
# which defines PYTHON, BIN and STAMP — the development venv that makes the bundle and fetches the wheel).
#
#   make deb       -> build/deb/autlearn_<version>_<arch>.deb, then lintian, systemd-analyze verify and
#                     systemd-analyze security --offline=true (exposure must be 2.0 or lower)
#   make deb-test  -> the package installed and run in a clean Debian 12 root (tools/deb_test.sh)
#
# dpkg-buildpackage itself never touches the network: the two inputs it needs that Debian does not carry
# are made here first — a small bundle (autlearn-build image --data mnist5k, TensorFlow of the venv, at
# build time only) and the ai-edge-litert wheel (pip download, from the package registry).

PYTHON ?= python3
BIN    ?= .venv/bin
STAMP  ?= .venv/.installed

DEB_DIR        := build/deb
DEB_VERSION    := $(shell dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_ARCH       := $(shell dpkg --print-architecture)
DEB_FILE       := $(DEB_DIR)/autlearn_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_BUNDLE     := $(DEB_DIR)/bundle
DEB_WHEELS     := $(DEB_DIR)/wheels
# The LiteRT interpreter vendored into the package (the daemon's own pin: requirements-dev.txt).
LITERT_VERSION ?= $(or $(shell sed -n 's/^ai-edge-litert==//p' requirements-dev.txt),2.3.0)
# Its wheel must fit the board's Python (/usr/bin/python3) and glibc, not the venv's.
DEB_PYVER      := $(shell /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
DEB_GLIBC_MIN  := $(shell getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc 2\.\([0-9]*\).*/\1/p')
DEB_MACHINE    := $(shell uname -m)
DEB_PLATFORMS  := $(foreach v,$(shell seq 17 $(or $(DEB_GLIBC_MIN),17)),--platform manylinux_2_$(v)_$(DEB_MACHINE))
# Debian packages the build and its checks need.
DEB_TOOLS      := debhelper dh-python python3 fakeroot patchelf lintian systemd man-db
DEB_INPUTS     := $(wildcard debian/* debian/*/* daemon/autlearn/*.py) systemd/autlearnd.service \
                  configs/autlearnd.toml README.md docs/bundle-format.md docs/protocol.md mk/deb.mk
# Exposure level ×10, as systemd-analyze's --threshold counts it: 20 = 2.0.
DEB_SECURITY_MAX ?= 20

.PHONY: deb deb-test deb-tools deb-check deb-clean

deb-tools:
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

$(DEB_WHEELS)/.litert-$(LITERT_VERSION)-py$(DEB_PYVER)-$(DEB_MACHINE): $(STAMP)
	@rm -rf $(DEB_WHEELS) && mkdir -p $(DEB_WHEELS)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version $(DEB_PYVER) \
		--implementation cp $(DEB_PLATFORMS) -d $(DEB_WHEELS) ai-edge-litert==$(LITERT_VERSION)
	@touch $@

$(DEB_FILE): $(DEB_INPUTS) $(DEB_BUNDLE)/manifest.json $(DEB_WHEELS)/.litert-$(LITERT_VERSION)-py$(DEB_PYVER)-$(DEB_MACHINE)
	@$(MAKE) --no-print-directory -f mk/deb.mk deb-tools
	@rm -f $(DEB_DIR)/autlearn_*.deb $(DEB_DIR)/autlearn_*.buildinfo $(DEB_DIR)/autlearn_*.changes
	AUTLEARN_BUNDLE=$(abspath $(DEB_BUNDLE)) AUTLEARN_WHEELS=$(abspath $(DEB_WHEELS)) \
		dpkg-buildpackage -b -us -uc -rfakeroot >$(DEB_DIR)/dpkg-buildpackage.log 2>&1 \
		|| { tail -30 $(DEB_DIR)/dpkg-buildpackage.log; exit 1; }
	@mv ../autlearn_$(DEB_VERSION)_$(DEB_ARCH).deb ../autlearn_$(DEB_VERSION)_$(DEB_ARCH).buildinfo \
		../autlearn_$(DEB_VERSION)_$(DEB_ARCH).changes $(DEB_DIR)/
	@dpkg-buildpackage -b -us -uc -T clean >/dev/null 2>&1 || true

deb: $(DEB_FILE)
	@$(MAKE) --no-print-directory -f mk/deb.mk deb-check

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
