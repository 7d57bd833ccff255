"""Compile every Triton kernel for a GPU target on a machine without one.

    python -m kernels.compile_check [--arch 90]

Prints each kernel with the stages it reached (ttir ... ptx, cubin). Run without TRITON_INTERPRET.
"""
from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .beta_triton import BLOCK, MAX_TRIES, _beta_sample_kernel
from .sequence_triton import BLOCK_ROWS, _sequence_scores_kernel

KERNELS = {
    "beta_sample": (
        _beta_sample_kernel,
        {"alpha_ptr": "*fp32", "beta_ptr": "*fp32", "out_ptr": "*fp32", "flag_ptr": "*i32", "n": "i64", "key": "i64",
         "BLOCK": "constexpr", "MAX_TRIES": "constexpr"},
        {"BLOCK": BLOCK, "MAX_TRIES": MAX_TRIES},
    ),
    "sequence_scores": (
        _sequence_scores_kernel,
        {"actions_ptr": "*i32", "ages_ptr": "*fp32", "lengths_ptr": "*i32", "theta_ptr": "*fp32",
         "lift_ptr": "*fp32", "out_ptr": "*fp32", "flag_ptr": "*i32", "n_rows": "i32", "n_actions": "i32",
         "window": "i32", "inv_half_life_s": "fp32", "BLOCK_ROWS": "constexpr", "WINDOW": "constexpr"},
        {"BLOCK_ROWS": BLOCK_ROWS, "WINDOW": 32},
    ),
}


def compile_all(arch: int = 90) -> dict[str, list[str]]:
    """Kernel name to the compiled stages, for CUDA compute capability ``arch``."""
    target = GPUTarget("cuda", arch, 32)
    out = {}
    for name, (fn, signature, constexprs) in KERNELS.items():
        compiled = triton.compile(ASTSource(fn, signature=signature, constexprs=constexprs), target=target)
        out[name] = list(compiled.asm.keys())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for Hopper")
    args = parser.parse_args()
    for name, stages in compile_all(args.arch).items():
        print(f"{name}: {', '.join(stages)}")


if __name__ == "__main__":
    main()
