# gpuguard: every target installs what it needs first (scripts/setup.sh is idempotent).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-unit lint proto demo bench bench-fleet fuzz clean

setup:
	@bash scripts/setup.sh

## run: collector + agent on this host, live events on stdout (Ctrl-C stops both)
run: setup
	$(VENV)/bin/gpuguard up --data-dir /var/lib/gpuguard

## test: install everything, then the whole suite (real-kernel tests must run, not skip)
test:
	@GPUGUARD_SETUP_TEST=1 bash scripts/setup.sh
	GPUGUARD_REQUIRE_BPF=1 GPUGUARD_REQUIRE_BROWSER=1 GPUGUARD_REQUIRE_PG=1 GPUGUARD_REQUIRE_NATS=1 $(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check .

test-unit: setup
	$(PY) -m pytest -q -m "not kernel"

lint: setup
	$(VENV)/bin/ruff check .

proto: setup
	bash scripts/gen_proto.sh

## fuzz: the collector's stream and query services under random and mutated input, per role (bounded)
fuzz: setup
	$(PY) -m tests.fuzz_collector --cases $${FUZZ_CASES:-5000}

demo: setup
	$(PY) -m gpuguard_cli.main demo

bench: setup
	@command -v bpftrace >/dev/null && command -v auditctl >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bpftrace auditd >/dev/null
	$(PY) bench/overhead.py
	$(PY) bench/ingest.py
	$(PY) bench/enforce.py
	$(PY) bench/hostile.py
	$(PY) bench/agent_cpu.py

## bench-fleet: a fleet on a log on this host (simulated agents, 2 collectors, 3 NATS nodes, workers, PostgreSQL)
bench-fleet:
	@GPUGUARD_SETUP_TEST=1 bash scripts/setup.sh
	$(PY) bench/fleet.py --agents 1000 --rate 20000 --seconds 20 --workers 1,2

clean:
	rm -rf $(VENV) .pytest_cache
