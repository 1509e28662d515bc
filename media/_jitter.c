/* media._relay.Jitter: media.jitter.JitterBuffer in C (see _jitter.h). Comments name the reference's
 * methods; the reference's docstrings say why each step is there. */
#include "_jitter.h"

#include <structmember.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define BUFFERING 0
#define PLAYING 1
#define IDLE 2

static PyObject *frame_type;      /* media.jitter.Frame and Missing, registered by media.jitter */
static PyObject *missing_type;

static void reset_stream(Jitter *j)                      /* _reset */
{
    for (int i = 0; i < j->nbuf; i++)
        free(j->buf[i].data);
    j->nbuf = 0;
    j->nmarks = 0;
    j->state = BUFFERING;
    j->has_ssrc = 0;
    j->ssrc = 0;
    j->has_highest = 0;
    j->highest = j->ref_ts = 0;
    j->has_next = 0;
    j->next_seq = 0;
    j->play_ts = 0;
    j->start_at = 0.0;
    j->mt_cur = j->mt_prev = INFINITY;
    j->mt_until = 0.0;
    j->empty_run = 0;
    j->last_shrink = -INFINITY;
    j->seen = j->lostm = 0;
}

static void resync(Jitter *j)                            /* reset */
{
    j->dropped += j->nbuf;
    j->resyncs++;
    reset_stream(j);
}

static void resync_keep_ssrc(Jitter *j)
{
    int has = j->has_ssrc;
    unsigned int ssrc = j->ssrc;
    resync(j);
    j->has_ssrc = has;
    j->ssrc = ssrc;
}

static int find(const Jitter *j, int64_t ext)
{
    for (int i = 0; i < j->nbuf; i++)
        if (j->buf[i].ext == ext)
            return i;
    return -1;
}

static int lowest(const Jitter *j)
{
    int best = 0;
    for (int i = 1; i < j->nbuf; i++)
        if (j->buf[i].ext < j->buf[best].ext)
            best = i;
    return best;
}

static void remove_at(Jitter *j, int i)                  /* the payload is the caller's */
{
    j->buf[i] = j->buf[j->nbuf - 1];
    j->nbuf--;
}

static int find_mark(const Jitter *j, int64_t ext)
{
    for (int i = 0; i < j->nmarks; i++)
        if (j->marks[i] == ext)
            return i;
    return -1;
}

static void remove_mark(Jitter *j, int i)
{
    j->marks[i] = j->marks[j->nmarks - 1];
    j->nmarks--;
}

static double min_transit(const Jitter *j)
{
    return j->mt_cur < j->mt_prev ? j->mt_cur : j->mt_prev;
}

/* _extend: SSRC change, 16/32-bit unrolling and resync */
static void extend(Jitter *j, unsigned int seq, unsigned int ts, int has_ssrc, unsigned int ssrc, int audio,
                   int64_t *ext, int64_t *ets, int64_t *step)
{
    if (has_ssrc && (!j->has_ssrc || ssrc != j->ssrc)) {
        if (j->has_ssrc)
            resync(j);
        j->has_ssrc = 1;
        j->ssrc = ssrc;
    }
    if (j->has_highest) {
        int64_t d = (int64_t)((((int64_t)seq - j->highest + 0x8000) & 0xFFFF)) - 0x8000;
        int64_t dts = (int64_t)((((int64_t)ts - j->ref_ts + 0x80000000LL) & 0xFFFFFFFFLL)) - 0x80000000LL;
        if (!(d > MAX_DROPOUT || d < -MAX_MISORDER
              || (audio && (dts > j->max_ts_jump || dts < -j->max_ts_jump || (d > 0 && dts < 0))))) {
            *ext = j->highest + d;
            *ets = j->ref_ts + dts;
            if (d > 0) {
                j->highest = *ext;
                if (audio)
                    j->ref_ts = *ets;
            }
            *step = d;
            return;
        }
        resync_keep_ssrc(j);
    }
    j->has_highest = 1;
    j->highest = seq;
    j->ref_ts = ts;
    *ext = seq;
    *ets = ts;
    *step = 0;
}

