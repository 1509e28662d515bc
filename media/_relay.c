/* media._relay: the C data plane of passthrough media (what rtpengine's kernel module does, in user space).
 *
 * A media worker hands its UDP sockets to one Relay (an epoll set the asyncio loop watches through one file
 * descriptor). Relay.drain(now) reads every ready socket with recvmmsg, and for each datagram that matches a
 * forwarding Rule -- (socket, source address) of a latched leg, the audio payload type and the SSRC being
 * relayed -- it does in C exactly what the Python path does (media.session.RtpSession.receive_datagram,
 * media.bridge.Bridge.receive_rtp, media.rtp.RtpSender.relay, media.webrtc SRTP): RFC 3550 A.1/A.8 receive
 * statistics, SRTP unprotect, the header rewrite onto the outgoing stream (our SSRC, sequence/timestamp
 * offsets, the other side's payload type), SRTP protect, and sends it with sendmmsg. Everything else (STUN,
 * DTLS, RTCP, telephone-events, a new source or address, anything malformed) is returned to Python untouched
 * as (fd, datagram, (host, port)) and handled by the reference path, which then updates the rules.
 *
 * The Python objects stay the authority: the worker reads a rule's counters and stream state back into them
 * (media.relay) before it touches a call, and writes the rule again afterwards. Measured reason (see
 * benchmarks/media/RESULTS.md): the Python path costs 30-50 us per relayed packet, of which the bridge logic
 * is a small part; the rest is one event-loop callback, one sendto and the object chain per datagram.
 *
 * SRTP goes through the libsrtp that pylibsrtp carries: the caller passes the srtp_t of a pylibsrtp Session
 * and the addresses of srtp_protect/srtp_unprotect from its cffi module (media.relay does that), so the same
 * libsrtp session (keys, replay window, rollover counter) serves the Python path and this one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_g711.h"
#include "_jitter.h"

#define VLEN 64            /* datagrams per recvmmsg/sendmmsg */
#define BUF_SIZE 4096
#define TAIL_ROOM 160      /* SRTP trailer room: SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN = 144 */
#define MAX_EVENTS 64
#define KEY_SIZE 24
#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define SEQ_MOD 65536

typedef int (*srtp_fn)(void *ctx, void *hdr, int *len);

/* ------------------------------------------------------------------------------------------------------ */
/* Rule: one direction of a passthrough call                                                               */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    /* what matches */
    int in_pt;
    unsigned int src_ssrc;
    /* the rewrite onto the outgoing stream */
    int out_pt;
    unsigned int out_ssrc;
    unsigned int seq_off;
    unsigned int ts_off;
    double hold_until;          /* audio towards the other side pauses until then (a DTMF event relayed) */
    /* a transcoded direction: accepted packets (decrypted) go into this jitter buffer (the bridge path's) */
    Jitter *into;
    /* recording/supervision of a forwarded direction: the payloads, for Python's tick */
    int capture;
    PyObject *captured;         /* list of bytes, or NULL */
    /* where it goes (forwarding) */
    int out_fd;
    struct sockaddr_storage out_addr;
    socklen_t out_addrlen;
    /* SRTP (either may be absent) */
    void *srtp_in_ctx;
    srtp_fn srtp_in;
    PyObject *srtp_in_owner;
    void *srtp_out_ctx;
    srtp_fn srtp_out;
    PyObject *srtp_out_owner;
    /* counters since Python last took them */
    long long packets_in;
    long long packets_out;
    long long octets_out;
    long long held;
    long long srtp_errors;
    long long send_errors;
    double last_arrival;
    /* the outgoing stream (RtpSender's highest sequence sent) */
    int highest_out_seq;        /* -1: none sent since the mapping was set */
    unsigned int last_out_ts;
    double last_sent_at;
    int advanced;               /* highest_out_seq moved since Python last looked */
    /* receive statistics of the source (RFC 3550 A.1, A.8): media.rtcp.ReceptionStats' fields */
    int track_reception;
    int probation;
    int min_sequential;
    long long max_seq;
    long long cycles;
    long long base_seq;
    long long bad_seq;
    long long received;
    int has_transit;
    double transit;
    double jitter;
    double clock_rate;
    int has_rec_arrival;
    double rec_arrival;
    int reinit;                 /* init_seq ran: the interval counters (expected/received_prior) restart */
} Rule;

static void rec_init_seq(Rule *r, long long seq)
{
    r->base_seq = seq;
    r->max_seq = seq;
    r->bad_seq = SEQ_MOD + 1;
    r->cycles = 0;
    r->received = 0;
    r->reinit = 1;
}

static void rec_jitter(Rule *r, unsigned int ts, double arrival)
{
    double transit = arrival * r->clock_rate - (double)ts;
    r->rec_arrival = arrival;
    r->has_rec_arrival = 1;
    if (r->has_transit) {
        double d = transit - r->transit;
        if (d < 0)
            d = -d;
        if (d > 2147483648.0) {
            d = 4294967296.0 - d;
            if (d < 0)
                d = -d;
        }
        r->jitter += (d - r->jitter) * 0.0625;
    }
    r->transit = transit;
    r->has_transit = 1;
}

/* media.rtcp.ReceptionStats.update, line for line */
static void rec_update(Rule *r, long long seq, unsigned int ts, double arrival)
{
    long long max_seq, udelta;
    if (r->max_seq < 0) {
        rec_init_seq(r, seq);
        r->max_seq = (seq - 1) & 0xFFFF;
        r->probation = r->min_sequential;
    }
    max_seq = r->max_seq;
    udelta = (seq - max_seq) & 0xFFFF;
    if (r->probation) {
        if (seq == ((max_seq + 1) & 0xFFFF)) {
            r->probation -= 1;
            r->max_seq = seq;
            if (r->probation == 0) {
                rec_init_seq(r, seq);
                r->received = 1;
                rec_jitter(r, ts, arrival);
            }
        } else {
            r->probation = r->min_sequential - 1;
            r->max_seq = seq;
        }
        return;
    }
    if (udelta < MAX_DROPOUT) {
        if (seq < max_seq)
            r->cycles += SEQ_MOD;
        r->max_seq = seq;
    } else if (udelta <= SEQ_MOD - MAX_MISORDER) {
        if (seq == r->bad_seq) {
            rec_init_seq(r, seq);
            r->has_transit = 0;
        } else {
            r->bad_seq = (seq + 1) & 0xFFFF;
            return;
        }
    }
    r->received += 1;
    rec_jitter(r, ts, arrival);
}

static int parse_address(const char *host, int port, struct sockaddr_storage *out, socklen_t *len)
{
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535)
        return -1;
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in);
        return 0;
    }
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in6);
        return 0;
    }
    return -1;
}

static void rule_clear_srtp(PyObject **owner, void **ctx, srtp_fn *fn)
{
    Py_CLEAR(*owner);
    *ctx = NULL;
    *fn = NULL;
}

/* a Rule's or a Transcoder's jitter buffer reference: a media._relay.Jitter, or None for none */
static int set_jitter_ref(Jitter **slot, PyObject *obj)
{
    if (obj != Py_None && !PyObject_TypeCheck(obj, &JitterType)) {
        PyErr_SetString(PyExc_TypeError, "expected a media._relay.Jitter or None");
        return -1;
    }
    Py_XINCREF(obj == Py_None ? NULL : obj);
    Py_XSETREF(*slot, obj == Py_None ? NULL : (Jitter *)obj);
    return 0;
}

static int Rule_init(Rule *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ""))
        return -1;
    self->in_pt = -1;
    self->out_pt = -1;
    self->out_fd = -1;
    self->hold_until = -1e300;
    self->highest_out_seq = -1;
    self->max_seq = -1;
    self->min_sequential = 1;
    self->probation = 1;
    self->bad_seq = SEQ_MOD + 1;
    self->clock_rate = 8000.0;
    return 0;
}

