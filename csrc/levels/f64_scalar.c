/* levels/f64_scalar.c -- the float64 kernels of the scalar level: every op of
 * csrc/kernels compiled over simd/scalar.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#include "attnx_internal.h"
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) s64
#include "simd/scalar.h"
#include "kernels/ops.h"
