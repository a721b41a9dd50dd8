# The README's commands. Each target bootstraps first, so it works on a fresh machine.
.PHONY: bootstrap run test lint

# Resolved after bootstrap ran (recursive =): uv on PATH, else the copy pip installed.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	$(UV) run dvc repro
	@$(UV) run python -c "import json; r = json.load(open('artifacts/labels/noise.json')); \
	print('dataset: artifacts/dataset  labels: artifacts/labels'); \
	print('actual noise rate: train %.4f, val %.4f' % (r['train']['actual_noise_rate'], r['val']['actual_noise_rate']))"

test: bootstrap
	$(UV) run ruff check .
	$(UV) run pytest -q

lint: bootstrap
	$(UV) run ruff check .
	$(UV) run ruff format --check .