static void Rule_dealloc(Rule *self)
{
    Py_CLEAR(self->into);
    Py_CLEAR(self->captured);
    Py_CLEAR(self->srtp_in_owner);
    Py_CLEAR(self->srtp_out_owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(Rule_set_output_doc, "set_output(fd, host, port): send forwarded packets from socket fd to host:port.");
/* set_output(fd, host, port) of a Rule or a Transcoder: where its packets go */
static PyObject *set_output(PyObject *args, int *out_fd, struct sockaddr_storage *addr, socklen_t *len)
{
    int fd, port;
    const char *host;
    if (!PyArg_ParseTuple(args, "isi", &fd, &host, &port))
        return NULL;
    if (parse_address(host, port, addr, len) < 0) {
        PyErr_Format(PyExc_ValueError, "not an IP address and port: %s %d", host, port);
        return NULL;
    }
    *out_fd = fd;
    Py_RETURN_NONE;
}

static PyObject *Rule_set_output(Rule *self, PyObject *args)
{
    return set_output(args, &self->out_fd, &self->out_addr, &self->out_addrlen);
}

static PyObject *set_srtp(PyObject *args, PyObject **owner, void **ctx, srtp_fn *fn)
{
    PyObject *o;
    unsigned long long c = 0, f = 0;
    if (!PyArg_ParseTuple(args, "O|KK", &o, &c, &f))
        return NULL;
    rule_clear_srtp(owner, ctx, fn);
    if (o != Py_None) {
        if (!c || !f) {
            PyErr_SetString(PyExc_ValueError, "an SRTP session needs its srtp_t and function addresses");
            return NULL;
        }
        Py_INCREF(o);
        *owner = o;
        *ctx = (void *)(uintptr_t)c;
        *fn = (srtp_fn)(uintptr_t)f;
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Rule_set_jitter_doc,
             "set_jitter(Jitter) or set_jitter(None): put accepted packets, decrypted, into this jitter buffer\n"
             "(media.bridge.Bridge.receive_rtp of a transcoded path) instead of forwarding them.");
static PyObject *Rule_set_jitter(Rule *self, PyObject *jitter)
{
    if (set_jitter_ref(&self->into, jitter) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Rule_take_captured_doc,
             "take_captured() -> [payload, ...]: the payloads forwarded (or held) since the last call while\n"
             "capture is on (CSRCs, header extension and padding removed), oldest first.");
static PyObject *Rule_take_captured(Rule *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = self->captured ? self->captured : PyList_New(0);
    self->captured = NULL;
    return out;
}

PyDoc_STRVAR(Rule_set_srtp_in_doc,
             "set_srtp_in(owner, srtp_t, srtp_unprotect) or set_srtp_in(None): unprotect what comes in.\n"
             "owner (the pylibsrtp Session) is kept alive while the rule uses its srtp_t.");
static PyObject *Rule_set_srtp_in(Rule *self, PyObject *args)
{
    return set_srtp(args, &self->srtp_in_owner, &self->srtp_in_ctx, &self->srtp_in);
}

PyDoc_STRVAR(Rule_set_srtp_out_doc, "set_srtp_out(owner, srtp_t, srtp_protect) or set_srtp_out(None): protect what goes out.");
static PyObject *Rule_set_srtp_out(Rule *self, PyObject *args)
{
    return set_srtp(args, &self->srtp_out_owner, &self->srtp_out_ctx, &self->srtp_out);
}

PyDoc_STRVAR(Rule_take_doc,
             "take() -> (packets_in, packets_out, octets_out, held, last_arrival, advanced): the counters since\n"
             "the last take (then zeroed) and whether the highest sequence sent moved.");
static PyObject *Rule_take(Rule *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *t = Py_BuildValue("LLLLdi", self->packets_in, self->packets_out, self->octets_out, self->held,
                                self->last_arrival, self->advanced);
    self->packets_in = self->packets_out = self->octets_out = self->held = 0;
    self->advanced = 0;
    return t;
}

PyDoc_STRVAR(Rule_reception_doc,
             "reception() -> (probation, max_seq, cycles, base_seq, bad_seq, received, transit|None, jitter,\n"
             "last_arrival|None, reinit): the RFC 3550 receive state (reinit is cleared).");
static PyObject *Rule_reception(Rule *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *transit = self->has_transit ? PyFloat_FromDouble(self->transit) : Py_NewRef(Py_None);
    PyObject *arrival = self->has_rec_arrival ? PyFloat_FromDouble(self->rec_arrival) : Py_NewRef(Py_None);
    if (!transit || !arrival) {
        Py_XDECREF(transit);
        Py_XDECREF(arrival);
        return NULL;
    }
    PyObject *t = Py_BuildValue("iLLLLLNdNi", self->probation, self->max_seq, self->cycles, self->base_seq,
                                self->bad_seq, self->received, transit, self->jitter, arrival, self->reinit);
    self->reinit = 0;
    return t;
}

PyDoc_STRVAR(Rule_set_reception_doc,
             "set_reception(probation, max_seq, cycles, base_seq, bad_seq, received, transit|None, jitter,\n"
             "last_arrival|None, clock_rate, min_sequential): start tracking from this state.");
static PyObject *Rule_set_reception(Rule *self, PyObject *args)
{
    PyObject *transit, *arrival;
    int probation, min_sequential;
    long long max_seq, cycles, base_seq, bad_seq, received;
    double jitter, clock_rate;
    if (!PyArg_ParseTuple(args, "iLLLLLOdOdi", &probation, &max_seq, &cycles, &base_seq, &bad_seq, &received,
                          &transit, &jitter, &arrival, &clock_rate, &min_sequential))
        return NULL;
    double t = 0, a = 0;
    if (transit != Py_None && (t = PyFloat_AsDouble(transit)) == -1.0 && PyErr_Occurred())
        return NULL;
    if (arrival != Py_None && (a = PyFloat_AsDouble(arrival)) == -1.0 && PyErr_Occurred())
        return NULL;
    self->probation = probation;
    self->max_seq = max_seq;
    self->cycles = cycles;
    self->base_seq = base_seq;
    self->bad_seq = bad_seq;
    self->received = received;
    self->has_transit = transit != Py_None;
    self->transit = t;
    self->jitter = jitter;
    self->has_rec_arrival = arrival != Py_None;
    self->rec_arrival = a;
    self->clock_rate = clock_rate;
    self->min_sequential = min_sequential;
    self->reinit = 0;
    self->track_reception = 1;
    Py_RETURN_NONE;
}

static PyMethodDef Rule_methods[] = {
    {"set_output", (PyCFunction)Rule_set_output, METH_VARARGS, Rule_set_output_doc},
    {"set_jitter", (PyCFunction)Rule_set_jitter, METH_O, Rule_set_jitter_doc},
    {"set_srtp_in", (PyCFunction)Rule_set_srtp_in, METH_VARARGS, Rule_set_srtp_in_doc},
    {"set_srtp_out", (PyCFunction)Rule_set_srtp_out, METH_VARARGS, Rule_set_srtp_out_doc},
    {"take", (PyCFunction)Rule_take, METH_NOARGS, Rule_take_doc},
    {"take_captured", (PyCFunction)Rule_take_captured, METH_NOARGS, Rule_take_captured_doc},
    {"reception", (PyCFunction)Rule_reception, METH_NOARGS, Rule_reception_doc},
    {"set_reception", (PyCFunction)Rule_set_reception, METH_VARARGS, Rule_set_reception_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Rule_members[] = {
    {"in_pt", T_INT, offsetof(Rule, in_pt), 0, "payload type forwarded (others go to Python)"},
    {"src_ssrc", T_UINT, offsetof(Rule, src_ssrc), 0, "SSRC forwarded (another one goes to Python)"},
    {"out_pt", T_INT, offsetof(Rule, out_pt), 0, "payload type written out"},
    {"out_ssrc", T_UINT, offsetof(Rule, out_ssrc), 0, "SSRC written out"},
    {"seq_off", T_UINT, offsetof(Rule, seq_off), 0, "added to the sequence number (mod 2^16)"},
    {"ts_off", T_UINT, offsetof(Rule, ts_off), 0, "added to the timestamp (mod 2^32)"},
    {"hold_until", T_DOUBLE, offsetof(Rule, hold_until), 0, "counted but not sent before this time"},
    {"out_fd", T_INT, offsetof(Rule, out_fd), READONLY, "socket it sends from"},
    {"srtp_errors", T_LONGLONG, offsetof(Rule, srtp_errors), 0, "packets dropped by SRTP (auth, replay)"},
    {"send_errors", T_LONGLONG, offsetof(Rule, send_errors), 0, "packets the kernel refused to send"},
    {"highest_out_seq", T_INT, offsetof(Rule, highest_out_seq), 0, "highest sequence sent, -1 if none"},
    {"last_out_ts", T_UINT, offsetof(Rule, last_out_ts), 0, "timestamp of that packet"},
    {"last_sent_at", T_DOUBLE, offsetof(Rule, last_sent_at), 0, "when it was sent"},
    {"track_reception", T_INT, offsetof(Rule, track_reception), 0, "keep RFC 3550 receive statistics"},
    {"capture", T_INT, offsetof(Rule, capture), 0, "keep the payloads for take_captured()"},
    {NULL},
};

static PyTypeObject RuleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._relay.Rule",
    .tp_basicsize = sizeof(Rule),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One direction of a passthrough call: what matches, the rewrite, where it goes, its counters.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Rule_init,
    .tp_dealloc = (destructor)Rule_dealloc,
    .tp_methods = Rule_methods,
    .tp_members = Rule_members,
};

/* ------------------------------------------------------------------------------------------------------ */
/* Transcoder: one transcoded direction's 20 ms tick (media.bridge.tick_bridges for one path, in C)        */
/* ------------------------------------------------------------------------------------------------------ */

/* libopus, through the addresses ctypes resolved (media.opus): the states are the Python objects' own */
typedef int (*opus_decode_fn)(void *st, const uint8_t *data, int32_t len, int16_t *pcm, int frame_size, int fec);
typedef int32_t (*opus_encode_fn)(void *st, const int16_t *pcm, int frame_size, uint8_t *data, int32_t max);
typedef int (*opus_ctl_fn)(void *st, int request, ...);
static opus_decode_fn opus_decode_p;
static opus_encode_fn opus_encode_p;
static opus_ctl_fn opus_encoder_ctl_p;

#define FRAME 160                 /* 20 ms at the bridge's 8 kHz */
#define MAX_DECODE 960            /* 120 ms: the longest packet libopus decodes */
#define MAX_OPUS 4000             /* libopus's recommended packet buffer */
#define OPUS_SET_PACKET_LOSS_PERC 4014
#define LOSS_TICKS 50
#define MAX_LOSS_PERC 40
#define PLC_FADE 0.6
enum { LAW_NONE = 0, LAW_ULAW = 1, LAW_ALAW = 2 };

typedef struct {
    PyObject_HEAD
    int engaged;                /* the C tick runs this path (else Python's tick does, or nobody) */
    int phase;                  /* which slot of the 20 ms frame it runs in (Relay.tick with slots) */
    double ticked_at;           /* when it last ran (-1: never) */
    Jitter *jitter;             /* the path's receive buffer */
    Jitter *reverse;            /* the other direction's, for the loss estimate behind FEC (or NULL) */
    void *decoder;              /* OpusDecoder state (src is Opus), else src_law says which G.711 */
    void *encoder;              /* OpusEncoder state (dst is Opus), else dst_law */
    int src_law, dst_law;
    /* the outgoing stream (media.rtp.RtpSender) */
    int payload_type;
    unsigned int ssrc, sequence, timestamp;
    int marker_next, frame_samples;
    long long packets_sent, octets_sent;
    unsigned int last_timestamp;
    double last_sent_at;
    int sent;                   /* a packet went out since Python last looked (last_* are valid) */
    /* where it goes */
    int out_fd;
    struct sockaddr_storage out_addr;
    socklen_t out_addrlen;
    void *srtp_ctx;
    srtp_fn srtp;
    PyObject *srtp_owner;
    /* media.bridge.BridgeStats deltas since Python last looked */
    long long packets_out, concealed, fec, decode_errors;
    long long encode_errors, srtp_errors, send_errors;
    /* G.711 concealment: the last good frame, repeated fading */
    int has_last_pcm;
    int16_t last_pcm[FRAME];
    double plc_gain;
    /* in-band DTMF watch (media.dtmf.classify_frame_py on each decoded frame): a frame that holds a key hands
     * the path back to Python, whose DtmfDetector decides about digits; silent frames are only counted */
    int inband;
    double dt_min_energy, dt_fwd, dt_rev, dt_rel, dt_ratio, dt_hrow, dt_hcol;
    long long inband_quiet;
    int inband_code;
    int handback;               /* the tick stopped itself: Python must look at the path */
    PyObject *owner;            /* whatever Python wants back with a handback (the worker: the call id) */
    PyObject *captured;         /* list: each decoded frame as 320 bytes of PCM (recording, supervision), or NULL */
    /* in-band FEC follows the loss (media.bridge._adapt_fec) */
    int loss_ticks;
    long long mark_received, mark_lost;
    double reported_loss;
    int loss_perc;
    /* this tick's packet, until the batch is sent */
    int pkt_len;
    uint8_t pkt[12 + MAX_OPUS + TAIL_ROOM];
} Transcoder;

static int Transcoder_init(Transcoder *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ""))
        return -1;
    self->out_fd = -1;
    self->plc_gain = 1.0;
    self->inband_code = -1;
    self->ticked_at = -1.0;
    return 0;
}

static void Transcoder_dealloc(Transcoder *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->captured);
    Py_CLEAR(self->jitter);
    Py_CLEAR(self->reverse);
    Py_CLEAR(self->srtp_owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* whether the transcoder has both its codecs (set_codecs, and not detached) */
static int has_codecs(const Transcoder *t)
{
    return t->jitter && (t->decoder || t->src_law != LAW_NONE) && (t->encoder || t->dst_law != LAW_NONE);
}

/* fit_frame after a decode of n samples: truncate, or zero-pad */
static void fit(int16_t *pcm, int n)
{
    if (n < 0)
        n = 0;
    if (n < FRAME)
        memset(pcm + n, 0, (size_t)(FRAME - n) * sizeof(int16_t));
}

static void g711_decode_into(int law, const uint8_t *codes, int n, int16_t *pcm)
{
    if (n > FRAME)
        n = FRAME;
    uint8_t (*table)[2] = law == LAW_ULAW ? ulaw_dec : alaw_dec;
    for (int i = 0; i < n; i++)
        pcm[i] = (int16_t)(table[codes[i]][0] | (table[codes[i]][1] << 8));
    fit(pcm, n);
}

/* media.bridge._adapt_fec */
static void adapt_fec(Transcoder *t)
{
    double observed = 0.0;
    if (t->reverse) {
        long long received = t->reverse->received, lost = t->reverse->lost;
        long long d_received = received - t->mark_received, d_lost = lost - t->mark_lost;
        t->mark_received = received;
        t->mark_lost = lost;
        if (d_lost > 0) {
            long long total = d_lost + d_received;
            observed = (double)d_lost / (double)(total > 1 ? total : 1);
        }
    }
    double loss = observed > t->reported_loss ? observed : t->reported_loss;
    int percent = (int)(100 * loss + 0.999);
    if (percent > MAX_LOSS_PERC)
        percent = MAX_LOSS_PERC;
    if (percent != t->loss_perc && opus_encoder_ctl_p(t->encoder, OPUS_SET_PACKET_LOSS_PERC, (int32_t)percent) == 0)
        t->loss_perc = percent;
}

/* The frame this tick plays (media.bridge._pull): 1 with pcm filled, 0 for nothing; *good for a real frame */
static int pull_frame(Transcoder *t, double now, int16_t *pcm, int *good)
{
    JItem item;
    jitter_get(t->jitter, now, &item);
    *good = 0;
    if (item.kind == J_NONE)
        return 0;
    if (item.kind == J_FRAME) {
        *good = 1;
        if (t->decoder) {
            int16_t buf[MAX_DECODE];
            int n = item.len > 0 ? opus_decode_p(t->decoder, item.payload, item.len, buf, MAX_DECODE, 0) : -4;
            if (n >= 0) {
                memcpy(pcm, buf, (size_t)(n < FRAME ? n : FRAME) * sizeof(int16_t));
                fit(pcm, n);
            } else {
                t->decode_errors++;
                fit(pcm, opus_decode_p(t->decoder, NULL, 0, pcm, FRAME, 0));
                t->concealed++;
            }
        } else {
            g711_decode_into(t->src_law, item.payload, item.len, pcm);
        }
        free(item.payload);
        return 1;
    }
    t->concealed++;
    if (t->decoder) {
        if (item.next) {
            int n = item.next_len > 0 ? opus_decode_p(t->decoder, item.next, item.next_len, pcm, FRAME, 1) : -4;
            if (n >= 0) {
                fit(pcm, n);
                t->fec++;
                return 1;
            }
            t->decode_errors++;
        }
        fit(pcm, opus_decode_p(t->decoder, NULL, 0, pcm, FRAME, 0));
    } else if (t->has_last_pcm) {
        t->plc_gain *= PLC_FADE;
        for (int i = 0; i < FRAME; i++)
            pcm[i] = (int16_t)(t->last_pcm[i] * t->plc_gain);
    } else {
        memset(pcm, 0, FRAME * sizeof(int16_t));
    }
    return 1;
}

/* media.dtmf: the 8 DTMF frequencies, their second harmonics, and the key of each (row, column) */
static const double dtmf_freqs[8] = {697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0};
static const int dtmf_code_of_cell[4][4] = {{1, 2, 3, 12}, {4, 5, 6, 13}, {7, 8, 9, 14}, {10, 0, 11, 15}};

/* goertzel_powers_py for one frequency: |DFT|^2 by the Goertzel recursion, in the reference's order */
static double goertzel(const int16_t *pcm, int n, double f)
{
    double coeff = 2.0 * cos(2.0 * M_PI * f / 8000);
    double s1 = 0.0, s2 = 0.0;
    for (int i = 0; i < n; i++) {
        double s0 = (double)pcm[i] + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    return s1 * s1 + s2 * s2 - coeff * s1 * s2;
}

/* classify_frame_py (and _judge): the event code 0-15 a 20 ms frame holds, or -1 */
static int dtmf_classify(const Transcoder *t, const int16_t *pcm)
{
    double scale = 2.0 / FRAME, p[8], energy = 0.0;
    for (int k = 0; k < 8; k++)
        p[k] = goertzel(pcm, FRAME, dtmf_freqs[k]) * scale;
    for (int i = 0; i < FRAME; i++)
        energy += (double)pcm[i] * (double)pcm[i];
    int r = 0, c = 0;
    for (int k = 1; k < 4; k++) {
        if (p[k] > p[r])
            r = k;
        if (p[4 + k] > p[4 + c])
            c = k;
    }
    double pr = p[r], pc = p[4 + c];
    if (pr < t->dt_min_energy || pc < t->dt_min_energy)
        return -1;
    if (pr > pc * t->dt_fwd || pc > pr * t->dt_rev)
        return -1;
    for (int k = 0; k < 4; k++) {
        if ((k != r && p[k] * t->dt_rel > pr) || (k != c && p[4 + k] * t->dt_rel > pc))
            return -1;
    }
    if (pr + pc < t->dt_ratio * energy)
        return -1;
    double h_row = goertzel(pcm, FRAME, 2 * dtmf_freqs[r]) * scale;
    double h_col = goertzel(pcm, FRAME, 2 * dtmf_freqs[4 + c]) * scale;
    if (h_row * t->dt_hrow > pr || h_col * t->dt_hcol > pc)
        return -1;
    return dtmf_code_of_cell[r][c];
}

/* One tick of the path: 1 when t->pkt holds a packet to send, else 0 */
static int transcode_tick(Transcoder *t, double now)
{
    int16_t pcm[FRAME];
    int good;
    t->pkt_len = 0;
    t->ticked_at = now;
    if (!pull_frame(t, now, pcm, &good)) {
        t->timestamp += (unsigned int)t->frame_samples;       /* RtpSender.skip: the timeline runs on */
        t->marker_next = 1;
        return 0;
    }
    if (good && t->src_law != LAW_NONE) {
        memcpy(t->last_pcm, pcm, sizeof(pcm));
        t->has_last_pcm = 1;
        t->plc_gain = 1.0;
    }
    if (t->captured) {                                        /* what this side sent, for the recorder/mix */
        PyObject *frame = PyBytes_FromStringAndSize(NULL, sizeof(pcm));
        if (frame) {
            uint8_t *b = (uint8_t *)PyBytes_AS_STRING(frame);
            for (int i = 0; i < FRAME; i++) {
                b[2 * i] = (uint8_t)(pcm[i] & 0xFF);
                b[2 * i + 1] = (uint8_t)((uint16_t)pcm[i] >> 8);
            }
        }
        if (!frame || PyList_Append(t->captured, frame) < 0)
            PyErr_Clear();                                    /* out of memory: a gap in the recording */
        Py_XDECREF(frame);
    }
    if (t->inband) {
        int code = dtmf_classify(t, pcm);
        if (code < 0) {
            t->inband_quiet++;
        } else {                                              /* a key: Python's detector takes it from here */
            t->inband_code = code;
            t->handback = 1;
            t->engaged = 0;
        }
    }
    uint8_t *payload = t->pkt + 12;
    int n;
    if (t->encoder) {
        if (++t->loss_ticks >= LOSS_TICKS) {
            t->loss_ticks = 0;
            adapt_fec(t);
        }
        n = opus_encode_p(t->encoder, pcm, FRAME, payload, MAX_OPUS);
        if (n < 0) {
            t->encode_errors++;
            n = 0;
        }
        if (n <= 2) {                                         /* DTX (or nothing): not sent */
            t->timestamp += (unsigned int)t->frame_samples;
            t->marker_next = 1;
            return 0;
        }
    } else {
        const uint8_t *table = t->dst_law == LAW_ULAW ? ulaw_enc : alaw_enc;
        for (int i = 0; i < FRAME; i++)
            payload[i] = table[(uint16_t)pcm[i]];
        n = FRAME;
    }
    /* RtpSender.packetize */
    uint8_t *h = t->pkt;
    h[0] = 0x80;
    h[1] = (uint8_t)((t->marker_next ? 0x80 : 0) | (t->payload_type & 0x7F));
    h[2] = (uint8_t)(t->sequence >> 8);
    h[3] = (uint8_t)t->sequence;
    h[4] = (uint8_t)(t->timestamp >> 24);
    h[5] = (uint8_t)(t->timestamp >> 16);
    h[6] = (uint8_t)(t->timestamp >> 8);
    h[7] = (uint8_t)t->timestamp;
    h[8] = (uint8_t)(t->ssrc >> 24);
    h[9] = (uint8_t)(t->ssrc >> 16);
    h[10] = (uint8_t)(t->ssrc >> 8);
    h[11] = (uint8_t)t->ssrc;
    t->marker_next = 0;
    t->last_timestamp = t->timestamp;
    t->last_sent_at = now;
    t->sent = 1;
    t->sequence = (t->sequence + 1) & 0xFFFF;
    t->timestamp += (unsigned int)t->frame_samples;
    t->packets_sent++;
    t->octets_sent += n;
    t->packets_out++;
    int len = 12 + n;
    if (t->srtp) {
        if (t->srtp(t->srtp_ctx, t->pkt, &len) != 0) {
            t->srtp_errors++;
            return 0;
        }
    }
    t->pkt_len = len;
    return 1;
}

PyDoc_STRVAR(Transcoder_set_output_doc,
             "set_output(fd, host, port): send the path's packets from socket fd to host:port.");
static PyObject *Transcoder_set_output(Transcoder *self, PyObject *args)
{
    return set_output(args, &self->out_fd, &self->out_addr, &self->out_addrlen);
}

PyDoc_STRVAR(Transcoder_set_srtp_doc,
             "set_srtp(owner, srtp_t, srtp_protect) or set_srtp(None): protect what goes out.");
static PyObject *Transcoder_set_srtp(Transcoder *self, PyObject *args)
{
    return set_srtp(args, &self->srtp_owner, &self->srtp_ctx, &self->srtp);
}

PyDoc_STRVAR(Transcoder_set_codecs_doc,
             "set_codecs(jitter, reverse_jitter|None, decoder_state, src_law, encoder_state, dst_law):\n"
             "the path's buffer (and the other direction's, for the FEC loss estimate), the libopus states\n"
             "(0: none; the OpusDecoder/OpusEncoder objects own them) and the G.711 laws (0 Opus, 1 µ, 2 A).");
static PyObject *Transcoder_set_codecs(Transcoder *self, PyObject *args)
{
    PyObject *jitter, *reverse;
    unsigned long long decoder, encoder;
    int src_law, dst_law;
    if (!PyArg_ParseTuple(args, "OOKiKi", &jitter, &reverse, &decoder, &src_law, &encoder, &dst_law))
        return NULL;
    if (jitter == Py_None) {
        PyErr_SetString(PyExc_TypeError, "a transcoded path needs its jitter buffer");
        return NULL;
    }
    if ((decoder == 0) == (src_law == LAW_NONE) || (encoder == 0) == (dst_law == LAW_NONE)
            || src_law < 0 || src_law > 2 || dst_law < 0 || dst_law > 2) {
        PyErr_SetString(PyExc_ValueError, "each side is Opus (a libopus state) or G.711 (a law), not both");
        return NULL;
    }
    if ((decoder && !opus_decode_p) || (encoder && (!opus_encode_p || !opus_encoder_ctl_p))) {
        PyErr_SetString(PyExc_RuntimeError, "libopus functions not set (media._relay.set_opus)");
        return NULL;
    }
    if (set_jitter_ref(&self->jitter, jitter) < 0 || set_jitter_ref(&self->reverse, reverse) < 0)
        return NULL;
    self->decoder = (void *)(uintptr_t)decoder;
    self->encoder = (void *)(uintptr_t)encoder;
    self->src_law = src_law;
    self->dst_law = dst_law;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Transcoder_detach_doc,
             "detach(): stop ticking and forget the libopus states (before the Python objects free them).");
static PyObject *Transcoder_detach(Transcoder *self, PyObject *Py_UNUSED(ignored))
{
    self->engaged = 0;
    self->decoder = self->encoder = NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Transcoder_set_plc_doc,
             "set_plc(pcm|None, gain): the G.711 concealment state (the last good frame, 320 bytes LE, and its gain).");
static PyObject *Transcoder_set_plc(Transcoder *self, PyObject *args)
{
    PyObject *obj;
    double gain;
    if (!PyArg_ParseTuple(args, "Od", &obj, &gain))
        return NULL;
    self->plc_gain = gain;
    if (obj == Py_None) {
        self->has_last_pcm = 0;
        Py_RETURN_NONE;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (view.len != (Py_ssize_t)sizeof(self->last_pcm)) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "the concealment frame is %d bytes of PCM", (int)sizeof(self->last_pcm));
        return NULL;
    }
    const uint8_t *b = view.buf;
    for (int i = 0; i < FRAME; i++)
        self->last_pcm[i] = (int16_t)(b[2 * i] | (b[2 * i + 1] << 8));
    PyBuffer_Release(&view);
    self->has_last_pcm = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Transcoder_plc_doc, "plc() -> (pcm bytes LE | None, gain): the G.711 concealment state.");
static PyObject *Transcoder_plc(Transcoder *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->has_last_pcm)
        return Py_BuildValue("(Od)", Py_None, self->plc_gain);
    uint8_t b[sizeof(self->last_pcm)];
    for (int i = 0; i < FRAME; i++) {
        b[2 * i] = (uint8_t)(self->last_pcm[i] & 0xFF);
        b[2 * i + 1] = (uint8_t)((uint16_t)self->last_pcm[i] >> 8);
    }
    return Py_BuildValue("(y#d)", (const char *)b, (Py_ssize_t)sizeof(b), self->plc_gain);
}

PyDoc_STRVAR(Transcoder_set_inband_doc,
             "set_inband(thresholds | None): watch decoded frames for DTMF with media.dtmf._thresholds(cfg, 160)\n"
             "(min_energy, forward twist, reverse twist, relative peak, signal ratio, row and column harmonic).");
static PyObject *Transcoder_set_inband(Transcoder *self, PyObject *arg)
{
    self->inband_quiet = 0;
    self->inband_code = -1;
    self->handback = 0;
    if (arg == Py_None) {
        self->inband = 0;
        Py_RETURN_NONE;
    }
    if (!PyArg_ParseTuple(arg, "ddddddd", &self->dt_min_energy, &self->dt_fwd, &self->dt_rev, &self->dt_rel,
                          &self->dt_ratio, &self->dt_hrow, &self->dt_hcol))
        return NULL;
    self->inband = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Transcoder_set_capture_doc,
             "set_capture(list | None): append each decoded frame (320 bytes, 16-bit LE) to this list, as\n"
             "Bridge.captured gets them for the recorder and the supervisor mix.");
static PyObject *Transcoder_set_capture(Transcoder *self, PyObject *arg)
{
    if (arg != Py_None && !PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "set_capture takes a list or None");
        return NULL;
    }
    Py_XINCREF(arg == Py_None ? NULL : arg);
    Py_XSETREF(self->captured, arg == Py_None ? NULL : arg);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Transcoder_take_inband_doc,
             "take_inband() -> (silent frames, code of the frame that handed back or -1): what the in-band watch\n"
             "saw since the last call (then cleared), for DtmfDetector.advance_silent and step.");
static PyObject *Transcoder_take_inband(Transcoder *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(Li)", self->inband_quiet, self->inband_code);
    self->inband_quiet = 0;
    self->inband_code = -1;
    self->handback = 0;
    return r;
}

PyDoc_STRVAR(Transcoder_take_doc,
             "take() -> (packets_out, concealed, fec, decode_errors, encode_errors, srtp_errors, send_errors,\n"
             "sent): the counters since the last take (then zeroed), and whether a packet went out.");
static PyObject *Transcoder_take(Transcoder *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = Py_BuildValue("(LLLLLLLi)", self->packets_out, self->concealed, self->fec, self->decode_errors,
                                self->encode_errors, self->srtp_errors, self->send_errors, self->sent);
    self->packets_out = self->concealed = self->fec = self->decode_errors = 0;
    self->encode_errors = self->srtp_errors = self->send_errors = 0;
    self->sent = 0;
    return r;
}

PyDoc_STRVAR(Transcoder_tick_doc,
             "tick(now) -> packet | None: run one 20 ms step here and return the RTP (SRTP) packet instead of\n"
             "sending it (tests compare it with the Python path's).");
static PyObject *Transcoder_tick(Transcoder *self, PyObject *arg)
{
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    if (!has_codecs(self)) {
        PyErr_SetString(PyExc_ValueError, "the transcoder has no codecs (set_codecs, or detached)");
        return NULL;
    }
    if (!transcode_tick(self, now))
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)self->pkt, self->pkt_len);
}

