/* media._g711: G.711 µ-law / A-law conversions over bytes, by table lookup.
 *
 * The C fast path of media.g711 (the pure-Python reference there is the oracle the tests compare this
 * with, over all 65536 samples and 256 codes). Tables are computed once at import with the same
 * algorithm as the reference: the classic Sun g711.c, with negative A-law magnitudes clamped at 0,
 * and µ-law <-> A-law transcoding per the G.711 conversion tables (Tables 3 and 4).
 *
 * PCM is 16-bit signed little-endian whatever the host byte order; codes are one byte each. Every
 * function takes any C-contiguous bytes-like object and returns bytes. The tables are in _g711.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_g711.h"

static PyObject *encode(PyObject *arg, const uint8_t *table)
{
    Py_buffer view;
    PyObject *result;
    const uint8_t *in;
    uint8_t *out;
    Py_ssize_t i, n;

    if (PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "PCM must be bytes-like, not str");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len % 2) {
        PyErr_Format(PyExc_ValueError, "16-bit PCM needs an even number of bytes, got %zd", view.len);
        PyBuffer_Release(&view);
        return NULL;
    }
    n = view.len / 2;
    result = PyBytes_FromStringAndSize(NULL, n);
    if (result != NULL) {
        in = (const uint8_t *)view.buf;
        out = (uint8_t *)PyBytes_AS_STRING(result);
        for (i = 0; i < n; i++)
            out[i] = table[(uint16_t)(in[2 * i] | (in[2 * i + 1] << 8))];
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *decode(PyObject *arg, uint8_t (*table)[2])
{
    Py_buffer view;
    PyObject *result;
    const uint8_t *in;
    uint8_t *out;
    Py_ssize_t i;

    if (PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "G.711 data must be bytes-like, not str");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    result = PyBytes_FromStringAndSize(NULL, view.len * 2);
    if (result != NULL) {
        in = (const uint8_t *)view.buf;
        out = (uint8_t *)PyBytes_AS_STRING(result);
        for (i = 0; i < view.len; i++) {
            out[2 * i] = table[in[i]][0];
            out[2 * i + 1] = table[in[i]][1];
        }
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *translate(PyObject *arg, const uint8_t *table)
{
    Py_buffer view;
    PyObject *result;
    const uint8_t *in;
    uint8_t *out;
    Py_ssize_t i;

    if (PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "G.711 data must be bytes-like, not str");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    result = PyBytes_FromStringAndSize(NULL, view.len);
    if (result != NULL) {
        in = (const uint8_t *)view.buf;
        out = (uint8_t *)PyBytes_AS_STRING(result);
        for (i = 0; i < view.len; i++)
            out[i] = table[in[i]];
    }
    PyBuffer_Release(&view);
    return result;
}

static PyObject *py_ulaw_encode(PyObject *self, PyObject *arg) { (void)self; return encode(arg, ulaw_enc); }
static PyObject *py_alaw_encode(PyObject *self, PyObject *arg) { (void)self; return encode(arg, alaw_enc); }
static PyObject *py_ulaw_decode(PyObject *self, PyObject *arg) { (void)self; return decode(arg, ulaw_dec); }
static PyObject *py_alaw_decode(PyObject *self, PyObject *arg) { (void)self; return decode(arg, alaw_dec); }
static PyObject *py_ulaw_to_alaw(PyObject *self, PyObject *arg) { (void)self; return translate(arg, u2a); }
static PyObject *py_alaw_to_ulaw(PyObject *self, PyObject *arg) { (void)self; return translate(arg, a2u); }

static PyMethodDef methods[] = {
    {"ulaw_encode", py_ulaw_encode, METH_O, "µ-law encode 16-bit LE PCM bytes to code bytes."},
    {"alaw_encode", py_alaw_encode, METH_O, "A-law encode 16-bit LE PCM bytes to code bytes."},
    {"ulaw_decode", py_ulaw_decode, METH_O, "µ-law decode code bytes to 16-bit LE PCM bytes."},
    {"alaw_decode", py_alaw_decode, METH_O, "A-law decode code bytes to 16-bit LE PCM bytes."},
    {"ulaw_to_alaw", py_ulaw_to_alaw, METH_O, "Transcode µ-law codes to A-law (G.711 Table 3)."},
    {"alaw_to_ulaw", py_alaw_to_ulaw, METH_O, "Transcode A-law codes to µ-law (G.711 Table 4)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "media._g711",
    "G.711 µ-law/A-law table lookups over bytes (the C fast path of media.g711).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__g711(void)
{
    g711_build_tables();
    return PyModule_Create(&module);
}
