# make stress: long reliability and adversarial runs (issue 8): power loss, full disk, tampered bundles,
# hostile files, hostile clients. Prints a table and writes reports/stress.json and reports/stress.md.
# Replay a run: AUTLEARN_TEST_SEED=<seed it printed> make stress. More options: STRESS_ARGS="--help".
# Full-disk scenarios mount small tmpfs file systems (root); without that right they are skipped, saying why.
STRESS_ARGS ?=

.PHONY: stress
stress: $(STAMP)
	$(BIN)/python tools/stress.py $(STRESS_ARGS)
