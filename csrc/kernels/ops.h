/*
 * kernels/ops.h -- every op, compiled once per level file (csrc/levels):
 * the level file has selected the element type (ATTNX_F32 or not), the ISA
 * vocabulary (simd/<isa>.h) and its column of kernels/names.h.
 */
#include <math.h>   /* INFINITY, NAN: macros only, no libm call */

#include "kernels/names.h"
#include "kernels/vexp.h"
#include "attnx_internal_additive.h"
#include "kernels/vtanh.h"   /* the additive scores and softcap */
#include "kernels/exp.c"
#include "kernels/dot_scores.c"
#include "kernels/context.c"
#include "kernels/softmax.c"
#include "kernels/log_softmax.c"
#include "kernels/attend.c"
#include "kernels/backward.c"
#include "kernels/table.c"
#if !defined(ATTNX_F32)
#include "kernels/additive.c"
#endif