static void drop_marks_below(Jitter *j, int64_t seq)     /* _drop_marks_below */
{
    int i = 0;
    while (i < j->nmarks) {
        if (j->marks[i] < seq)
            remove_mark(j, i);
        else
            i++;
    }
}

static void overflow(Jitter *j)                          /* _overflow */
{
    int keep = (int)(j->target / j->frame) + 1;
    if (keep < 1)
        keep = 1;
    while (j->nbuf > keep) {
        int i = lowest(j);
        free(j->buf[i].data);
        remove_at(j, i);
        j->dropped++;
    }
    if (j->state == PLAYING && j->nbuf) {
        int first = lowest(j);
        j->seen = j->lostm = 0;
        j->has_next = 1;
        j->next_seq = j->buf[first].ext;
        drop_marks_below(j, j->next_seq);
        j->play_ts = j->buf[first].ets;
    }
}

int jitter_put(Jitter *j, unsigned int seq, unsigned int ts, const uint8_t *payload, int len, double arrival,
               int has_ssrc, unsigned int ssrc)
{
    j->received++;
    int64_t ext, ets, d;
    extend(j, seq, ts, has_ssrc, ssrc, 1, &ext, &ets, &d);
    if (d < 0)
        j->reordered++;

    double rate = (double)j->clock_rate;
    double transit = arrival - (double)ets / rate;
    double base = min_transit(j);
    if (base != INFINITY) {
        double skew = transit - base;
        if (!(-j->max_skew < skew && skew < j->max_skew)) {
            resync_keep_ssrc(j);
            ext = seq;
            ets = ts;
            j->has_highest = 1;
            j->highest = ext;
            j->ref_ts = ets;
            transit = arrival - (double)ets / rate;
        }
    }
    if (arrival >= j->mt_until) {
        j->mt_prev = j->mt_cur;
        j->mt_cur = transit;
        j->mt_until = arrival + j->window;
    } else if (transit < j->mt_cur) {
        j->mt_cur = transit;
    }
    base = min_transit(j);
    double spread = transit - base;
    double peak = j->peak * j->peak_decay;
    if (spread > peak)
        peak = spread;
    j->peak = peak;
    double target = peak + j->frame / 2;
    if (target < j->min_delay)
        target = j->min_delay;
    else if (target > j->max_delay)
        target = j->max_delay;
    j->target = target;

    int state = j->state;
    if (j->has_next && ext < j->next_seq) {
        int64_t i = j->next_seq - 1 - ext;
        uint64_t bit = i < 64 ? (uint64_t)1 << i : 0;
        if (j->seen & bit) {
            j->duplicate++;
            return 0;
        }
        j->late++;
        if (j->lostm & bit) {
            j->lost--;
            j->lostm ^= bit;
        }
        j->seen |= bit;
        return 0;
    }
    if (find(j, ext) >= 0 || find_mark(j, ext) >= 0) {
        j->duplicate++;
        return 0;
    }
    uint8_t *copy = malloc(len > 0 ? (size_t)len : 1);
    if (!copy) {
        PyErr_NoMemory();
        return -1;
    }
    if (len > 0)
        memcpy(copy, payload, (size_t)len);
    JEntry *e = &j->buf[j->nbuf++];
    e->ext = ext;
    e->ets = ets;
    e->data = copy;
    e->len = len;
    if (state == IDLE || (state == BUFFERING && j->nbuf == 1)) {
        j->state = BUFFERING;
        j->start_at = (double)ets / rate + base + target;
    }
    if (j->nbuf > j->capacity)
        overflow(j);
    return 0;
}

