/* levels/f64_neon.c -- the float64 kernels of the neon level: every op of
 * csrc/kernels compiled over simd/neon.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#include "attnx_internal.h"
#if defined(ATTNX_HAVE_NEON)
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) n64
#include "simd/neon.h"
#include "kernels/ops.h"
#endif
