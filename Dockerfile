# syntax=docker/dockerfile:1
# Slim runtime image of the RecSAE service: NumPy + ONNX Runtime + BentoML, no torch.
#
#   docker build -t recsae-serve .                         # CPU (default)
#   docker build -t recsae-serve:gpu --build-arg VARIANT=gpu .   # onnxruntime-gpu + pip CUDA libs
#   docker run -p 3000:3000 -v $PWD/bundles/dev-ml100k:/bundle:ro recsae-serve
#   docker run --gpus all ... recsae-serve:gpu              # needs the NVIDIA container toolkit
#
# The bundle is not baked in: mount it at /bundle (or set RECSAE_BUNDLE). Policies' durable copy
# lives in /var/lib/recsae/state: mount a volume there to keep it across container restarts.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# cpu -> pip install .[cpu] (onnxruntime); gpu -> .[gpu] (onnxruntime-gpu[cuda,cudnn]).
# The two extras install the same `onnxruntime` module: exactly one of them, never both.
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md* ./
# models/ (the torch recommenders) is training code: not copied, not installed
COPY recsae ./recsae
COPY service ./service
RUN case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu" >&2; exit 1;; esac \
 && test -f README.md || echo "# RecSAE Serve" > README.md \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install ".[${VARIANT}]" \
 && /opt/venv/bin/python -c "import onnxruntime, bentoml, service.service" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM python:${PYTHON_VERSION}-slim
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="recsae-serve" \
      org.opencontainers.image.description="RecSAE: recommendations with the concepts that drove them" \
      org.opencontainers.image.variant="${VARIANT}"
RUN groupadd --system --gid 10001 recsae \
 && useradd --system --uid 10001 --gid recsae --home-dir /var/lib/recsae --create-home recsae \
 && mkdir -p /var/lib/recsae/state /var/lib/recsae/bentoml /bundle \
 && chown -R recsae:recsae /var/lib/recsae
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_DO_NOT_TRACK=True \
    BENTOML_HOME=/var/lib/recsae/bentoml \
    RECSAE_BUNDLE=/bundle \
    RECSAE_STATE_DIR=/var/lib/recsae/state \
    RECSAE_PORT=3000
WORKDIR /var/lib/recsae
USER 10001:10001
EXPOSE 3000
VOLUME ["/var/lib/recsae/state"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status != 200)"
CMD ["bentoml", "serve", "service.service:RecSAEService", "--host", "0.0.0.0", "--port", "3000"]