void jitter_mark_non_audio(Jitter *j, unsigned int seq, unsigned int ts, int has_ssrc, unsigned int ssrc)
{
    if (has_ssrc && (!j->has_ssrc || ssrc != j->ssrc))
        return;
    int64_t ext, ets, d;
    extend(j, seq, ts, 0, 0, 0, &ext, &ets, &d);
    if (j->has_next && ext < j->next_seq) {
        int64_t i = j->next_seq - 1 - ext;
        uint64_t bit = i < 64 ? (uint64_t)1 << i : 0;
        if (!bit || (j->seen & bit))
            return;
        j->seen |= bit;
        j->late++;
        if (j->lostm & bit) {
            j->lost--;
            j->lostm ^= bit;
        }
        return;
    }
    if (find(j, ext) >= 0 || find_mark(j, ext) >= 0)
        return;
    j->marks[j->nmarks++] = ext;
    if (j->nmarks > j->max_marks) {
        int low = 0;
        for (int k = 1; k < j->nmarks; k++)
            if (j->marks[k] < j->marks[low])
                low = k;
        remove_mark(j, low);
    }
}

static int eat_marks(Jitter *j)                          /* _eat_marks */
{
    if (!j->has_next)
        return 0;
    int i = find_mark(j, j->next_seq);
    if (i < 0)
        return 0;
    while (i >= 0) {
        remove_mark(j, i);
        j->next_seq++;
        j->seen = (j->seen << 1) | 1;
        j->lostm = j->lostm << 1;
        i = find_mark(j, j->next_seq);
    }
    return 1;
}

static void skip(Jitter *j, int64_t start, int64_t gap)  /* _skip */
{
    uint64_t seen, lostm;
    if (gap >= 64) {
        seen = 0;
        lostm = ~(uint64_t)0;
    } else {
        seen = j->seen << gap;
        lostm = (j->lostm << gap) | (((uint64_t)1 << gap) - 1);
    }
    int64_t hits = 0;
    int64_t end = start + gap;
    int k = 0;
    while (k < j->nmarks) {
        int64_t m = j->marks[k];
        if (start <= m && m < end) {
            remove_mark(j, k);
            hits++;
            int64_t i = end - 1 - m;
            if (i < 64) {
                seen |= (uint64_t)1 << i;
                lostm &= ~((uint64_t)1 << i);
            }
        } else {
            k++;
        }
    }
    j->lost += gap - hits;
    j->seen = seen;
    j->lostm = lostm;
}

static void missing(JItem *out, int64_t seq, int64_t ts, const JEntry *next)
{
    out->kind = J_MISSING;
    out->seq = (unsigned int)(seq & 0xFFFF);
    out->ts = (unsigned int)(ts & 0xFFFFFFFFLL);
    out->next = next ? next->data : NULL;
    out->next_len = next ? next->len : 0;
}

