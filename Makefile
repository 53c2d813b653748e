# `make run` and `make test` set everything up themselves (a .venv beside this file).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-flink live flink clean chromium jars

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/issue-platform run

# The Java jars Beam's Flink runner and Kafka IO need, fetched with Maven into ~/.apache_beam/cache/jars
# (first run only; says what it fetches; never committed). See pipelines/jars.py.
jars: $(STAMP)
	$(BIN)/python -m pipelines.jars

# The domain and pipeline tests on both cores, then the tests that start servers, one at a time (their
# emulators, brokers and JVMs are shared per session). `pytest -m "not servers"` alone is the fast loop.
test: $(STAMP) jars chromium
	$(BIN)/python -m pytest -q -n 2 -m "not servers" tests
	$(BIN)/python -m pytest -q -m servers tests

# The report's browser tests drive Debian's chromium headless; install it when absent (needs root, as in .ci/run).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
	  { echo "make: chromium is missing and could not be installed: run 'sudo apt-get install chromium'" >&2; exit 1; }

live: $(STAMP)
	$(BIN)/issue-platform live $(ARGS)

# The Kafka stream on an embedded Flink cluster, in a private network namespace (as root): Beam's Java
# gRPC servers (job server, SDK harness) listen on every interface, and there they reach only loopback.
flink: $(STAMP) jars
	unshare --net -- sh -c 'ip link set lo up && exec $(BIN)/issue-platform live --runner flink $(ARGS)'

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

# The Kafka stream on Flink measured (docs/scaling.md), in a private network namespace as `make flink`.
bench-flink: $(STAMP) jars
	unshare --net -- sh -c 'ip link set lo up && exec $(BIN)/python bench/flink_stream.py $(ARGS)'

clean:
	rm -rf out bench/data .pytest_cache
