/* The hot path's per-request work in C (optional: service/hotpath.py falls back to the NumPy
 * kernel and to dicts + orjson when this module is not compiled).
 *
 * Why: the service is bound by one core's worth of Python under the GIL (the event loop, and the
 * batch thread between ONNX Runtime calls). An explained request adds ~35 small NumPy calls to
 * its batch and ~100 small objects to its body (10 items x 8 contributions): most of what
 * explain=true costs under load (benchmarks/RESULTS.md, "The hot path"). Here both are one call
 * each: `explain` decomposes a batch's listed scores with the GIL released, `items` writes a
 * body's items as JSON from the numbers `explain` produced.
 *
 * `explain(xs, acts, w, idx, baseline, ids, W_dec, b_dec, item_emb, table, order)`, for each row
 * e of a batch (k latent positions, n listed items, d dimensions), the decomposition of
 * recsae.kernel.SAEKernel.explain, in float64 (NumPy's is float32; they agree to ~1e-7):
 *   z'_a = acts[e,a] (1 - w[e,a]), b' = (1 - baseline[e]) b_dec, dir_a = W_dec[idx[e,a]]
 *   contribution[a, i] = z'_a dir_a . item_i        bias[i] = b' . item_i
 *   error[i] = (xs[e] - sum_a z'_a dir_a - b') . item_i
 * written into the caller's `table` (E, n + 1, k + 2) float64: per item its k contributions,
 * bias, error, and a last row with the activations acts[e] (all rounded to 6 decimals as
 * np.round does), and `order` (E, n, k) int64: per item the firing positions (acts > 0; a
 * TopK code lists them first) by contribution, largest first (ties: lower position), the rest -1.
 *
 * `items(ids, scores, item_ids, titles, table, order, parts, strengths, top)` writes a body's `items`
 * and `active_latents` as two JSON arrays, returned as (bytes, bytes) (input checked; a
 * violation raises, and the caller writes the body in Python):
 *   ids      list[int]    the listed items' catalogue indices, best first
 *   scores   list[float]  their scores, already rounded to 6 decimals
 *   item_ids, titles      sequences of str indexed by catalogue index
 *   table    None (not explained), or one row of `explain`'s table: (>= n + 1, k + 2) float64,
 *            its last row the activations
 *   order    its `order` row: (>= n, k) int64; each item lists positions up to the first -1
 *   parts    one per firing position (none when not explained): the concept's prebuilt JSON
 *            (service.concepts.Described.json: 5 byte strings around the per-request fields)
 *   strengths None (nothing suppressed) or per position the suppression strength (0: none)
 *   top      0: every contribution; else each item's first `top`, the rest summed in `other`
 * Bytes: the same as orjson's (and pydantic's) for the same body: keys in the schema's order;
 * every float on the wire is rounded to 6 decimals (service.core.DECIMALS), so it is written as
 * the exact decimal m / 10^6 (m = rint(v * 1e6)) after checking that this decimal reads back as
 * v, in orjson's notation (1e-6 .. 9e-6 with an exponent); otherwise (|v| >= 1e9, or not so
 * rounded) from Python's repr, in orjson's notation too. Non-finite: null, as orjson writes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define HOTPATH_API 3

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    char small[16384];
} Out;

static int out_reserve(Out *o, Py_ssize_t extra) {
    if (o->len + extra <= o->cap) return 0;
    Py_ssize_t cap = o->cap * 2;
    while (cap < o->len + extra) cap *= 2;
    char *nb;
    if (o->buf == o->small) {
        nb = PyMem_Malloc(cap);
        if (nb) memcpy(nb, o->small, o->len);
    } else {
        nb = PyMem_Realloc(o->buf, cap);
    }
    if (!nb) { PyErr_NoMemory(); return -1; }
    o->buf = nb;
    o->cap = cap;
    return 0;
}

static int out_put(Out *o, const char *s, Py_ssize_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

#define PUT_LIT(o, lit) out_put((o), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* v as orjson writes it: Python's shortest repr, but exponents without zero padding (1e-7, not
 * 1e-07) and the decade 1e-5 in decimals (0.000015, not 1.5e-05). */
