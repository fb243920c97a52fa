# The two commands the README promises: `make demo` (the main job) and `make test` (the whole suite).
# Each runs scripts/setup.sh first, so they work on a fresh machine.
.PHONY: setup demo test inspect bench typecheck

setup:
	@bash scripts/setup.sh

# The short story (~4-5 min, as root): what the cgroup says vs what /proc says, then BBR as
# Kratos/go-zero ship it (reading /proc), the same fed lxcfs and the cgroup, and flowctl's defaults,
# in-process and through the sidecar, at 4x overload relative to a capacity measured in the same
# run (verdict table + bench/results/demo*).
demo: setup
	.venv/bin/flowctl demo cpu
	.venv/bin/python -m bench demo

inspect: setup
	.venv/bin/flowctl inspect --interval 1

# mypy --strict first (flowctl/, sidecar/, bench/, tests/, examples/), then the suite.
# pytest exit code 5 means "no tests collected": treat it as a failure, never a pass.
test: setup typecheck
	.venv/bin/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

typecheck: setup
	.venv/bin/python -m mypy
