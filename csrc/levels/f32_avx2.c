/* levels/f32_avx2.c -- the float32 kernels of the avx2 level: every op of
 * csrc/kernels compiled over simd/avx2.h (this file's name gives it the
 * level's ISA flags in the Makefile and setup.py). */
#define ATTNX_F32 1
#include "attnx_internal_f32.h"
#if defined(ATTNX_HAVE_X86)
#define ATTNX_NAME(s64, a64, b64, n64, s32, a32, b32, n32) a32
#include "simd/avx2.h"
#include "kernels/ops.h"
#endif