void jitter_get(Jitter *j, double now, JItem *out)
{
    memset(out, 0, sizeof(*out));
    int state = j->state;
    if (state != PLAYING) {
        if (j->nmarks)
            eat_marks(j);
        if (state == IDLE || !j->nbuf || now + 1e-6 < j->start_at)
            return;
        int low = lowest(j);
        int64_t lo = j->buf[low].ext;
        if (j->has_next && lo > j->next_seq)
            skip(j, j->next_seq, lo - j->next_seq);
        j->has_next = 1;
        j->next_seq = lo;
        drop_marks_below(j, lo);
        j->play_ts = j->buf[low].ets;
        j->state = PLAYING;
        j->empty_run = 0;
    }
    for (;;) {
        int ate = j->nmarks ? eat_marks(j) : 0;
        int64_t ns = j->next_seq;
        double rate = (double)j->clock_rate;
        double base = min_transit(j);
        double delay = now - (double)j->play_ts / rate - base;
        double target = j->target;
        double frame = j->frame;
        j->delay = delay;

        int at = find(j, ns);
        if (at >= 0) {
            int64_t ets = j->buf[at].ets;
            j->empty_run = 0;
            if (ets - j->play_ts >= j->frame_samples) {
                if (delay > target + 1.5 * frame)
                    j->play_ts += 2 * j->frame_samples;
                else if (delay >= target - frame / 2)
                    j->play_ts += j->frame_samples;
                return;
            }
            if (delay < target - frame) {
                j->concealed++;
                missing(out, ns, j->play_ts, NULL);
                return;
            }
            JEntry e = j->buf[at];
            remove_at(j, at);
            int nx;
            if (delay > target + 1.5 * frame && now - j->last_shrink >= j->shrink_interval
                    && (nx = find(j, ns + 1)) >= 0 && j->buf[nx].ets - ets <= j->frame_samples) {
                j->last_shrink = now;
                j->dropped++;
                j->seen = (j->seen << 1) | 1;
                j->lostm = j->lostm << 1;
                ns += 1;
                free(e.data);
                e = j->buf[nx];
                remove_at(j, nx);
                ets = e.ets;
            }
            j->next_seq = ns + 1;
            j->play_ts = ets + j->frame_samples;
            j->seen = (j->seen << 1) | 1;
            j->lostm = j->lostm << 1;
            j->played++;
            out->kind = J_FRAME;
            out->seq = (unsigned int)(ns & 0xFFFF);
            out->ts = (unsigned int)(ets & 0xFFFFFFFFLL);
            out->payload = e.data;
            out->len = e.len;
            return;
        }

        if (j->nbuf) {
            j->empty_run = 0;
            int low = lowest(j);
            if (j->buf[low].ets <= j->play_ts) {
                int64_t lo = j->buf[low].ext;
                skip(j, ns, lo - ns);
                j->next_seq = lo;
                continue;                               /* the reference's return self.get(now) */
            }
            if (delay < target - frame) {
                j->concealed++;
                missing(out, ns, j->play_ts, NULL);
                return;
            }
            int nx = find(j, ns + 1);
            missing(out, ns, j->play_ts, nx >= 0 ? &j->buf[nx] : NULL);
            j->next_seq = ns + 1;
            j->play_ts += j->frame_samples;
            skip(j, ns, 1);
            j->concealed++;
            return;
        }

        if (ate) {
            j->state = IDLE;
            return;
        }
        j->empty_run++;
        if (j->empty_run > j->max_conceal) {
            j->state = IDLE;
            return;
        }
        if (delay >= j->max_delay)
            j->play_ts += j->frame_samples;
        j->concealed++;
        missing(out, ns, j->play_ts, NULL);
        return;
    }
}

int jitter_starts(const Jitter *j, double now)
{
    return j->state == BUFFERING && j->nbuf > 0 && !(now + 1e-6 < j->start_at);
}

int jitter_playing(const Jitter *j)
{
    return j->state == PLAYING;
}

/* -- the Python type ------------------------------------------------------------------------------- */

static int Jitter_init(Jitter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"clock_rate", "frame_ms", "min_delay_ms", "max_delay_ms", "max_conceal_ms",
                             "shrink_interval", "peak_decay", "window", NULL};
    int clock_rate, frame_ms = 20, min_delay_ms = 20, max_delay_ms = 200, max_conceal_ms = 60;
    double shrink_interval = 0.5, peak_decay = 0.997, window = 2.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|iii$iddd", kwlist, &clock_rate, &frame_ms, &min_delay_ms,
                                     &max_delay_ms, &max_conceal_ms, &shrink_interval, &peak_decay, &window))
        return -1;
    if (clock_rate <= 0 || frame_ms <= 0 || min_delay_ms < 0 || max_delay_ms < 0) {
        PyErr_SetString(PyExc_ValueError, "jitter buffer: clock rate and frame must be positive, delays not "
                                          "negative");
        return -1;
    }
    if (self->buf) {                       /* __init__ called twice */
        reset_stream(self);
        free(self->buf);
        free(self->marks);
        self->buf = NULL;
        self->marks = NULL;
    }
    self->clock_rate = clock_rate;
    self->frame_samples = clock_rate * frame_ms / 1000;
    self->frame = frame_ms / 1000.0;
    self->min_delay = min_delay_ms / 1000.0;
    self->max_delay = max_delay_ms / 1000.0;
    self->max_conceal = max_conceal_ms / frame_ms > 0 ? max_conceal_ms / frame_ms : 0;
    self->shrink_interval = shrink_interval;
    self->peak_decay = peak_decay;
    self->window = window;
    self->capacity = 2 * max_delay_ms / frame_ms + 4;
    self->max_ts_jump = 30 * (int64_t)clock_rate;
    self->max_skew = 4 * self->max_delay > 1.0 ? 4 * self->max_delay : 1.0;
    self->max_marks = 4 * self->capacity + MAX_MISORDER;
    self->buf = calloc((size_t)self->capacity + 1, sizeof(JEntry));
    self->marks = calloc((size_t)self->max_marks + 1, sizeof(int64_t));
    if (!self->buf || !self->marks) {
        PyErr_NoMemory();
        return -1;
    }
    self->received = self->played = self->late = self->lost = self->duplicate = 0;
    self->reordered = self->concealed = self->dropped = self->resyncs = 0;
    self->delay = 0.0;
    self->target = self->min_delay;
    self->peak = 0.0;
    reset_stream(self);
    return 0;
}