static PyMethodDef Transcoder_methods[] = {
    {"set_output", (PyCFunction)Transcoder_set_output, METH_VARARGS, Transcoder_set_output_doc},
    {"set_srtp", (PyCFunction)Transcoder_set_srtp, METH_VARARGS, Transcoder_set_srtp_doc},
    {"set_codecs", (PyCFunction)Transcoder_set_codecs, METH_VARARGS, Transcoder_set_codecs_doc},
    {"detach", (PyCFunction)Transcoder_detach, METH_NOARGS, Transcoder_detach_doc},
    {"set_plc", (PyCFunction)Transcoder_set_plc, METH_VARARGS, Transcoder_set_plc_doc},
    {"plc", (PyCFunction)Transcoder_plc, METH_NOARGS, Transcoder_plc_doc},
    {"take", (PyCFunction)Transcoder_take, METH_NOARGS, Transcoder_take_doc},
    {"set_inband", (PyCFunction)Transcoder_set_inband, METH_O, Transcoder_set_inband_doc},
    {"set_capture", (PyCFunction)Transcoder_set_capture, METH_O, Transcoder_set_capture_doc},
    {"take_inband", (PyCFunction)Transcoder_take_inband, METH_NOARGS, Transcoder_take_inband_doc},
    {"tick", (PyCFunction)Transcoder_tick, METH_O, Transcoder_tick_doc},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Transcoder_members[] = {
    {"engaged", T_INT, offsetof(Transcoder, engaged), 0, "Relay.tick runs this path"},
    {"phase", T_INT, offsetof(Transcoder, phase), 0, "the slot of the 20 ms frame it runs in"},
    {"ticked_at", T_DOUBLE, offsetof(Transcoder, ticked_at), 0, "when it last ran (-1: never)"},
    {"payload_type", T_INT, offsetof(Transcoder, payload_type), 0, "payload type sent"},
    {"ssrc", T_UINT, offsetof(Transcoder, ssrc), 0, "SSRC sent"},
    {"sequence", T_UINT, offsetof(Transcoder, sequence), 0, "next sequence number"},
    {"timestamp", T_UINT, offsetof(Transcoder, timestamp), 0, "next timestamp"},
    {"marker_next", T_INT, offsetof(Transcoder, marker_next), 0, "the next packet starts a talkspurt"},
    {"frame_samples", T_INT, offsetof(Transcoder, frame_samples), 0, "timestamp units per 20 ms sent"},
    {"packets_sent", T_LONGLONG, offsetof(Transcoder, packets_sent), 0, "RtpSender.packets_sent"},
    {"octets_sent", T_LONGLONG, offsetof(Transcoder, octets_sent), 0, "RtpSender.octets_sent"},
    {"last_timestamp", T_UINT, offsetof(Transcoder, last_timestamp), 0, "timestamp of the last packet sent"},
    {"last_sent_at", T_DOUBLE, offsetof(Transcoder, last_sent_at), 0, "when it was sent"},
    {"loss_ticks", T_INT, offsetof(Transcoder, loss_ticks), 0, "ticks since the loss was estimated"},
    {"mark_received", T_LONGLONG, offsetof(Transcoder, mark_received), 0, "reverse buffer's received then"},
    {"mark_lost", T_LONGLONG, offsetof(Transcoder, mark_lost), 0, "reverse buffer's lost then"},
    {"reported_loss", T_DOUBLE, offsetof(Transcoder, reported_loss), 0, "loss the receiver reported (RTCP)"},
    {"loss_perc", T_INT, offsetof(Transcoder, loss_perc), 0, "the encoder's expected loss (percent)"},
    {"out_fd", T_INT, offsetof(Transcoder, out_fd), READONLY, "socket it sends from"},
    {"handback", T_INT, offsetof(Transcoder, handback), READONLY, "the tick handed the path back to Python"},
    {"owner", T_OBJECT, offsetof(Transcoder, owner), 0, "returned with handbacks (the worker's call id)"},
    {NULL},
};

static PyTypeObject TranscoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._relay.Transcoder",
    .tp_basicsize = sizeof(Transcoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One transcoded direction's tick in C: jitter buffer, decode/conceal, encode, packetize, SRTP.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Transcoder_init,
    .tp_dealloc = (destructor)Transcoder_dealloc,
    .tp_methods = Transcoder_methods,
    .tp_members = Transcoder_members,
};

PyDoc_STRVAR(set_opus_doc,
             "set_opus(opus_decode, opus_encode, opus_encoder_ctl): the libopus function addresses (media.opus).");
static PyObject *set_opus(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned long long dec, enc, ctl;
    if (!PyArg_ParseTuple(args, "KKK", &dec, &enc, &ctl))
        return NULL;
    if (!dec || !enc || !ctl) {
        PyErr_SetString(PyExc_ValueError, "null libopus function address");
        return NULL;
    }
    opus_decode_p = (opus_decode_fn)(uintptr_t)dec;
    opus_encode_p = (opus_encode_fn)(uintptr_t)enc;
    opus_encoder_ctl_p = (opus_ctl_fn)(uintptr_t)ctl;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------------------------------------ */
/* Relay: the epoll set, the rule table, the batch loop                                                    */
/* ------------------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int epfd;
    PyObject *rules;            /* dict: key (bytes) -> Rule */
    PyObject *transcoders;      /* list of Transcoder, ticked by tick() while engaged */
    PyObject *handbacks;        /* owners of the transcoders that handed back since take_handbacks() */
    long long transcoded;
    long long forwarded, delivered, slow, dropped, truncated, recv_errors, send_errors, protect_errors;
    struct mmsghdr in_msgs[VLEN];
    struct iovec in_iov[VLEN];
    struct sockaddr_storage in_addr[VLEN];
    uint8_t *bufs;              /* VLEN * BUF_SIZE */
    struct mmsghdr out_msgs[VLEN];
    struct iovec out_iov[VLEN];
    int out_fd[VLEN];
    Rule *out_rule[VLEN];
    int nout;
} Relay;

static void make_key(char key[KEY_SIZE], int fd, const struct sockaddr *sa)
{
    memset(key, 0, KEY_SIZE);
    memcpy(key, &fd, sizeof(int));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
        key[4] = 4;
        memcpy(key + 6, &a4->sin_port, 2);
        memcpy(key + 8, &a4->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)sa;
        key[4] = 6;
        memcpy(key + 6, &a6->sin6_port, 2);
        memcpy(key + 8, &a6->sin6_addr, 16);
    } else {
        key[4] = (char)0xFF;
    }
}

