# The image every labelsieve Kubeflow component runs in (components/image.py names it labelsieve:latest).
#
#   docker build -t labelsieve:latest .
#   docker tag labelsieve:latest REGISTRY/labelsieve:TAG && docker push REGISTRY/labelsieve:TAG
#   labelsieve pipeline compile --image REGISTRY/labelsieve:TAG --output PATH
#
# CUDA comes from NVIDIA's runtime image; PyTorch and every other dependency come from uv.lock, exactly as
# in development (the locked torch wheels are the CUDA 13 builds). Kubeflow replaces the entrypoint with
# its executor command; `docker run labelsieve:latest ingest --preset digits` runs the CLI.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
COPY --from=uv /uv /uvx /usr/local/bin/

ENV UV_PYTHON=3.11 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1

RUN uv python install 3.11

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY labelsieve ./labelsieve
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml dvc.yaml ./
RUN uv sync --frozen --no-dev --no-editable

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin labelsieve \
    && mkdir -p /app/artifacts && chown -R labelsieve:labelsieve /app/artifacts
USER labelsieve
ENV HOME=/home/labelsieve

ENTRYPOINT ["labelsieve"]
CMD ["--help"]