static void Jitter_dealloc(Jitter *self)
{
    if (self->buf) {
        reset_stream(self);
        free(self->buf);
    }
    free(self->marks);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ready(Jitter *self)
{
    if (!self->buf) {
        PyErr_SetString(PyExc_RuntimeError, "jitter buffer not initialised");
        return -1;
    }
    return 0;
}

static int parse_ssrc(PyObject *obj, int *has, unsigned int *ssrc)
{
    *has = 0;
    *ssrc = 0;
    if (obj == NULL || obj == Py_None)
        return 0;
    unsigned long v = PyLong_AsUnsignedLong(obj);
    if (PyErr_Occurred())
        return -1;
    *has = 1;
    *ssrc = (unsigned int)v;
    return 0;
}

static PyObject *Jitter_put(Jitter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"seq", "timestamp", "payload", "arrival", "ssrc", NULL};
    unsigned int seq, ts;
    Py_buffer payload;
    double arrival;
    PyObject *ssrc_obj = NULL;
    if (ready(self) < 0 || !PyArg_ParseTupleAndKeywords(args, kwds, "IIy*d|O", kwlist, &seq, &ts, &payload,
                                                        &arrival, &ssrc_obj))
        return NULL;
    int has;
    unsigned int ssrc;
    int rc = parse_ssrc(ssrc_obj, &has, &ssrc);
    if (rc == 0)
        rc = jitter_put(self, seq & 0xFFFF, ts, payload.buf, (int)payload.len, arrival, has, ssrc);
    PyBuffer_Release(&payload);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Jitter_mark_non_audio(Jitter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"seq", "timestamp", "arrival", "ssrc", NULL};
    unsigned int seq, ts;
    double arrival;
    PyObject *ssrc_obj = NULL;
    if (ready(self) < 0 || !PyArg_ParseTupleAndKeywords(args, kwds, "IId|O", kwlist, &seq, &ts, &arrival,
                                                        &ssrc_obj))
        return NULL;
    int has;
    unsigned int ssrc;
    if (parse_ssrc(ssrc_obj, &has, &ssrc) < 0)
        return NULL;
    jitter_mark_non_audio(self, seq & 0xFFFF, ts, has, ssrc);
    Py_RETURN_NONE;
}

static PyObject *Jitter_get(Jitter *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if ((now == -1.0 && PyErr_Occurred()) || ready(self) < 0)
        return NULL;
    if (!frame_type || !missing_type) {
        PyErr_SetString(PyExc_RuntimeError, "media.jitter has not registered Frame and Missing");
        return NULL;
    }
    JItem item;
    jitter_get(self, now, &item);
    if (item.kind == J_NONE)
        Py_RETURN_NONE;
    if (item.kind == J_FRAME) {
        PyObject *r = PyObject_CallFunction(frame_type, "IIy#", item.seq, item.ts, (const char *)item.payload,
                                            (Py_ssize_t)item.len);
        free(item.payload);
        return r;
    }
    if (item.next)
        return PyObject_CallFunction(missing_type, "IIy#", item.seq, item.ts, (const char *)item.next,
                                     (Py_ssize_t)item.next_len);
    return PyObject_CallFunction(missing_type, "IIO", item.seq, item.ts, Py_None);
}

static PyObject *Jitter_reset(Jitter *self, PyObject *Py_UNUSED(ignored))
{
    if (ready(self) < 0)
        return NULL;
    resync(self);
    Py_RETURN_NONE;
}

