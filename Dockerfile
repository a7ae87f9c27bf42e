# Slim runtime image of the RecSAE service: NumPy + ONNX Runtime + BentoML; no torch, no pip,
# no compilers, no tests (ours or the dependencies').
#
#   docker build --network host -t recsae-serve .                           # CPU (default)
#   docker build --network host -t recsae-serve:gpu --build-arg VARIANT=gpu .   # onnxruntime-gpu + pip CUDA libs
#   docker run -p 3000:3000 -v $PWD/bundles/dev-ml100k:/bundle:ro recsae-serve
#   docker run --gpus all ... recsae-serve:gpu              # needs the NVIDIA container toolkit
#
# The bundle is not baked in: mount it at /bundle (or set RECSAE_BUNDLE). Policies' durable copy
# lives in /var/lib/recsae/state: mount a volume there to keep it across container restarts.
# scripts/docker-smoke.sh builds both variants and checks the CPU one end to end; it makes
# BASE_IMAGE from Debian packages when no registry can provide it.

ARG BASE_IMAGE=python:3.11-slim

# The dependency list from pyproject.toml (its one source) for the variant:
# cpu -> the dependencies + extra `cpu` (onnxruntime) + extra `ann` (faiss-cpu: a bundle's
# approximate-retrieval index is used, not skipped with a warning); gpu -> + extra `gpu`
# (onnxruntime-gpu[cuda,cudnn]). The two onnxruntime extras install the same module: one, never both.
FROM ${BASE_IMAGE} AS reqs
ARG VARIANT=cpu
COPY pyproject.toml /src/
RUN case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu" >&2; exit 1;; esac \
 && python -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; o = p['optional-dependencies']; print(*p['dependencies'], *o[sys.argv[1]], *(o['ann'] if sys.argv[1] == 'cpu' else []), sep='\n')" "$VARIANT" >/src/requirements.txt

# The dependencies, in a layer cached on the list's content: a change elsewhere in pyproject.toml
# or in the code reuses it.
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=reqs /src/requirements.txt /src/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install -q -r /src/requirements.txt \
 && /opt/venv/bin/python -m pip uninstall -q -y pip setuptools wheel \
 && find /opt/venv/lib -depth -type d \( -name tests -o -name test \) -path "*/site-packages/*" -exec rm -rf {} + \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null
# labelled like the image: the smoke script prunes replaced (untagged) builds of either by it
LABEL org.opencontainers.image.title="recsae-serve"

# The compiled hot path (service/_hotpath.c: a batch's explanations and a body's JSON; ~8% more
# explained requests a second): built here with Debian's gcc, only its .so goes on. Optional, as
# in setup.py: where no compiler can be installed the image computes the same in NumPy/Python.
FROM ${BASE_IMAGE} AS native
COPY service/_hotpath.c /src/
RUN mkdir -p /out && cd /src && ( \
      inc=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])") \
   && { command -v gcc >/dev/null && test -f "$inc/Python.h" \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
             $(test -f "$inc/Python.h" || echo python3-dev) >/dev/null; }; } \
   && gcc -O2 -shared -fPIC -I"$inc" _hotpath.c \
        -o "/out/_hotpath$(python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")" \
  ) || echo "no C compiler: this image computes the hot path in NumPy and Python (service/hotpath.py)"
LABEL org.opencontainers.image.title="recsae-serve"

FROM ${BASE_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="recsae-serve" \
      org.opencontainers.image.description="RecSAE: recommendations with the concepts that drove them" \
      org.opencontainers.image.variant="${VARIANT}"
# Nothing installs at run time: drop the base's pip and ensurepip's bundled wheels.
RUN (python -m pip uninstall -q -y pip setuptools wheel >/dev/null 2>&1 || true) \
 && rm -rf /usr/local/bin/pip* /usr/share/python-wheels \
           "$(python -c 'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))')" \
 && ! python -m pip --version >/dev/null 2>&1 \
 && groupadd --system --gid 10001 recsae \
 && useradd --system --uid 10001 --gid recsae --home-dir /var/lib/recsae --create-home recsae \
 && mkdir -p /var/lib/recsae/state /var/lib/recsae/bentoml /bundle \
 && chown -R recsae:recsae /var/lib/recsae
COPY --from=deps /opt/venv /opt/venv
# The serve-time code, not installed (no pip here): models/ (the torch recommenders) and tests/
# stay out (.dockerignore); recsae's training modules are imported only by the offline job.
COPY recsae /opt/recsae/recsae
COPY service /opt/recsae/service
COPY --from=native /out/ /opt/recsae/service/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/recsae \
    PYTHONUNBUFFERED=1 \
    BENTOML_DO_NOT_TRACK=True \
    BENTOML_HOME=/var/lib/recsae/bentoml \
    RECSAE_BUNDLE=/bundle \
    RECSAE_STATE_DIR=/var/lib/recsae/state \
    RECSAE_HOST=0.0.0.0 \
    RECSAE_PORT=3000
# bytecode compiled here: the non-root user cannot write __pycache__ next to the code
RUN python -m compileall -q /opt/recsae \
 && python -c "import onnxruntime, bentoml, service.service"
WORKDIR /var/lib/recsae
USER 10001:10001
EXPOSE 3000
VOLUME ["/var/lib/recsae/state"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import os, sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:%s/readyz' % os.environ['RECSAE_PORT'], timeout=2).status != 200)"
CMD ["sh", "-c", "exec bentoml serve service.service:RecSAEService --host \"$RECSAE_HOST\" --port \"$RECSAE_PORT\""]
