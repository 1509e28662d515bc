/* media._relay.Jitter: the adaptive jitter buffer of media.jitter.JitterBuffer, in C.
 *
 * The same algorithm, step for step and in the same floating-point order (built with -ffp-contract=off), so
 * that for the same calls it returns the same frames, gaps and statistics as the Python reference -- the
 * tests feed both the same random streams and compare. The C transcoding tick (media._relay.Transcoder)
 * reads it directly; Python code uses it through media.jitter.FastJitterBuffer with the reference's API.
 */
#ifndef CALLPATH_JITTER_H
#define CALLPATH_JITTER_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    int64_t ext;                /* extended sequence number */
    int64_t ets;                /* extended timestamp */
    uint8_t *data;              /* malloc'ed payload */
    int len;
} JEntry;

typedef struct {
    PyObject_HEAD
    /* settings */
    int clock_rate;
    int frame_samples;
    double frame, min_delay, max_delay;
    int max_conceal;
    double shrink_interval, peak_decay, window;
    int capacity;
    int64_t max_ts_jump;
    double max_skew;
    int max_marks;
    /* statistics */
    long long received, played, late, lost, duplicate, reordered, concealed, dropped, resyncs;
    double delay, target, peak;
    /* the stream */
    JEntry *buf;                /* capacity + 1 entries, unsorted */
    int nbuf;
    int64_t *marks;             /* non-audio sequence numbers not played yet, unsorted */
    int nmarks;
    int state;
    int has_ssrc;
    unsigned int ssrc;
    int has_highest;
    int64_t highest, ref_ts;
    int has_next;
    int64_t next_seq, play_ts;
    double start_at, mt_cur, mt_prev, mt_until;
    int empty_run;
    double last_shrink;
    uint64_t seen, lostm;
} Jitter;

enum { J_NONE = 0, J_FRAME = 1, J_MISSING = 2 };

/* What get() hands out: a Frame owns its payload (free it with free()); a Missing's next payload stays the
 * buffer's (valid until the next put/get/reset). */
typedef struct {
    int kind;
    unsigned int seq;
    unsigned int ts;
    uint8_t *payload;
    int len;
    const uint8_t *next;
    int next_len;
} JItem;

extern PyTypeObject JitterType;

/* 0, or -1 with MemoryError set */
int jitter_put(Jitter *j, unsigned int seq, unsigned int ts, const uint8_t *payload, int len, double arrival,
               int has_ssrc, unsigned int ssrc);
void jitter_mark_non_audio(Jitter *j, unsigned int seq, unsigned int ts, int has_ssrc, unsigned int ssrc);
void jitter_get(Jitter *j, double now, JItem *out);
/* whether get(now) would start playing a buffered stream (playing: 0; the tick's phase follows this) */
int jitter_starts(const Jitter *j, double now);
/* whether the buffer is playing a stream (a frame each get) */
int jitter_playing(const Jitter *j);
int jitter_add_types(PyObject *module);

#endif
