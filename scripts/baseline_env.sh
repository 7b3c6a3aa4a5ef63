# Source this to run rtlab as a baseline x86-64 machine would: the same code on every CPU.
#   source scripts/baseline_env.sh && jupyter lab        (or: bash -c 'source ...; pytest ...')
# numba, numpy and OpenBLAS each pick CPU-specific code at run time; these variables pin all three
# to a baseline, so that, with the locked libraries (requirements/lock.txt), two x86-64 machines
# compute the same bits. Slower (no AVX). See docs/notebooks.md for what each one changes and
# how much the notebooks' figures move against the host's own code.
export NUMBA_CPU_NAME=generic                                   # numba: baseline x86-64 code (no AVX)
export NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR"  # numpy: its x86-64-v2 kernels only
export OPENBLAS_CORETYPE=Nehalem                                # OpenBLAS: SSE4.2 kernels on any CPU
export NUMBA_NUM_THREADS=1                                      # one thread (results do not depend on it; speed does)
