/*
 * kernels/ops.h -- every op, compiled once per level file (csrc/levels):
 * the level file has selected the element type (ATTNX_F32 or not), the ISA
 * vocabulary (simd/<isa>.h) and its column of kernels/names.h.
 */
#include "kernels/names.h"
#include "kernels/vexp.h"
#include "kernels/exp.c"
#include "kernels/dot_scores.c"
#include "kernels/context.c"
