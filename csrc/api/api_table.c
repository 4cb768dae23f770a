/*
 * api_table.c -- the function table of attnx.h, published to C extensions
 * through the capsule attnx._C_API (see attnx_capi.h). Members are only
 * ever appended (attnx_api.def, the list it is made from, grows at its end).
 */
#include "attnx.h"

static const attnx_api_table table = {
    ATTNX_API_VERSION,
    (unsigned int)sizeof(attnx_api_table),
#define ATTNX_FN(ret, name, member, params, args) name,
#include "attnx_api.def"
#undef ATTNX_FN
};

const attnx_api_table *attnx_api(void) { return &table; }