static int out_repr(Out *o, double v) {
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return -1;
    char *e = strchr(s, 'e');
    int rc;
    if (!e || e[1] != '-') {
        rc = out_put(o, s, (Py_ssize_t)strlen(s));
    } else {
        int exp = atoi(e + 2);
        char tmp[64];
        int p = 0;
        if (exp == 5) {
            const char *m = s;
            if (*m == '-') tmp[p++] = *m++;
            memcpy(tmp + p, "0.0000", 6);
            p += 6;
            for (; m < e; m++)
                if (*m != '.') tmp[p++] = *m;
        } else {
            p = (int)(e - s);
            memcpy(tmp, s, (size_t)p);
            p += snprintf(tmp + p, sizeof tmp - (size_t)p, "e-%d", exp);
        }
        rc = out_put(o, tmp, p);
    }
    PyMem_Free(s);
    return rc;
}

static int out_double(Out *o, double v) {
    if (!isfinite(v)) return PUT_LIT(o, "null");
    if (fabs(v) < 1e9) {
        double scaled = rint(v * 1e6);
        long long m = (long long)scaled;
        if (scaled / 1e6 == v) {  /* v is the double nearest m / 10^6: that decimal reads back as v */
            char tmp[32];
            int p = 0;
            unsigned long long a;
            if (m < 0 || (m == 0 && signbit(v))) tmp[p++] = '-';
            a = (unsigned long long)(m < 0 ? -m : m);
            if (a && a < 10) {  /* 1e-6 .. 9e-6: exponent form, as orjson and pydantic write them */
                tmp[p++] = (char)('0' + a);
                memcpy(tmp + p, "e-6", 3);
                return out_put(o, tmp, p + 3);
            }
            unsigned long long ip = a / 1000000ULL, fp = a % 1000000ULL;
            char digits[24];
            int nd = 0;
            do { digits[nd++] = (char)('0' + ip % 10); ip /= 10; } while (ip);
            while (nd) tmp[p++] = digits[--nd];
            tmp[p++] = '.';
            if (fp == 0) {
                tmp[p++] = '0';
            } else {
                char f[6];
                for (int i = 5; i >= 0; i--) { f[i] = (char)('0' + fp % 10); fp /= 10; }
                int last = 5;
                while (f[last] == '0') last--;
                for (int i = 0; i <= last; i++) tmp[p++] = f[i];
            }
            return out_put(o, tmp, p);
        }
    }
    return out_repr(o, v);
}

static int out_long(Out *o, long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    return out_put(o, tmp, n);
}

static const char HEX[] = "0123456789abcdef";

/* A str as a JSON string, escaped as orjson escapes it: UTF-8, with '"', '\\' and control
 * characters escaped (\b \t \n \f \r short, the others \u00XX). */
static int out_str(Out *o, PyObject *s) {
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "expected str");
        return -1;
    }
    Py_ssize_t n;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);  /* raises on lone surrogates */
    if (!u) return -1;
    if (out_reserve(o, n * 6 + 2) < 0) return -1;
    char *w = o->buf + o->len;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)u[i];
        if (c == '"' || c == '\\') { *w++ = '\\'; *w++ = (char)c; }
        else if (c >= 0x20) *w++ = (char)c;
        else if (c == '\n') { *w++ = '\\'; *w++ = 'n'; }
        else if (c == '\t') { *w++ = '\\'; *w++ = 't'; }
        else if (c == '\r') { *w++ = '\\'; *w++ = 'r'; }
        else if (c == '\b') { *w++ = '\\'; *w++ = 'b'; }
        else if (c == '\f') { *w++ = '\\'; *w++ = 'f'; }
        else {
            *w++ = '\\'; *w++ = 'u'; *w++ = '0'; *w++ = '0';
            *w++ = HEX[c >> 4]; *w++ = HEX[c & 15];
        }
    }
    *w++ = '"';
    o->len = w - o->buf;
    return 0;
}

