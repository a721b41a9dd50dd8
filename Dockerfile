# The image every labelsieve Kubeflow component runs in (components/image.py names it labelsieve:latest).
#
#   scripts/docker_build.sh                          # local Debian base (scripts/docker_base.sh), no registry
#   scripts/docker_build.sh --base cuda              # NVIDIA's CUDA runtime base (the default below)
#   scripts/docker_build.sh --ca-bundle "$PIP_CERT"  # trust a proxy's CA while building (build secret "ca")
#   docker tag labelsieve:latest REGISTRY/labelsieve:TAG && docker push REGISTRY/labelsieve:TAG
#   labelsieve pipeline compile --image REGISTRY/labelsieve:TAG --output PATH
#
# Needs BuildKit (RUN --mount); there is no `# syntax=` line, so no frontend image is pulled. PyTorch and
# every other dependency come from uv.lock, exactly as in development (the locked torch wheels are the CUDA
# builds and bring their own CUDA libraries; they run on the CPU too). uv itself comes from PyPI, pinned.
# No ENTRYPOINT: Kubeflow and kfp's local DockerRunner give the whole command (`sh -ec ...`);
# `docker run IMAGE labelsieve ingest --preset digits` runs the CLI.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG UV_VERSION=0.13.9
# The interpreter uv uses: the base's own python3 when it matches (Debian bookworm: 3.11), else a
# uv-managed download (the Ubuntu 24.04 CUDA base has 3.12, so it downloads 3.11).
ARG PYTHON=3.11
ARG USER_UID=1000

ENV UV_PYTHON=${PYTHON} \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

# python3 with its venv module (already in the local base; from apt on the CUDA base), then uv from PyPI
# in its own venv. The optional build secret "ca" is a CA bundle pip and uv trust (corporate proxies).
RUN --mount=type=secret,id=ca \
    set -eu; \
    if ! python3 -c 'import ensurepip' 2>/dev/null; then \
        apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python3 python3-venv ca-certificates >/dev/null \
        && rm -rf /var/lib/apt/lists/*; \
    fi; \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/uv; \
    /opt/uv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"; \
    ln -s /opt/uv/bin/uv /opt/uv/bin/uvx /usr/local/bin/; \
    uv --version

WORKDIR /app
# Dependencies first, so a code change does not reinstall them; uv's download cache is a BuildKit cache
# mount (warm across builds, not in the image).
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    uv sync --frozen --no-dev --no-install-project

COPY README.md params.yaml dvc.yaml ./
COPY labelsieve ./labelsieve
COPY components ./components
COPY pipelines ./pipelines
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache/uv \
    if [ -s /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca; fi; \
    uv sync --frozen --no-dev --no-editable

# A non-root user. The CUDA base (Ubuntu 24.04) already has uid 1000 ("ubuntu"): it is replaced. HOME, the
# working folder and the local-path prefixes kfp's executor writes under on a cluster (/gcs, /minio, /s3)
# are writable by any uid (mode 1777), so the image also runs as another user: kfp's local DockerRunner
# runs it as the host user (labelsieve pipeline run-local --runner docker), OpenShift as a random uid.
RUN set -eu; \
    old="$(getent passwd "${USER_UID}" | cut -d: -f1 || true)"; \
    if [ -n "$old" ]; then userdel --remove "$old" 2>/dev/null || userdel "$old"; fi; \
    useradd --create-home --uid "${USER_UID}" --shell /usr/sbin/nologin labelsieve; \
    mkdir -p /app/artifacts /gcs /minio /s3; \
    chown labelsieve:labelsieve /app/artifacts; \
    chmod 1777 /home/labelsieve /app/artifacts /gcs /minio /s3
USER labelsieve
ENV HOME=/home/labelsieve

CMD ["labelsieve", "--help"]