static PyObject *key_for(int fd, const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char key[KEY_SIZE];
    if (parse_address(host, port, &ss, &len) < 0) {
        PyErr_Format(PyExc_ValueError, "not an IP address and port: %s %d", host, port);
        return NULL;
    }
    make_key(key, fd, (struct sockaddr *)&ss);
    return PyBytes_FromStringAndSize(key, KEY_SIZE);
}

static PyObject *address_tuple(const struct sockaddr_storage *ss)
{
    char host[INET6_ADDRSTRLEN];
    int port;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a4->sin_addr, host, sizeof(host));
        port = ntohs(a4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof(host));
        port = ntohs(a6->sin6_port);
    } else {
        return Py_BuildValue("(si)", "", 0);
    }
    return Py_BuildValue("(si)", host, port);
}

static int Relay_init(Relay *self, PyObject *args, PyObject *kwds)
{
    if (!PyArg_ParseTuple(args, ""))
        return -1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->rules = PyDict_New();
    self->transcoders = PyList_New(0);
    self->handbacks = PyList_New(0);
    self->bufs = PyMem_Malloc((size_t)VLEN * BUF_SIZE);
    if (!self->rules || !self->transcoders || !self->handbacks || !self->bufs) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < VLEN; i++) {
        self->in_iov[i].iov_base = self->bufs + (size_t)i * BUF_SIZE;
        self->in_iov[i].iov_len = BUF_SIZE - TAIL_ROOM;
    }
    return 0;
}

