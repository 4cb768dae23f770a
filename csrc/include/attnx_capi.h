/*
 * attnx_capi.h -- call attnx from a C extension module, through the function
 * table attnx publishes in the capsule `attnx._C_API` (the pattern of
 * NumPy's import_array()). Nothing to link: the kernels stay in attnx.
 *
 *     #include "attnx_capi.h"        // from attnx.get_include()
 *
 *     PyMODINIT_FUNC PyInit_mymod(void) {
 *         if (import_attnx() < 0) return NULL;    // ImportError set
 *         ...
 *     }
 *     ...
 *     Py_BEGIN_ALLOW_THREADS
 *     rc = attnx_attend(q, K, V, T, d, dv, scale, NULL, ctx, NULL);
 *     Py_END_ALLOW_THREADS
 *
 * After import_attnx() the functions of attnx.h are callable under their own
 * names with their own signatures (static inline callers through the table,
 * made from attnx_api.def like the prototypes they replace). Every
 * translation unit that calls them must call import_attnx() once (the table
 * pointer is static, as NumPy's is by default).
 *
 * The table (attnx_api_table in attnx.h) only ever grows at its end, and its
 * version field counts those additions: import_attnx() refuses an installed
 * attnx older than this header with a clear ImportError.
 */
#ifndef ATTNX_CAPI_H
#define ATTNX_CAPI_H

#include <Python.h>

/* the types, constants and table of attnx.h, without its prototypes (the
 * names are macros below) */
#define ATTNX_NO_PROTOTYPES
#include "attnx.h"

/* The oldest table version this extension accepts: by default the one this
 * header describes. (Overridable to test the refusal path.) */
#ifndef ATTNX_CAPI_REQUIRED_VERSION
#define ATTNX_CAPI_REQUIRED_VERSION ATTNX_API_VERSION
#endif

static const attnx_api_table *attnx_capi_table = NULL;

/* 0 on success; -1 with ImportError (or the import's own error) set. */
static int import_attnx(void)
{
    const attnx_api_table *t = (const attnx_api_table *)PyCapsule_Import("attnx._C_API", 0);
    if (t == NULL) return -1;
    if (t->version < ATTNX_CAPI_REQUIRED_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "the installed attnx provides C API version %u, but this extension was "
                     "built against version %u (attnx_capi.h): upgrade attnx",
                     (unsigned)t->version, (unsigned)ATTNX_CAPI_REQUIRED_VERSION);
        return -1;
    }
    attnx_capi_table = t;
    return 0;
}

/* Each function of attnx.h calls through the table (import_attnx() first). */
#define ATTNX_FN(ret, name, member, params, args) \
    static inline ret name params { return attnx_capi_table->member args; }
#include "attnx_api.def"
#undef ATTNX_FN

#endif /* ATTNX_CAPI_H */
