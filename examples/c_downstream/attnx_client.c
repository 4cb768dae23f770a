/*
 * A downstream C extension using attnx through its capsule: no Python in the
 * kernel call, the GIL released around it, nothing linked against attnx.
 * Inputs come through the buffer protocol (C-contiguous float64), so this
 * module needs neither NumPy headers nor attnx's library.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "attnx_capi.h"

static int get_f64(PyObject *o, Py_buffer *b, int ndim, const char *name)
{
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (b->ndim != ndim || strcmp(b->format, "d") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous float64 array with %d dims",
                     name, ndim);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* attend(q, K, V, scale=1.0) -> list of dv floats */
static PyObject *client_attend(PyObject *self, PyObject *args)
{
    PyObject *qo, *ko, *vo, *res = NULL;
    double scale = 1.0;
    Py_buffer q, K, V;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOO|d", &qo, &ko, &vo, &scale)) return NULL;
    if (get_f64(qo, &q, 1, "q") < 0) return NULL;
    if (get_f64(ko, &K, 2, "K") < 0) goto release_q;
    if (get_f64(vo, &V, 2, "V") < 0) goto release_k;
    size_t d = (size_t)q.shape[0], T = (size_t)K.shape[0], dv = (size_t)V.shape[1];
    if ((size_t)K.shape[1] != d || (size_t)V.shape[0] != T) {
        PyErr_SetString(PyExc_ValueError, "shapes must be q (d,), K (T, d), V (T, dv)");
        goto release_v;
    }
    double *ctx = PyMem_Malloc((dv ? dv : 1) * sizeof(double));
    if (!ctx) {
        PyErr_NoMemory();
        goto release_v;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = attnx_attend((const double *)q.buf, (const double *)K.buf, (const double *)V.buf,
                      T, d, dv, scale, NULL, ctx, NULL);
    Py_END_ALLOW_THREADS
    if (rc != ATTNX_OK) {
        PyErr_SetString(PyExc_ValueError, attnx_strerror(rc));
    } else if ((res = PyList_New((Py_ssize_t)dv)) != NULL) {
        for (size_t j = 0; j < dv; j++) PyList_SET_ITEM(res, (Py_ssize_t)j, PyFloat_FromDouble(ctx[j]));
    }
    PyMem_Free(ctx);
release_v:
    PyBuffer_Release(&V);
release_k:
    PyBuffer_Release(&K);
release_q:
    PyBuffer_Release(&q);
    return res;
}

static PyObject *client_simd_level(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(attnx_simd_level());
}

static PyObject *client_api_version(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLong(attnx_capi_table->version);
}

static PyMethodDef methods[] = {
    {"attend", client_attend, METH_VARARGS, "attend(q, K, V, scale=1.0) through attnx's capsule"},
    {"simd_level", client_simd_level, METH_NOARGS, "attnx's kernel set, through the capsule"},
    {"api_version", client_api_version, METH_NOARGS, "version of the capsule table"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "attnx_client", NULL, -1, methods};

PyMODINIT_FUNC PyInit_attnx_client(void)
{
    if (import_attnx() < 0) return NULL;
    return PyModule_Create(&moduledef);
}