static int out_item_str(Out *o, PyObject *seq, Py_ssize_t i) {
    PyObject *s = PySequence_GetItem(seq, i);
    if (!s) return -1;
    int rc = out_str(o, s);
    Py_DECREF(s);
    return rc;
}

static const char *kind_name(char kind) {
    return kind == 'd' ? "float64" : kind == 'f' ? "float32" : "int64";
}

/* A C-contiguous buffer of `ndim` dimensions and the dtype `kind` ('f' float32, 'd' float64,
 * 'q' int64), writable when asked; else TypeError (nothing held). */
static int get_array(PyObject *obj, Py_buffer *view, const char *name, char kind, int ndim, int writable) {
    Py_ssize_t itemsize = kind == 'f' ? 4 : 8;
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    int kind_ok = f[0] == kind || (kind == 'q' && f[0] == 'l');
    if (view->ndim != ndim || view->itemsize != itemsize || !kind_ok || f[1]) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous %d-d %s array", name, ndim, kind_name(kind));
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static double round6(double v) { return rint(v * 1e6) / 1e6; }

/* a . b in float64 over four running sums (one sum is bound by the adder's latency: 4x slower) */
static double dot_fd(const float *a, const float *b, Py_ssize_t d) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        s0 += (double)a[j] * (double)b[j];
        s1 += (double)a[j + 1] * (double)b[j + 1];
        s2 += (double)a[j + 2] * (double)b[j + 2];
        s3 += (double)a[j + 3] * (double)b[j + 3];
    }
    for (; j < d; j++) s0 += (double)a[j] * (double)b[j];
    return (s0 + s1) + (s2 + s3);
}

static double dot_dd(const double *a, const float *b, Py_ssize_t d) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    Py_ssize_t j = 0;
    for (; j + 4 <= d; j += 4) {
        s0 += a[j] * (double)b[j];
        s1 += a[j + 1] * (double)b[j + 1];
        s2 += a[j + 2] * (double)b[j + 2];
        s3 += a[j + 3] * (double)b[j + 3];
    }
    for (; j < d; j++) s0 += a[j] * (double)b[j];
    return (s0 + s1) + (s2 + s3);
}

enum { X, ACTS, W, IDX, BASE, IDS, WDEC, BDEC, EMB, TABLE, ORDER, NARGS };

