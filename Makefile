# The README's commands. Each target bootstraps first, so it works on a fresh machine.
.PHONY: bootstrap run test lint image

# Resolved after bootstrap ran (recursive =): uv on PATH, else the copy pip installed.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

bootstrap:
	@bash scripts/bootstrap.sh

run: bootstrap
	$(UV) run dvc repro
	@$(UV) run python scripts/summary.py

test: bootstrap
	$(UV) run ruff check .
	$(UV) run pytest -q -n 2 --dist loadfile --durations=15

lint: bootstrap
	$(UV) run ruff check .
	$(UV) run ruff format --check .

# The Docker image labelsieve:latest on the local Debian base (debootstrap; starts dockerd as root if
# needed). Other bases, a CA bundle or tag: make image IMAGE_ARGS="--base cuda --ca-bundle PATH --tag T".
image:
	bash scripts/docker_build.sh $(IMAGE_ARGS)