static void Relay_dealloc(Relay *self)
{
    for (int i = 0; i < self->nout; i++)
        Py_XDECREF(self->out_rule[i]);
    if (self->epfd >= 0)
        close(self->epfd);
    Py_CLEAR(self->rules);
    Py_CLEAR(self->transcoders);
    Py_CLEAR(self->handbacks);
    PyMem_Free(self->bufs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_open(Relay *self)
{
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "the relay is closed");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(Relay_fileno_doc, "fileno(): the epoll descriptor (readable when a socket has datagrams).");
static PyObject *Relay_fileno(Relay *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->epfd);
}

PyDoc_STRVAR(Relay_add_socket_doc, "add_socket(fd): read this non-blocking UDP socket in drain().");
static PyObject *Relay_add_socket(Relay *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd) || check_open(self) < 0)
        return NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Relay_remove_socket_doc,
             "remove_socket(fd): stop reading it; rules that read or send on it are removed too.");
static PyObject *Relay_remove_socket(Relay *self, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd) || check_open(self) < 0)
        return NULL;
    if (epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 && errno != ENOENT && errno != EBADF)
        return PyErr_SetFromErrno(PyExc_OSError);
    PyObject *stale = PyList_New(0);
    if (!stale)
        return NULL;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(self->rules, &pos, &key, &value)) {
        int key_fd;
        memcpy(&key_fd, PyBytes_AS_STRING(key), sizeof(int));
        if (key_fd == fd || ((Rule *)value)->out_fd == fd) {
            if (PyList_Append(stale, key) < 0) {
                Py_DECREF(stale);
                return NULL;
            }
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(stale); i++)
        PyDict_DelItem(self->rules, PyList_GET_ITEM(stale, i));
    Py_DECREF(stale);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(self->transcoders); i++) {
        Transcoder *t = (Transcoder *)PyList_GET_ITEM(self->transcoders, i);
        if (t->out_fd == fd) {          /* never send on a descriptor that may be reused */
            t->engaged = 0;
            t->out_fd = -1;
        }
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Relay_set_rule_doc,
             "set_rule(fd, host, port, rule): forward what socket fd receives from host:port by rule.");