static PyObject *explain(PyObject *self, PyObject *args) {
    static const char *names[NARGS] = {"xs", "acts", "w", "idx", "baseline", "ids", "W_dec", "b_dec", "item_emb",
                                       "table", "order"};
    static const char kinds[NARGS] = {'f', 'f', 'f', 'q', 'd', 'q', 'f', 'f', 'f', 'd', 'q'};
    static const int dims[NARGS] = {2, 2, 2, 2, 1, 2, 2, 1, 2, 3, 3};
    PyObject *obj[NARGS];
    Py_buffer v[NARGS];
    int held = 0;
    PyObject *result = NULL;
    if (!PyArg_UnpackTuple(args, "explain", NARGS, NARGS, &obj[0], &obj[1], &obj[2], &obj[3], &obj[4], &obj[5],
                           &obj[6], &obj[7], &obj[8], &obj[9], &obj[10]))
        return NULL;
    for (; held < NARGS; held++)
        if (get_array(obj[held], &v[held], names[held], kinds[held], dims[held], held >= TABLE) < 0) goto done;
    Py_ssize_t E = v[X].shape[0], d = v[X].shape[1], k = v[ACTS].shape[1], n = v[IDS].shape[1];
    Py_ssize_t m = v[WDEC].shape[0], N = v[EMB].shape[0];
    if (v[ACTS].shape[0] != E || v[W].shape[0] != E || v[W].shape[1] != k || v[IDX].shape[0] != E ||
        v[IDX].shape[1] != k || v[BASE].shape[0] != E || v[IDS].shape[0] != E || v[WDEC].shape[1] != d ||
        v[BDEC].shape[0] != d || v[EMB].shape[1] != d || v[TABLE].shape[0] != E || v[TABLE].shape[1] != n + 1 ||
        v[TABLE].shape[2] != k + 2 || v[ORDER].shape[0] != E || v[ORDER].shape[1] != n || v[ORDER].shape[2] != k) {
        PyErr_SetString(PyExc_ValueError, "explain: shapes do not fit (see service/_hotpath.c)");
        goto done;
    }
    const float *x = v[X].buf, *acts = v[ACTS].buf, *w = v[W].buf, *Wd = v[WDEC].buf, *bd = v[BDEC].buf,
                *emb = v[EMB].buf;
    const long long *idx = v[IDX].buf, *ids = v[IDS].buf;
    const double *base = v[BASE].buf;
    double *table = v[TABLE].buf;
    long long *order = v[ORDER].buf;
    for (Py_ssize_t i = 0; i < E * k; i++)
        if (idx[i] < 0 || idx[i] >= m) { PyErr_SetString(PyExc_ValueError, "explain: latent id out of range"); goto done; }
    for (Py_ssize_t i = 0; i < E * n; i++)
        if (ids[i] < 0 || ids[i] >= N) { PyErr_SetString(PyExc_ValueError, "explain: item id out of range"); goto done; }
    double *resid = PyMem_Malloc(sizeof(double) * (size_t)(d > 0 ? d : 1));
    double *z = PyMem_Malloc(sizeof(double) * (size_t)(k > 0 ? k : 1));
    if (!resid || !z) { PyMem_Free(resid); PyMem_Free(z); PyErr_NoMemory(); goto done; }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t e = 0; e < E; e++) {
        const float *xe = x + e * d, *ae = acts + e * k, *we = w + e * k;
        const long long *ie = idx + e * k, *de = ids + e * n;
        double bscale = 1.0 - base[e];
        double *T = table + e * (n + 1) * (k + 2);
        long long *O = order + e * n * k;
        Py_ssize_t fire = 0;
        for (Py_ssize_t a = 0; a < k; a++) {
            z[a] = (double)ae[a] * (1.0 - (double)we[a]);
            fire += ae[a] > 0;
        }
        for (Py_ssize_t j = 0; j < d; j++) resid[j] = (double)xe[j] - bscale * (double)bd[j];
        for (Py_ssize_t a = 0; a < k; a++) {
            const float *dir = Wd + ie[a] * d;
            for (Py_ssize_t j = 0; j < d; j++) resid[j] -= z[a] * (double)dir[j];
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            const float *item = emb + de[i] * d;
            double *row = T + i * (k + 2);
            double bias = dot_fd(bd, item, d), err = dot_dd(resid, item, d);
            for (Py_ssize_t a = 0; a < k; a++) row[a] = z[a] * dot_fd(Wd + ie[a] * d, item, d);
            /* the firing positions by contribution, largest first, ties to the lower position
               (a stable insertion sort of at most k), before rounding as the NumPy path sorts */
            long long *o = O + i * k;
            for (Py_ssize_t a = 0; a < fire; a++) {
                Py_ssize_t t = a;
                while (t > 0 && row[o[t - 1]] < row[a]) { o[t] = o[t - 1]; t--; }
                o[t] = a;
            }
            for (Py_ssize_t a = fire; a < k; a++) o[a] = -1;
            for (Py_ssize_t a = 0; a < k; a++) row[a] = round6(row[a]);
            row[k] = round6(bscale * bias);
            row[k + 1] = round6(err);
        }
        double *last = T + n * (k + 2);
        for (Py_ssize_t a = 0; a < k; a++) last[a] = round6((double)ae[a]);
        last[k] = last[k + 1] = 0.0;
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(resid);
    PyMem_Free(z);
    result = Py_None;
    Py_INCREF(result);
done:
    for (int i = 0; i < held; i++) PyBuffer_Release(&v[i]);
    return result;
}

/* One firing position's prebuilt JSON: (contribution head, tail not suppressed, tail
 * suppressed, entry head, entry middle), as service.concepts.Described.json. */
