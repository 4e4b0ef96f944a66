# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/local.yaml
# A non-zero exit fails the target, pytest's 5 ("no tests collected") included: a selection that matches
# nothing is an error, never a pass.
PYTEST := $(BIN)/python -m pytest -q

.PHONY: run test test-slow sysdeps check bench clean compiled

# `make run` installs what serving needs and nothing else; `make test` adds the test extras. Each install is
# remembered by a stamp, redone when pyproject.toml changes.
$(VENV)/.run: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[compile]'
	@touch $@

# The hot modules compiled with mypyc (issue 18; measured in bench/RESULTS.md): the scanner and the canonical fold
# (most of the redaction chain's CPU per event), the HTTP/1.1 layer on both sides (reader, framing guard, chunked
# and SSE framing, the response writer, the server and upstream protocols, flow control), the stream and policy
# relays, the output stream policy (core and its dialects: the chain's per-event path; its records, native classes
# in records.py; the chunk view's msgspec Structs stay interpreted in chat_view.py), the whole-text policy work
# (textscan.py: a request's texts and a non-streamed answer's; pii.py and safety.py subclass its ScanPolicy
# interpreted, their settings being msgspec Structs), routing and metrics (the per-event and per-request path above
# it), the `local` state backend, an admission's asks and answers (the rate-limiter's cost), the provider-run tools'
# check (providers/scope.py, every request), the access log (accesslog.py), the policy chain's per-request dispatch
# (policy/chain.py: its steps' closures were interpreted frames, 2.3 % of a redacted stream's instructions), and
# the request's coroutines (app.py, pipeline.py, attempt.py: written so that no compiled coroutine awaits inside an
# `except` or `finally`, which mypyc runs with the exception left as the thread's handled one for other tasks;
# tests/test_compiled.py refuses the shape). One group, so calls between them stay native: their code is in
# fastgw/native__mypyc.*.so, and the small .so beside each .py wins its import. The .py stays the source: any change
# to one rebuilds here (every .so under fastgw/ is this step's and is removed first, so a module taken off the list
# is never shadowed by an old build), and the stamp holds the sources' hashes, which tests/test_compiled.py compares
# (a stale .so fails there). Built in build/mypyc, where no pyproject.toml is read (setuptools would validate ours
# as a package's).
COMPILED := fastgw/scan/fold.py fastgw/scan/scanner.py \
	fastgw/proto/h1.py fastgw/proto/framing_guard.py fastgw/proto/chunked.py fastgw/proto/sse.py \
	fastgw/proto/writer.py fastgw/proto/flow.py fastgw/proto/server.py fastgw/proto/client.py \
	fastgw/state/table.py fastgw/state/core.py fastgw/state/local.py fastgw/state/answers.py fastgw/state/asks.py \
	fastgw/stream.py fastgw/policy_relay.py fastgw/routing.py fastgw/metrics.py \
	fastgw/policy/stream/core.py fastgw/policy/stream/chat.py fastgw/policy/stream/typed.py \
	fastgw/policy/stream/responses.py fastgw/policy/stream/messages.py \
	fastgw/app.py fastgw/pipeline.py fastgw/attempt.py fastgw/policy/ratelimit.py fastgw/quota.py \
	fastgw/policy/textkeys.py fastgw/policy/textscan.py fastgw/policy/stream/records.py fastgw/policy/context.py \
	fastgw/providers/base.py fastgw/providers/openai.py fastgw/providers/scope.py fastgw/upstreams.py \
	fastgw/accesslog.py fastgw/policy/chain.py
# Hand-written C, built in the same step (why, in each one's head comment): the state table's record operations
# (fastgw/state/_tablec.c), the access log's common line (fastgw/_accessline.c), the usage members of an OpenAI
# stream (fastgw/api/_usagec.c), a response's head (fastgw/proto/_headc.c), an upstream body's plain chunks
# (fastgw/proto/_dechunkc.c), plain request and response heads (fastgw/proto/_plainheadc.c), the SSE decoder's
# line-end searches (fastgw/proto/_ssec.c), the common chat chunk (fastgw/policy/stream/_chunkc.c) and the scanner's
# holdback runs (fastgw/scan/_holdc.c). Each module is named by its path; where one is not built, its caller runs its
# own Python form (table.py, accesslog.py's general path, api/sse.py's and stream.py's, writer.py's build_head_py,
# proto/dechunk.py, llhttp for every head, proto/sse.py's, the chat policy's typed view for every chunk, scanner.py's
# loops).
NATIVE_C := fastgw/state/_tablec.c fastgw/_accessline.c fastgw/api/_usagec.c fastgw/proto/_headc.c \
	fastgw/proto/_dechunkc.c fastgw/proto/_plainheadc.c fastgw/proto/_ssec.c fastgw/policy/stream/_chunkc.c \
	fastgw/scan/_holdc.c
