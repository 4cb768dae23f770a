/* levels/f64_avx512.c -- the float64 kernels of the avx512 level: every op of
 * csrc/kernels compiled over simd/avx512.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#include "attnx_internal.h"
#if defined(ATTNX_HAVE_X86)
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) b64
#include "simd/avx512.h"
#include "kernels/ops.h"
#endif
