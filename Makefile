# The README's commands. Each target bootstraps first, so it works on a fresh machine.
.PHONY: bootstrap run test lint

# Resolved after bootstrap ran (recursive =): uv on PATH, else the copy pip installed.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	$(UV) run dvc repro
	@$(UV) run python -c "import json; h = json.load(open('artifacts/ssl/history.json')) or \
	json.load(open('artifacts/warmup/history.json')); n = json.load(open('artifacts/labels/noise.json')); \
	print('actual noise rate %.3f; last epoch: test accuracy %.4f, noisy-val accuracy %.4f' % \
	(n['train']['actual_noise_rate'], h[-1]['test_acc'], h[-1]['val_acc'])); \
	print('networks: artifacts/ssl/net1.pt, net2.pt; co-divide: artifacts/ssl/partition.npz')"

test: bootstrap
	$(UV) run ruff check .
	$(UV) run pytest -q

lint: bootstrap
	$(UV) run ruff check .
	$(UV) run ruff format --check .
