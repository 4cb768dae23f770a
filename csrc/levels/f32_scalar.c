/* levels/f32_scalar.c -- the float32 kernels of the scalar level: every op of
 * csrc/kernels compiled over simd/scalar.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#define ATTNX_F32 1
#include "attnx_internal_f32.h"
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) s32
#include "simd/scalar.h"
#include "kernels/ops.h"
