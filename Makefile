# One command to install and run the demo, one to install and run the tests (CI runs `make test` via .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
DEMO_SAMPLES ?= 400

.PHONY: install demo test test-fast bench clean browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[vision,sieve,text,train,test]"
	touch $@

demo: install
	$(VENV)/bin/djray sample-data data/demo --num-samples $(DEMO_SAMPLES) --shards 4 --format webdataset
	$(VENV)/bin/djray run configs/demo.yaml --set output.mode=overwrite

# The report's browser test renders the page in Debian's headless chromium: installed here when running as root (as CI
# does); elsewhere the test is skipped with a message saying how to enable it.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: apt-get could not install chromium: the report's browser test will be skipped"; \
	else echo "note: chromium is not installed (apt-get install -y chromium as root): the report's browser test will be skipped"; fi

test: install browser
	$(PY) -m pytest -q -m "not gpu" -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -m "not gpu and not slow" -p no:cacheprovider

bench: install
	$(PY) benchmarks/spine_throughput.py

clean:
	rm -rf data/demo out/demo
