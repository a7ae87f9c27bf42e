"""The BentoML service (``service.service``) and what it is made of."""

import os

# One BLAS thread per worker (scale out with RECSAE_WORKERS / replicas), set before NumPy loads
# OpenBLAS: a batch's small matrix-matrix products (32 users x 1.7k items) take ~0.1 ms on one
# thread and 30-60 ms with two OpenBLAS threads spinning against the rest of a busy machine
# (measured on this 2-core host, benchmarks/RESULTS.md "The hot path").
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
