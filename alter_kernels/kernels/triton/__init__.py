"""Triton kernels (GPU; on the CPU only under TRITON_INTERPRET=1, which is how CI tests them).

Import is lazy: nothing here is imported unless Triton is installed.
"""
