/* levels/f32_neon.c -- the float32 kernels of the neon level: every op of
 * csrc/kernels compiled over simd/neon.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#define ATTNX_F32 1
#include "attnx_internal_f32.h"
#if defined(ATTNX_HAVE_NEON)
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) n32
#include "simd/neon.h"
#include "kernels/ops.h"
#endif
