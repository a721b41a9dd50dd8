# The README's commands. Each target bootstraps first, so it works on a fresh machine.
.PHONY: bootstrap run test lint

# Resolved after bootstrap ran (recursive =): uv on PATH, else the copy pip installed.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	$(UV) run dvc repro
	@$(UV) run python scripts/summary.py

test: bootstrap
	$(UV) run ruff check .
	$(UV) run pytest -q

lint: bootstrap
	$(UV) run ruff check .
	$(UV) run ruff format --check .