static PyObject *Relay_set_rule(Relay *self, PyObject *args)
{
    int fd, port;
    const char *host;
    PyObject *rule;
    if (!PyArg_ParseTuple(args, "isiO!", &fd, &host, &port, &RuleType, &rule) || check_open(self) < 0)
        return NULL;
    PyObject *key = key_for(fd, host, port);
    if (!key)
        return NULL;
    int rc = PyDict_SetItem(self->rules, key, rule);
    Py_DECREF(key);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Relay_del_rule_doc, "del_rule(fd, host, port): forget that rule (no error if there is none).");
static PyObject *Relay_del_rule(Relay *self, PyObject *args)
{
    int fd, port;
    const char *host;
    if (!PyArg_ParseTuple(args, "isi", &fd, &host, &port))
        return NULL;
    PyObject *key = key_for(fd, host, port);
    if (!key)
        return NULL;
    if (PyDict_DelItem(self->rules, key) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError)) {
            Py_DECREF(key);
            return NULL;
        }
        PyErr_Clear();
    }
    Py_DECREF(key);
    Py_RETURN_NONE;
}

static void flush_out(Relay *self)
{
    int i = 0;
    while (i < self->nout) {
        int fd = self->out_fd[i];
        int j = i + 1;
        while (j < self->nout && self->out_fd[j] == fd)
            j++;
        int k = i;
        while (k < j) {
            int sent = sendmmsg(fd, &self->out_msgs[k], (unsigned int)(j - k), MSG_DONTWAIT);
            if (sent <= 0) {
                if (sent < 0 && errno == EINTR)
                    continue;
                /* this datagram was refused (buffer full, ICMP error pending): drop it, go on */
                self->send_errors++;
                self->out_rule[k]->send_errors++;
                k++;
            } else {
                k += sent;
            }
        }
        i = j;
    }
    for (i = 0; i < self->nout; i++) {
        Py_DECREF(self->out_rule[i]);
        self->out_rule[i] = NULL;
    }
    self->nout = 0;
}

/* media.rtp.rtp_payload: where the payload of an RTP packet starts and ends (CSRCs, extension, padding) */
static void payload_bounds(const uint8_t *buf, int len, int *start, int *stop)
{
    int pos = 12, end = len;
    if (buf[0] != 0x80) {
        pos = 12 + 4 * (buf[0] & 0x0F);
        if ((buf[0] & 0x10) && len >= pos + 4)
            pos += 4 + 4 * ((buf[pos + 2] << 8) | buf[pos + 3]);
        if ((buf[0] & 0x20) && buf[len - 1] <= len - pos)
            end = len - buf[len - 1];
    }
    if (pos > len)
        pos = len;
    if (pos > end)
        pos = end;
    *start = pos;
    *stop = end;
}

/* 1: consumed here (forwarded, delivered, held or dropped); 0: for Python; -1: error (exception set) */
static int forward(Relay *self, int fd, uint8_t *buf, int len, const struct sockaddr_storage *from, double now)
{
    if (len < 12 || (buf[0] >> 6) != 2 || (buf[1] >= 192 && buf[1] <= 223))
        return 0;                                   /* not RTP (STUN, DTLS, RTCP) or malformed */
    char key[KEY_SIZE];
    make_key(key, fd, (const struct sockaddr *)from);
    PyObject *k = PyBytes_FromStringAndSize(key, KEY_SIZE);
    if (!k) {
        PyErr_Clear();
        return 0;
    }
    Rule *r = (Rule *)PyDict_GetItemWithError(self->rules, k);
    Py_DECREF(k);
    if (!r) {
        PyErr_Clear();
        return 0;
    }
    int pt = buf[1] & 0x7F;
    unsigned int ssrc = ((unsigned int)buf[8] << 24) | ((unsigned int)buf[9] << 16) |
                        ((unsigned int)buf[10] << 8) | buf[11];
    if (pt != r->in_pt || ssrc != r->src_ssrc || (r->out_fd < 0 && !r->into))
        return 0;                                   /* a telephone-event, a new source: the Python path */
    if (r->srtp_in) {
        int l = len;
        if (r->srtp_in(r->srtp_in_ctx, buf, &l) != 0) {
            r->srtp_errors++;
            self->dropped++;
            return 1;                               /* forged, corrupt or replayed: dropped, as in Python */
        }
        len = l;
        if (len < 12)
            return 1;
    }
    unsigned int seq = ((unsigned int)buf[2] << 8) | buf[3];
    unsigned int ts = ((unsigned int)buf[4] << 24) | ((unsigned int)buf[5] << 16) |
                      ((unsigned int)buf[6] << 8) | buf[7];
    if (r->track_reception)
        rec_update(r, seq, ts, now);
    r->packets_in++;
    r->last_arrival = now;
    int pos, end;
    payload_bounds(buf, len, &pos, &end);
    if (r->into) {
        self->delivered++;
        return jitter_put(r->into, seq, ts, buf + pos, end - pos, now, 1, ssrc) < 0 ? -1 : 1;
    }
    if (r->capture) {
        /* what the side sent, for the recorder (before any hold, as in Python) */
        if (!r->captured && !(r->captured = PyList_New(0)))
            return -1;
        PyObject *payload = PyBytes_FromStringAndSize((const char *)buf + pos, end - pos);
        if (!payload || PyList_Append(r->captured, payload) < 0) {
            Py_XDECREF(payload);
            return -1;
        }
        Py_DECREF(payload);
    }
    if (now < r->hold_until) {
        r->held++;
        return 1;
    }
    unsigned int out_seq = (seq + r->seq_off) & 0xFFFF;
    unsigned int out_ts = ts + r->ts_off;
    buf[1] = (uint8_t)((buf[1] & 0x80) | (r->out_pt & 0x7F));
    buf[2] = (uint8_t)(out_seq >> 8);
    buf[3] = (uint8_t)out_seq;
    buf[4] = (uint8_t)(out_ts >> 24);
    buf[5] = (uint8_t)(out_ts >> 16);
    buf[6] = (uint8_t)(out_ts >> 8);
    buf[7] = (uint8_t)out_ts;
    buf[8] = (uint8_t)(r->out_ssrc >> 24);
    buf[9] = (uint8_t)(r->out_ssrc >> 16);
    buf[10] = (uint8_t)(r->out_ssrc >> 8);
    buf[11] = (uint8_t)r->out_ssrc;
    int hi = r->highest_out_seq;
    if (hi < 0 || ((((int)out_seq - hi + 0x8000) & 0xFFFF) - 0x8000) > 0) {
        r->highest_out_seq = (int)out_seq;
        r->last_out_ts = out_ts;
        r->last_sent_at = now;
        r->advanced = 1;
    }
    r->packets_out++;
    r->octets_out += len - 12;
    if (r->srtp_out) {
        int l = len;
        if (r->srtp_out(r->srtp_out_ctx, buf, &l) != 0) {
            r->srtp_errors++;
            self->dropped++;
            return 1;
        }
        len = l;
    }
    int n = self->nout;
    self->out_iov[n].iov_base = buf;
    self->out_iov[n].iov_len = (size_t)len;
    struct msghdr *h = &self->out_msgs[n].msg_hdr;
    memset(h, 0, sizeof(*h));
    h->msg_name = &r->out_addr;
    h->msg_namelen = r->out_addrlen;
    h->msg_iov = &self->out_iov[n];
    h->msg_iovlen = 1;
    self->out_fd[n] = r->out_fd;
    Py_INCREF(r);
    self->out_rule[n] = r;
    self->nout = n + 1;
    self->forwarded++;
    return 1;
}

