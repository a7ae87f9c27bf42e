"""The BentoML service (``service.service``) and what it is made of."""

from service.config import set_env_default

# One BLAS thread per worker (scale out with RECSAE_WORKERS / replicas), set before NumPy loads
# OpenBLAS: a batch's small matrix-matrix products (32 users x 1.7k items) take ~0.1 ms on one
# thread and 30-60 ms with two OpenBLAS threads spinning against the rest of a busy machine
# (measured on this 2-core host, benchmarks/RESULTS.md "The hot path").
set_env_default("OPENBLAS_NUM_THREADS", "1")
