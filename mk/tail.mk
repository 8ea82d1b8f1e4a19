# Learning below the head (issue 14): `make eval-tail` (included by the top-level Makefile, which defines BIN and
# STAMP — the development venv with the builder, the daemon and TensorFlow).
#
#   make eval-tail   -> reports/tail.json, reports/tail.md
#
# Head-only vs last_block vs last2_blocks tails through real daemon rounds, for make eval's UCI-digits users
# (centralised/FedAvg/local-only read from reports/eval.json) and a new-classes group (base on digits 0-4,
# users bring 5-9), and `chosen`: a bundle carrying all three cuts, the board choosing per user by the holdout.
# Eight bundles are built once under build/tail/ (~10 min each on a busy 2-core machine); measured rounds are
# kept in build/tail/rounds.json. `make eval-tail-clean` removes both. The chosen column alone, smaller (~15 min: two
# bundles ~2 min each, the rounds ~10 min; its rounds are kept in build/tail-chosen/rounds.json, delete them to
# measure again):
#   make eval-tail TAIL_ARGS="--cuts chosen --chosen-build-args '--limit 2500 --epochs 4' --work build/tail-chosen"

BIN   ?= .venv/bin
STAMP ?= .venv/.installed
TAIL_ARGS ?=
#
#   make eval-tail-whole   -> reports/tail_whole.json, reports/tail_whole.md
#
# The issue's cost target to the same accuracy (tools/eval_tail_whole.py): the board's deepest cut (last2_blocks)
# round against whole-model fine-tuning of the same pretrained CNN (Keras, and through the builtin-only TFLite
# `train` signature of tools/tflite_whole.py, timed until it reaches the round's test accuracy), for the
# new-classes users and the first 3 UCI users (TAIL_WHOLE_ARGS="--uci-users 10": all). Small bundles
# (`--limit 2500 --epochs 4`, ~3 min each) under build/tail-whole/, per-user results kept in
# build/tail-whole/whole_rounds.json.
TAIL_WHOLE_ARGS ?=

.PHONY: eval-tail eval-tail-clean eval-tail-whole

eval-tail: $(STAMP)
	@mkdir -p reports build/tail
	$(BIN)/python tools/eval_tail.py --out reports --work build/tail $(TAIL_ARGS)

eval-tail-clean:
	rm -rf build/tail

eval-tail-whole: $(STAMP)
	@mkdir -p reports build/tail-whole
	$(BIN)/python tools/eval_tail_whole.py --out reports --work build/tail-whole $(TAIL_WHOLE_ARGS)