PyDoc_STRVAR(Relay_drain_doc,
             "drain(now, budget=4096) -> [(fd, datagram, (host, port)), ...]\n"
             "Read every ready socket; forward what the rules match and put what jitter rules accept into their\n"
             "buffers (stamped with now); return the rest, in arrival order.");
static PyObject *Relay_drain(Relay *self, PyObject *args)
{
    double now;
    int budget = 4096;
    if (!PyArg_ParseTuple(args, "d|i", &now, &budget) || check_open(self) < 0)
        return NULL;
    PyObject *slow = PyList_New(0);
    if (!slow)
        return NULL;
    struct epoll_event events[MAX_EVENTS];
    int nev = epoll_wait(self->epfd, events, MAX_EVENTS, 0);
    if (nev < 0 && errno != EINTR) {
        Py_DECREF(slow);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int total = 0;
    for (int e = 0; e < nev && total < budget; e++) {
        int fd = events[e].data.fd;
        for (;;) {
            for (int i = 0; i < VLEN; i++) {
                struct msghdr *h = &self->in_msgs[i].msg_hdr;
                memset(h, 0, sizeof(*h));
                h->msg_name = &self->in_addr[i];
                h->msg_namelen = sizeof(struct sockaddr_storage);
                h->msg_iov = &self->in_iov[i];
                h->msg_iovlen = 1;
            }
            int m = recvmmsg(fd, self->in_msgs, VLEN, MSG_DONTWAIT, NULL);
            if (m < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                    self->recv_errors++;            /* e.g. an ICMP error queued on the socket */
                break;
            }
            for (int i = 0; i < m; i++) {
                uint8_t *buf = self->bufs + (size_t)i * BUF_SIZE;
                int len = (int)self->in_msgs[i].msg_len;
                if (self->in_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                    self->truncated++;              /* larger than any RTP/DTLS datagram we handle */
                    continue;
                }
                int done = forward(self, fd, buf, len, &self->in_addr[i], now);
                if (done < 0) {
                    flush_out(self);
                    Py_DECREF(slow);
                    return NULL;
                }
                if (done)
                    continue;
                self->slow++;
                PyObject *data = PyBytes_FromStringAndSize((const char *)buf, len);
                PyObject *addr = data ? address_tuple(&self->in_addr[i]) : NULL;
                PyObject *item = addr ? Py_BuildValue("(iNN)", fd, data, addr) : NULL;
                if (!item || PyList_Append(slow, item) < 0) {
                    if (!item) {
                        Py_XDECREF(data);
                        Py_XDECREF(addr);
                    }
                    Py_XDECREF(item);
                    flush_out(self);
                    Py_DECREF(slow);
                    return NULL;
                }
                Py_DECREF(item);
            }
            flush_out(self);                        /* before the next recvmmsg reuses the buffers */
            total += m;
            if (m < VLEN || total >= budget)
                break;
        }
    }
    return slow;
}

PyDoc_STRVAR(Relay_send_doc,
             "send([(fd, datagram, (host, port)[, srtp_t, srtp_protect, owner]), ...]) -> datagrams refused\n"
             "Send them with sendmmsg, one call per run of the same fd (order kept per fd): the worker's output\n"
             "of a 20 ms tick in a few system calls. A refused datagram (buffer full, ICMP error) is dropped.\n"
             "With an SRTP session (SrtpContext.c_handles()'s outbound one) the RTP datagram is protected first.");
static PyObject *Relay_send(Relay *self, PyObject *items)
{
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "send() takes a list of (fd, datagram, (host, port))");
        return NULL;
    }
    struct sockaddr_storage addrs[VLEN];
    long long refused = 0;
    Py_ssize_t n = PyList_GET_SIZE(items), i = 0;
    while (i < n) {
        int count = 0, fd = -1;
        while (i < n && count < VLEN) {
            PyObject *item = PyList_GET_ITEM(items, i);
            int item_fd, port;
            const char *host;
            Py_buffer data;
            unsigned long long ctx = 0, fn = 0;
            PyObject *owner = NULL;     /* keeps the SRTP session alive for the call; not used here */
            if (!PyArg_ParseTuple(item, "iy*(si)|KKO", &item_fd, &data, &host, &port, &ctx, &fn, &owner))
                return NULL;
            if (count && item_fd != fd) {
                PyBuffer_Release(&data);
                break;
            }
            if (data.len > BUF_SIZE - TAIL_ROOM || (ctx && !fn)
                    || parse_address(host, port, &addrs[count], &self->out_msgs[count].msg_hdr.msg_namelen) < 0) {
                PyBuffer_Release(&data);
                PyErr_Format(PyExc_ValueError, "cannot send %zd bytes to %s %d", data.len, host, port);
                return NULL;
            }
            uint8_t *buf = self->bufs + (size_t)count * BUF_SIZE;
            int len = (int)data.len;
            memcpy(buf, data.buf, (size_t)data.len);
            PyBuffer_Release(&data);
            i++;
            /* RTP from Python for an SRTP leg: protected here, on the leg's own libsrtp session */
            if (ctx && ((srtp_fn)(uintptr_t)fn)((void *)(uintptr_t)ctx, buf, &len) != 0) {
                self->protect_errors++;
                continue;
            }
            fd = item_fd;
            self->out_iov[count].iov_base = buf;
            self->out_iov[count].iov_len = (size_t)len;
            struct msghdr *h = &self->out_msgs[count].msg_hdr;
            socklen_t namelen = h->msg_namelen;
            memset(h, 0, sizeof(*h));
            h->msg_name = &addrs[count];
            h->msg_namelen = namelen;
            h->msg_iov = &self->out_iov[count];
            h->msg_iovlen = 1;
            count++;
        }
        int k = 0;
        while (k < count) {
            int sent = sendmmsg(fd, &self->out_msgs[k], (unsigned int)(count - k), MSG_DONTWAIT);
            if (sent < 0 && errno == EINTR)
                continue;
            if (sent <= 0) {
                refused++;
                k++;
            } else {
                k += sent;
            }
        }
    }
    self->send_errors += refused;
    return PyLong_FromLongLong(refused);
}