static PyObject *Jitter_counters(Jitter *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(LLLLLLLLLddd)", self->received, self->played, self->late, self->lost,
                         self->duplicate, self->reordered, self->concealed, self->dropped, self->resyncs,
                         self->delay, self->target, self->peak);
}

static PyObject *Jitter_get_ssrc(Jitter *self, void *closure)
{
    (void)closure;
    if (!self->has_ssrc)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(self->ssrc);
}

static PyObject *Jitter_get_current_delay(Jitter *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->delay);
}

static PyObject *Jitter_get_target_delay(Jitter *self, void *closure)
{
    (void)closure;
    return PyFloat_FromDouble(self->target);
}

static Py_ssize_t Jitter_len(Jitter *self)
{
    return self->nbuf;
}

static PyObject *set_frame_types(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *frame, *miss;
    if (!PyArg_ParseTuple(args, "OO", &frame, &miss))
        return NULL;
    Py_INCREF(frame);
    Py_INCREF(miss);
    Py_XSETREF(frame_type, frame);
    Py_XSETREF(missing_type, miss);
    Py_RETURN_NONE;
}

static PyMethodDef Jitter_methods[] = {
    {"put", (PyCFunction)(void (*)(void))Jitter_put, METH_VARARGS | METH_KEYWORDS,
     "put(seq, timestamp, payload, arrival, ssrc=None): queue a received packet (JitterBuffer.put)."},
    {"mark_non_audio", (PyCFunction)(void (*)(void))Jitter_mark_non_audio, METH_VARARGS | METH_KEYWORDS,
     "mark_non_audio(seq, timestamp, arrival, ssrc=None): a sequence number that carries no audio."},
    {"get", (PyCFunction)Jitter_get, METH_O, "get(now) -> Frame | Missing | None (JitterBuffer.get)."},
    {"reset", (PyCFunction)Jitter_reset, METH_NOARGS, "Resynchronise on a new stream (keeps statistics)."},
    {"counters", (PyCFunction)Jitter_counters, METH_NOARGS,
     "(received, played, late, lost, duplicate, reordered, concealed, dropped, resyncs, delay, target, peak)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Jitter_getset[] = {
    {"ssrc", (getter)Jitter_get_ssrc, NULL, "SSRC of the stream buffered (None before one).", NULL},
    {"current_delay", (getter)Jitter_get_current_delay, NULL, "Playout delay (s) as of the last get().", NULL},
    {"target_delay", (getter)Jitter_get_target_delay, NULL, "The delay (s) playout aims at.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Jitter_members[] = {
    {"clock_rate", T_INT, offsetof(Jitter, clock_rate), READONLY, "RTP clock rate."},
    {"frame_samples", T_INT, offsetof(Jitter, frame_samples), READONLY, "Timestamp units per frame."},
    {"capacity", T_INT, offsetof(Jitter, capacity), READONLY, "Packets buffered before the oldest go."},
    {NULL, 0, 0, 0, NULL},
};

static PySequenceMethods Jitter_as_sequence = {.sq_length = (lenfunc)Jitter_len};

PyTypeObject JitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._relay.Jitter",
    .tp_basicsize = sizeof(Jitter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The adaptive jitter buffer of media.jitter.JitterBuffer, in C (same results, same statistics).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Jitter_init,
    .tp_dealloc = (destructor)Jitter_dealloc,
    .tp_methods = Jitter_methods,
    .tp_getset = Jitter_getset,
    .tp_members = Jitter_members,
    .tp_as_sequence = &Jitter_as_sequence,
};

static PyMethodDef module_functions[] = {
    {"set_frame_types", set_frame_types, METH_VARARGS,
     "set_frame_types(Frame, Missing): the classes Jitter.get returns (media.jitter registers them)."},
    {NULL, NULL, 0, NULL},
};

int jitter_add_types(PyObject *module)
{
    if (PyType_Ready(&JitterType) < 0)
        return -1;
    Py_INCREF(&JitterType);
    if (PyModule_AddObject(module, "Jitter", (PyObject *)&JitterType) < 0) {
        Py_DECREF(&JitterType);
        return -1;
    }
    return PyModule_AddFunctions(module, module_functions);
}