MYPYCIFY := import sys; from setuptools import Extension, setup; from mypyc.build import mypycify; \
	c = [a for a in sys.argv[1:] if a.endswith(".c")]; \
	setup(name="fastgw-native", script_args=["build_ext", "--inplace", "--build-temp", "tmp"], \
	ext_modules=mypycify([a for a in sys.argv[1:] if a not in c], group_name="fastgw.native", target_dir="c", \
	opt_level="3") + [Extension(p[:-2].replace("/", "."), [p], extra_compile_args=["-O2", "-Wall"]) for p in c])
$(VENV)/.compiled: $(VENV)/.run $(COMPILED) $(NATIVE_C) Makefile
	@find fastgw -name '*.cpython-*.so' -delete
	@rm -rf build/mypyc && mkdir -p build/mypyc && ln -s ../../fastgw build/mypyc/fastgw
	@echo "mypyc $(COMPILED); cc $(NATIVE_C)"
	@cd build/mypyc && ../../$(BIN)/python -c '$(MYPYCIFY)' $(COMPILED) $(NATIVE_C) >build.log 2>&1 || \
		{ cat build.log; exit 1; }
	@sha256sum $(COMPILED) $(NATIVE_C) > $@

compiled: $(VENV)/.compiled

$(VENV)/.test: $(VENV)/.run
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# System packages the tests drive: systemd-analyze and systemd-socket-activate (Debian's systemd) for the unit
# and socket-activation tests, nginx (Debian's nginx-light) for the bench's reference run, wrk for the bench's load
# passes (the peer upstream profile needs its per-request scripts), redis-server (Debian's Redis 7) for the quota
# tests, each of which starts its own server on a loopback port. Installed only when
# missing, as root with apt-get; elsewhere a warning, and the tests that need them fail with the reason.
sysdeps:
	@missing=""; \
	{ command -v systemd-analyze && command -v systemd-socket-activate; } >/dev/null || missing=" systemd"; \
	{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null || missing="$$missing nginx-light"; \
	{ command -v wrk || test -x /usr/bin/wrk; } >/dev/null || missing="$$missing wrk"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "warning: missing system packages:$$missing (install them as root); tests that need them will fail" >&2; \
		exit 0; \
	fi; \
	echo "installing$$missing with apt-get"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }

# PORT=8081 serves on 127.0.0.1:8081 instead of the config's bind.
run: $(VENV)/.compiled
	$(BIN)/fastgw serve --config $(CONFIG) $(if $(PORT),--bind 127.0.0.1:$(PORT))

# The Node clients the tests drive (tests/test_node_sdks.py), exactly as tests/node/package-lock.json pins them;
# redone when the lockfile changes. Without node and npm: a warning, and those tests fail with the reason.
NODE_DIR := tests/node
$(NODE_DIR)/node_modules/.stamp: $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	@if ! command -v npm >/dev/null || ! command -v node >/dev/null; then \
		echo "warning: node and npm (Node 20+) are missing; the Node client tests will fail" >&2; \
		exit 0; \
	fi; \
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error >/dev/null && touch node_modules/.stamp

# Type checks (settings in pyproject.toml), then the whole suite except the long forms marked `slow` (each has
# a short form that runs here), on three pytest-xdist workers: most tests wait on the processes they start (and
# on their timeouts), so on a 2-core box three took 4:13 and 4:42 where two took 5:42 and 5:53 in the same hour;
# four kept a lock holder of the `local` state backend off the CPU past `state.timeout`, and the quota load test
# saw 503s. `--dist worksteal`: a worker that runs out takes tests queued for the others, so the long ones (the
# short soak, the bench runs) do not leave one worker finishing alone.
test: $(VENV)/.test $(VENV)/.compiled sysdeps $(NODE_DIR)/node_modules/.stamp
	$(BIN)/python -m mypy
	$(PYTEST) -m "not slow" -n 3 --dist worksteal

# Only the long forms: the 600 s soak (FASTGW_SOAK_SECONDS changes it) and the full bench comparison.
test-slow: $(VENV)/.test sysdeps
	$(BIN)/pip install -q -e '.[test,bench]'
	$(PYTEST) -m slow

check: $(VENV)/.run
	$(BIN)/fastgw check --config $(CONFIG)

bench: $(VENV)/.test
	$(BIN)/python -m bench run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis $(NODE_DIR)/node_modules
	find fastgw -name '*.cpython-*.so' -delete
