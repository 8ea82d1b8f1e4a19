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

.PHONY: eval-tail eval-tail-clean

eval-tail: $(STAMP)
	@mkdir -p reports build/tail
	$(BIN)/python tools/eval_tail.py --out reports --work build/tail $(TAIL_ARGS)

eval-tail-clean:
	rm -rf build/tail
