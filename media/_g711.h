/* G.711 µ-law / A-law: the tables media._g711 and the C transcoding tick (media._relay) look samples up in.
 *
 * Computed once at import (g711_build_tables) with the same algorithm as the pure-Python reference in
 * media/g711.py: the classic Sun g711.c, with negative A-law magnitudes clamped at 0, and µ-law <-> A-law
 * transcoding per the G.711 conversion tables (Tables 3 and 4). Static: each module including it has its
 * own copy (130 KB).
 */
#ifndef CALLPATH_G711_H
#define CALLPATH_G711_H

#include <stdint.h>

static uint8_t ulaw_enc[65536]; /* indexed by the sample's bit pattern as uint16 */
static uint8_t alaw_enc[65536];
static uint8_t ulaw_dec[256][2]; /* little-endian int16 per code, ready to copy */
static uint8_t alaw_dec[256][2];
static uint8_t u2a[256];
static uint8_t a2u[256];

static const int seg_end[8] = {0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF};

static int segment(int magnitude)
{
    int seg;
    for (seg = 0; seg < 8; seg++)
        if (magnitude <= seg_end[seg])
            return seg;
    return 8;
}

static uint8_t linear_to_ulaw(int sample)
{
    int magnitude, mask, seg;
    if (sample < 0) {
        magnitude = 0x84 - sample;
        mask = 0x7F;
    } else {
        magnitude = sample + 0x84;
        mask = 0xFF;
    }
    seg = segment(magnitude);
    if (seg >= 8)
        return (uint8_t)(0x7F ^ mask);
    return (uint8_t)(((seg << 4) | ((magnitude >> (seg + 3)) & 0x0F)) ^ mask);
}

static int ulaw_to_linear(uint8_t code)
{
    int t;
    code = (uint8_t)~code;
    t = ((code & 0x0F) << 3) + 0x84;
    t <<= (code & 0x70) >> 4;
    return (code & 0x80) ? (0x84 - t) : (t - 0x84);
}

static uint8_t linear_to_alaw(int sample)
{
    int magnitude, mask, seg, shift;
    if (sample >= 0) {
        magnitude = sample;
        mask = 0xD5;
    } else {
        magnitude = -sample - 8;
        if (magnitude < 0) /* Sun's code lets -7..-1 go negative here; see media/g711.py */
            magnitude = 0;
        mask = 0x55;
    }
    seg = segment(magnitude);
    if (seg >= 8)
        return (uint8_t)(0x7F ^ mask);
    shift = seg < 2 ? 4 : seg + 3;
    return (uint8_t)(((seg << 4) | ((magnitude >> shift) & 0x0F)) ^ mask);
}

static int alaw_to_linear(uint8_t code)
{
    int t, seg;
    code ^= 0x55;
    t = (code & 0x0F) << 4;
    seg = (code & 0x70) >> 4;
    if (seg == 0)
        t += 8;
    else if (seg == 1)
        t += 0x108;
    else
        t = (t + 0x108) << (seg - 1);
    return (code & 0x80) ? t : -t;
}

static int u2a_magnitude(int u) /* G.711 Table 3: µ-law magnitude 0..127 -> A-law magnitude, 1-based */
{
    if (u < 16) return u / 2 + 1;
    if (u < 32) return u - 7;
    if (u < 36) return 25 + 2 * (u - 32);
    if (u < 48) return u - 3;
    if (u < 50) return 46 + 2 * (u - 48);
    if (u < 64) return u - 1;
    if (u < 80) return u;
    return u + 1;
}

static int a2u_magnitude(int a) /* G.711 Table 4: A-law magnitude 0..127 -> µ-law magnitude */
{
    if (a < 8) return 2 * a + 1;
    if (a < 24) return a + 8;
    if (a < 32) return 32 + (a - 24) / 2;
    if (a < 44) return a + 4;
    if (a < 48) return 48 + (a - 44) / 2;
    if (a < 62) return a + 2;
    if (a < 64) return 64;
    if (a < 79) return a + 1;
    return a;
}

static void g711_build_tables(void)
{
    int i, v;
    for (i = 0; i < 65536; i++) {
        int sample = i < 32768 ? i : i - 65536;
        ulaw_enc[i] = linear_to_ulaw(sample);
        alaw_enc[i] = linear_to_alaw(sample);
    }
    for (i = 0; i < 256; i++) {
        v = ulaw_to_linear((uint8_t)i) & 0xFFFF;
        ulaw_dec[i][0] = (uint8_t)(v & 0xFF);
        ulaw_dec[i][1] = (uint8_t)(v >> 8);
        v = alaw_to_linear((uint8_t)i) & 0xFFFF;
        alaw_dec[i][0] = (uint8_t)(v & 0xFF);
        alaw_dec[i][1] = (uint8_t)(v >> 8);
        u2a[i] = (uint8_t)((i & 0x80) ? (0xD5 ^ (u2a_magnitude(0xFF ^ i) - 1))
                                      : (0x55 ^ (u2a_magnitude(0x7F ^ i) - 1)));
        a2u[i] = (uint8_t)((i & 0x80) ? (0xFF ^ a2u_magnitude(i ^ 0xD5))
                                      : (0x7F ^ a2u_magnitude(i ^ 0x55)));
    }
}

#endif
