# The two commands of the README. Both install into .venv first (idempotent, seconds when done).
PY := .venv/bin/python

.PHONY: install demo test bench

install:
	bash scripts/install.sh

demo: install
	$(PY) -m synrank pipeline --config jobs/configs/demo.yaml

test: install
	bash scripts/test.sh

bench: install
	$(PY) bench/losses.py && $(PY) bench/evaluate.py && $(PY) bench/train.py && $(PY) bench/generate.py
