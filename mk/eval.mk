# Accuracy evaluation (issue 7): `make eval` (included by the top-level Makefile, which defines PYTHON, BIN
# and STAMP — the development venv with the builder, the daemon and TensorFlow).
#
#   make eval   -> reports/eval.json, reports/eval.md, reports/eval_*.png, reports/eval_zh.{json,md},
#                  reports/eval_camera.{json,md}
#
# Both scenarios, every method, per simulated user (tools/evaluate.py; sizes, epochs and seeds are its
# defaults, written into the report). About 14 minutes on a 2-core machine with the bundles built, 18 from
# scratch (they take ~4 min and are kept under build/eval/). The keyboard's second group
# of users are the topic files of Debian's `fortunes` package; the Chinese group (tools/eval_zh.py: a cjk
# bundle on fortunes-zh's `chinese`, the poets of `tang300` + `song100` as users, every method as for the English
# users; reports/eval_zh.*) needs `fortunes-zh`: about 10 minutes at the defaults on the loaded 2-core machine,
# 2.3 of them the bundle's build (`make eval EVAL_ARGS='--scenario keyboard-zh'` runs it alone). Both packages are
# installed here when missing. Bundles are built once under build/eval/ and reused; `make eval-clean` removes them.

PYTHON ?= python3
BIN    ?= .venv/bin
STAMP  ?= .venv/.installed

EVAL_OUT  ?= reports
EVAL_WORK ?= build/eval
EVAL_ARGS ?=

.PHONY: eval eval-deps eval-clean eval-camera eval-camera-deps

eval-deps: eval-camera-deps
	@for pkg in fortunes fortunes-zh; do \
		if ! dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | grep -q '^install ok installed'; then \
			echo "installing Debian package: $$pkg (the keyboard users' text)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null || exit 1; \
		fi; \
	done

eval: $(STAMP) eval-deps
	@mkdir -p $(EVAL_OUT) $(EVAL_WORK)
	$(BIN)/python tools/evaluate.py --out $(EVAL_OUT) --work $(EVAL_WORK) $(EVAL_ARGS)
	$(BIN)/python tools/eval_camera.py --out $(EVAL_OUT) --work build/eval-camera --wheels build/wheels $(EVAL_CAMERA_ARGS)

eval-clean:
	rm -rf $(EVAL_WORK) build/eval-camera

# The RGB scenario (issue 13): users' own photo classes on a MobileNetV2 bundle -> reports/eval_camera.{json,md}.
# Its photos include scikit-image's data images, read out of the scikit-image wheel that eval-camera-deps fetches
# with pip at deps time (nothing is downloaded at run time; the wheel is not installed). `make eval` runs it after
# evaluate.py (about 7 minutes on a loaded 2-core machine, the bundle's build included); `make eval-camera` alone.
EVAL_CAMERA_ARGS ?=
SKIMAGE_WHEEL_VERSION = 0.26.0

eval-camera-deps:
	@ls build/wheels/scikit_image-$(SKIMAGE_WHEEL_VERSION)-*.whl >/dev/null 2>&1 || \
		$(BIN)/pip download --no-deps --only-binary :all: -q -d build/wheels scikit-image==$(SKIMAGE_WHEEL_VERSION)

eval-camera: $(STAMP) eval-camera-deps
	@mkdir -p $(EVAL_OUT)
	$(BIN)/python tools/eval_camera.py --out $(EVAL_OUT) --work build/eval-camera --wheels build/wheels $(EVAL_CAMERA_ARGS)