PyDoc_STRVAR(Relay_add_transcoder_doc, "add_transcoder(t): tick() runs t while t.engaged.");
static PyObject *Relay_add_transcoder(Relay *self, PyObject *t)
{
    if (!PyObject_TypeCheck(t, &TranscoderType)) {
        PyErr_SetString(PyExc_TypeError, "add_transcoder takes a media._relay.Transcoder");
        return NULL;
    }
    if (check_open(self) < 0)
        return NULL;
    int found = PySequence_Contains(self->transcoders, t);
    if (found < 0 || (!found && PyList_Append(self->transcoders, t) < 0))
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Relay_remove_transcoder_doc, "remove_transcoder(t): forget t (no error if it is not there).");
static PyObject *Relay_remove_transcoder(Relay *self, PyObject *t)
{
    if (!self->transcoders)
        Py_RETURN_NONE;
    for (Py_ssize_t i = PyList_GET_SIZE(self->transcoders) - 1; i >= 0; i--) {
        if (PyList_GET_ITEM(self->transcoders, i) == t && PySequence_DelItem(self->transcoders, i) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

typedef struct {
    int fd;
    int index;
} Outgoing;

static int by_fd(const void *a, const void *b)
{
    const Outgoing *x = a, *y = b;
    if (x->fd != y->fd)
        return x->fd < y->fd ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* With slots, a transcoder runs once per 20 ms in its own slot (its phase), so that a frame waits at most a
 * slot, not a whole frame, between becoming playable and being sent: while its buffer is not playing, it is
 * asked every slot whether it would start, and the slot where it starts becomes its phase (at every talkspurt
 * or re-anchor the phase follows the sender's clock again). */
static int due(Transcoder *t, double now, int slot)
{
    if (slot < 0 || t->phase == slot)
        return 1;
    if (!jitter_playing(t->jitter) && jitter_starts(t->jitter, now)) {
        t->phase = slot;
        return 1;
    }
    return 0;
}

PyDoc_STRVAR(Relay_tick_doc,
             "tick(now, slot=-1) -> packets sent: one 20 ms step of the engaged transcoders (jitter buffer, decode\n"
             "or conceal, encode, packetize, SRTP), their packets sent with sendmmsg, one call per run of a socket.\n"
             "slot -1: every transcoder; slot k (the clock's k-th sub-tick of the frame): those whose phase is k,\n"
             "and those whose buffer starts playing now (that slot becomes their phase).");
static PyObject *Relay_tick(Relay *self, PyObject *args)
{
    double now;
    int slot = -1;
    if (!PyArg_ParseTuple(args, "d|i", &now, &slot) || check_open(self) < 0)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(self->transcoders);
    if (n == 0)
        return PyLong_FromLong(0);
    Outgoing *ready = PyMem_Malloc((size_t)n * sizeof(Outgoing));
    if (!ready)
        return PyErr_NoMemory();
    int count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Transcoder *t = (Transcoder *)PyList_GET_ITEM(self->transcoders, i);
        if (!t->engaged || t->out_fd < 0 || !has_codecs(t) || !due(t, now, slot))
            continue;
        if (transcode_tick(t, now))
            ready[count++] = (Outgoing){t->out_fd, (int)i};
        if (t->handback && PyList_Append(self->handbacks, t->owner ? t->owner : Py_None) < 0)
            PyErr_Clear();      /* no memory for the note: the path is silent until Python touches it */
    }
    if (count > 1)
        qsort(ready, (size_t)count, sizeof(Outgoing), by_fd);
    struct mmsghdr msgs[VLEN];
    struct iovec iov[VLEN];
    long long sent_total = 0;
    int i = 0;
    while (i < count) {
        int fd = ready[i].fd, m = 0;
        while (i + m < count && m < VLEN && ready[i + m].fd == fd) {
            Transcoder *t = (Transcoder *)PyList_GET_ITEM(self->transcoders, ready[i + m].index);
            iov[m].iov_base = t->pkt;
            iov[m].iov_len = (size_t)t->pkt_len;
            memset(&msgs[m].msg_hdr, 0, sizeof(struct msghdr));
            msgs[m].msg_hdr.msg_name = &t->out_addr;
            msgs[m].msg_hdr.msg_namelen = t->out_addrlen;
            msgs[m].msg_hdr.msg_iov = &iov[m];
            msgs[m].msg_hdr.msg_iovlen = 1;
            m++;
        }
        int k = 0;
        while (k < m) {
            int sent = sendmmsg(fd, &msgs[k], (unsigned int)(m - k), MSG_DONTWAIT);
            if (sent < 0 && errno == EINTR)
                continue;
            if (sent <= 0) {
                Transcoder *t = (Transcoder *)PyList_GET_ITEM(self->transcoders, ready[i + k].index);
                t->send_errors++;
                self->send_errors++;
                k++;
            } else {
                k += sent;
                sent_total += sent;
            }
        }
        i += m;
    }
    PyMem_Free(ready);
    self->transcoded += sent_total;
    return PyLong_FromLongLong(sent_total);
}

PyDoc_STRVAR(Relay_transcoding_doc, "transcoding() -> how many transcoders are engaged (tick() has work).");
static PyObject *Relay_transcoding(Relay *self, PyObject *Py_UNUSED(ignored))
{
    Py_ssize_t engaged = 0;
    for (Py_ssize_t i = 0; self->transcoders && i < PyList_GET_SIZE(self->transcoders); i++)
        engaged += ((Transcoder *)PyList_GET_ITEM(self->transcoders, i))->engaged != 0;
    return PyLong_FromSsize_t(engaged);
}

PyDoc_STRVAR(Relay_take_handbacks_doc,
             "take_handbacks() -> [owner, ...]: the owners of the transcoders whose tick handed their path back\n"
             "to Python (a DTMF key in the audio) since the last call.");
static PyObject *Relay_take_handbacks(Relay *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->handbacks || PyList_GET_SIZE(self->handbacks) == 0)
        return PyList_New(0);
    PyObject *out = self->handbacks;
    self->handbacks = PyList_New(0);
    if (!self->handbacks) {
        self->handbacks = out;
        return NULL;
    }
    return out;
}

PyDoc_STRVAR(Relay_stats_doc, "stats() -> dict of the relay's counters.");
static PyObject *Relay_stats(Relay *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *engaged = Relay_transcoding(self, NULL);
    if (!engaged)
        return NULL;
    return Py_BuildValue("{sLsLsLsLsLsLsLsLsLsnsN}", "forwarded", self->forwarded, "delivered", self->delivered,
                         "transcoded", self->transcoded, "slow", self->slow, "dropped",
                         self->dropped, "truncated", self->truncated, "recv_errors", self->recv_errors,
                         "send_errors", self->send_errors, "protect_errors", self->protect_errors,
                         "rules", PyDict_Size(self->rules), "transcoders", engaged);
}

PyDoc_STRVAR(Relay_close_doc, "close(): close the epoll descriptor and forget every rule (sockets stay open).");
static PyObject *Relay_close(Relay *self, PyObject *Py_UNUSED(ignored))
{
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    PyDict_Clear(self->rules);
    Py_RETURN_NONE;
}

static PyMethodDef Relay_methods[] = {
    {"fileno", (PyCFunction)Relay_fileno, METH_NOARGS, Relay_fileno_doc},
    {"add_socket", (PyCFunction)Relay_add_socket, METH_VARARGS, Relay_add_socket_doc},
    {"remove_socket", (PyCFunction)Relay_remove_socket, METH_VARARGS, Relay_remove_socket_doc},
    {"set_rule", (PyCFunction)Relay_set_rule, METH_VARARGS, Relay_set_rule_doc},
    {"del_rule", (PyCFunction)Relay_del_rule, METH_VARARGS, Relay_del_rule_doc},
    {"drain", (PyCFunction)Relay_drain, METH_VARARGS, Relay_drain_doc},
    {"send", (PyCFunction)Relay_send, METH_O, Relay_send_doc},
    {"add_transcoder", (PyCFunction)Relay_add_transcoder, METH_O, Relay_add_transcoder_doc},
    {"remove_transcoder", (PyCFunction)Relay_remove_transcoder, METH_O, Relay_remove_transcoder_doc},
    {"tick", (PyCFunction)Relay_tick, METH_VARARGS, Relay_tick_doc},
    {"take_handbacks", (PyCFunction)Relay_take_handbacks, METH_NOARGS, Relay_take_handbacks_doc},
    {"transcoding", (PyCFunction)Relay_transcoding, METH_NOARGS, Relay_transcoding_doc},
    {"stats", (PyCFunction)Relay_stats, METH_NOARGS, Relay_stats_doc},
    {"close", (PyCFunction)Relay_close, METH_NOARGS, Relay_close_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "media._relay.Relay",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A worker's UDP sockets in one epoll set, with the forwarding rules of its passthrough calls.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
};

static PyMethodDef relay_functions[] = {
    {"set_opus", set_opus, METH_VARARGS, set_opus_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "media._relay",
    "C data plane: epoll + recvmmsg/sendmmsg forwarding with header rewrite and SRTP, and the transcoding tick.",
    -1, relay_functions,
};

PyMODINIT_FUNC PyInit__relay(void)
{
    if (PyType_Ready(&RuleType) < 0 || PyType_Ready(&TranscoderType) < 0 || PyType_Ready(&RelayType) < 0)
        return NULL;
    g711_build_tables();
    PyObject *m = PyModule_Create(&relay_module);
    if (!m)
        return NULL;
    if (jitter_add_types(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RuleType);
    Py_INCREF(&TranscoderType);
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Rule", (PyObject *)&RuleType) < 0 ||
        PyModule_AddObject(m, "Transcoder", (PyObject *)&TranscoderType) < 0 ||
        PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
