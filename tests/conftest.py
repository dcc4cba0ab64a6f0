"""Test-session set-up: reproducible MKL kernels before anything imports torch (see saelab/__init__)."""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