enum { C_HEAD, C_TAIL_OFF, C_TAIL_ON, E_HEAD, E_MID, NPARTS };

static int check_parts(PyObject *parts) {
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(parts); j++) {
        PyObject *p = PyList_GET_ITEM(parts, j);
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != NPARTS) goto bad;
        for (int q = 0; q < NPARTS; q++)
            if (!PyBytes_Check(PyTuple_GET_ITEM(p, q))) goto bad;
    }
    return 0;
bad:
    PyErr_SetString(PyExc_TypeError, "parts: expected tuples of 5 bytes (service.concepts.Described.json)");
    return -1;
}

static int out_bytes(Out *o, PyObject *b) { return out_put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b)); }

static PyObject *items(PyObject *self, PyObject *args) {
    PyObject *ids, *scores, *item_ids, *titles, *table_obj, *order_obj, *parts, *strengths;
    Py_ssize_t top;
    if (!PyArg_ParseTuple(args, "O!O!OOOOO!On:items", &PyList_Type, &ids, &PyList_Type, &scores, &item_ids, &titles,
                          &table_obj, &order_obj, &PyList_Type, &parts, &strengths, &top))
        return NULL;
    if (top < 0) {
        PyErr_SetString(PyExc_ValueError, "top: 0 (all) or more");
        return NULL;
    }
    Py_ssize_t nparts = PyList_GET_SIZE(parts);
    Py_ssize_t n = PyList_GET_SIZE(ids);
    if (PyList_GET_SIZE(scores) != n) {
        PyErr_SetString(PyExc_ValueError, "ids and scores differ in length");
        return NULL;
    }
    if (strengths != Py_None && (!PyList_Check(strengths) || PyList_GET_SIZE(strengths) != nparts)) {
        PyErr_SetString(PyExc_TypeError, "strengths: expected None or a list of one float per part");
        return NULL;
    }
    if (check_parts(parts) < 0) return NULL;
    int explained = table_obj != Py_None;
    if (!explained && nparts) {
        PyErr_SetString(PyExc_ValueError, "parts without a table");
        return NULL;
    }
    Py_buffer table = {0}, order = {0};
    Py_ssize_t k = 0, rows = 0;
    double *sw = NULL;
    Out o, act;
    o.buf = o.small;
    o.len = 0;
    o.cap = sizeof o.small;
    act.buf = act.small;
    act.len = 0;
    act.cap = sizeof act.small;
    PyObject *result = NULL;
    if (explained) {
        if (get_array(table_obj, &table, "table", 'd', 2, 0) < 0) return NULL;
        if (get_array(order_obj, &order, "order", 'q', 2, 0) < 0) { PyBuffer_Release(&table); return NULL; }
        k = table.shape[1] - 2;
        rows = table.shape[0];
        if (k < 0 || order.shape[1] != k || rows < n + 1 || order.shape[0] < n || nparts > k) {
            PyErr_SetString(PyExc_ValueError, "table, order and parts do not fit the listed items");
            goto done;
        }
    }
    sw = PyMem_Calloc((size_t)(nparts ? nparts : 1), sizeof(double));
    if (!sw) { PyErr_NoMemory(); goto done; }
    if (strengths != Py_None) {
        for (Py_ssize_t a = 0; a < nparts; a++) {
            sw[a] = PyFloat_AsDouble(PyList_GET_ITEM(strengths, a));
            if (sw[a] == -1.0 && PyErr_Occurred()) goto done;
        }
    }
    const double *T = explained ? (const double *)table.buf : NULL;
    const long long *R = explained ? (const long long *)order.buf : NULL;
    if (PUT_LIT(&o, "[") < 0) goto done;
    for (Py_ssize_t r = 0; r < n; r++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(ids, r));
        if (i == -1 && PyErr_Occurred()) goto done;
        if (i < 0) {
            PyErr_SetString(PyExc_ValueError, "ids: negative index");
            goto done;
        }
        double score = PyFloat_AsDouble(PyList_GET_ITEM(scores, r));
        if (score == -1.0 && PyErr_Occurred()) goto done;
        if ((r ? PUT_LIT(&o, ",{\"rank\":") : PUT_LIT(&o, "{\"rank\":")) < 0 || out_long(&o, r + 1) < 0 ||
            PUT_LIT(&o, ",\"item_id\":") < 0 || out_item_str(&o, item_ids, i) < 0 ||
            PUT_LIT(&o, ",\"title\":") < 0 || out_item_str(&o, titles, i) < 0 ||
            PUT_LIT(&o, ",\"score\":") < 0 || out_double(&o, score) < 0)
            goto done;
        if (!explained) {
            if (PUT_LIT(&o, ",\"explanation\":null}") < 0) goto done;
            continue;
        }
        const double *row = T + r * (k + 2);
        double other = 0.0;
        if (PUT_LIT(&o, ",\"explanation\":{\"bias\":") < 0 || out_double(&o, row[k]) < 0 ||
            PUT_LIT(&o, ",\"error\":") < 0 || out_double(&o, row[k + 1]) < 0 ||
            PUT_LIT(&o, ",\"contributions\":[") < 0)
            goto done;
        for (Py_ssize_t t = 0; t < k; t++) {
            long long pos = R[r * k + t];
            if (pos == -1) break;  /* the firing positions end here */
            if (pos < 0 || pos >= nparts) {
                PyErr_SetString(PyExc_ValueError, "order: position out of range");
                goto done;
            }
            if (top && t >= top) {  /* left out: summed in `other`, in ranked order (as the Python path) */
                other += row[pos];
                continue;
            }
            PyObject *p = PyList_GET_ITEM(parts, pos);
            if ((t && PUT_LIT(&o, ",") < 0) || out_bytes(&o, PyTuple_GET_ITEM(p, C_HEAD)) < 0 ||
                out_double(&o, row[pos]) < 0 ||
                out_bytes(&o, PyTuple_GET_ITEM(p, sw[pos] > 0 ? C_TAIL_ON : C_TAIL_OFF)) < 0)
                goto done;
        }
        if (PUT_LIT(&o, "],\"other\":") < 0 || out_double(&o, round6(other)) < 0 || PUT_LIT(&o, "}}") < 0) goto done;
    }
    if (PUT_LIT(&o, "]") < 0 || PUT_LIT(&act, "[") < 0) goto done;
    /* active_latents: each firing position's entry, its activation from the table's last row */
    for (Py_ssize_t a = 0; a < nparts; a++) {
        PyObject *p = PyList_GET_ITEM(parts, a);
        if ((a && PUT_LIT(&act, ",") < 0) || out_bytes(&act, PyTuple_GET_ITEM(p, E_HEAD)) < 0 ||
            out_double(&act, T[(rows - 1) * (k + 2) + a]) < 0 || out_bytes(&act, PyTuple_GET_ITEM(p, E_MID)) < 0 ||
            (sw[a] > 0 ? PUT_LIT(&act, "true,\"strength\":") : PUT_LIT(&act, "false,\"strength\":")) < 0 ||
            out_double(&act, sw[a]) < 0 || PUT_LIT(&act, "}") < 0)
            goto done;
    }
    if (PUT_LIT(&act, "]") < 0) goto done;
    result = Py_BuildValue("(y#y#)", o.buf, o.len, act.buf, act.len);
done:
    if (explained) {
        PyBuffer_Release(&table);
        if (order.obj) PyBuffer_Release(&order);
    }
    PyMem_Free(sw);
    if (o.buf != o.small) PyMem_Free(o.buf);
    if (act.buf != act.small) PyMem_Free(act.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"explain", explain, METH_VARARGS, "Decompose a batch's listed scores into its caller's table and order."},
    {"items", items, METH_VARARGS, "The JSON array of a /recommend body's items."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hotpath", "The hot path's per-request work in C.", -1,
                                     methods};

PyMODINIT_FUNC PyInit__hotpath(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "API", HOTPATH_API) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
