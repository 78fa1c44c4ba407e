# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test lint bench lock clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint requirements.lock --editable '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stylegen demo --output demo-output

# pytest exits 5 when it collects nothing; that is "no tests", not a failure.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Re-pin after changing ranges in pyproject.toml (keeps torch at the CPU-safe pin).
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/' > requirements.lock.new
	@mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) demo-output .pytest_cache
