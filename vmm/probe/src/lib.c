/* The few C library pieces the probe needs, and a small printf to COM1. */
#include <stdarg.h>
#include "probe.h"

void *memset(void *d, int c, size_t n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}
size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }
int strcmp(const char *a, const char *b) { while (*a && *a == *b) { a++; b++; } return (u8)*a - (u8)*b; }
int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b || !*a)
            return (u8)*a - (u8)*b;
    }
    return 0;
}

const char *skip_spaces(const char *s) { while (*s == ' ') s++; return s; }

/* Decimal or 0x-hex; advances *s; returns 0 when there is no number. */
int parse_u64(const char **s, u64 *out)
{
    const char *p = skip_spaces(*s);
    u64 v = 0;
    int base = 10, digits = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) { base = 16; p += 2; }
    for (;; p++, digits++) {
        int d;
        if (*p >= '0' && *p <= '9') d = *p - '0';
        else if (base == 16 && *p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
        else if (base == 16 && *p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
        else break;
        v = v * base + d;
    }
    if (!digits)
        return 0;
    *s = p;
    *out = v;
    return 1;
}

static char out_buf[512];
static size_t out_len;

static void flush(void) { serial_write(out_buf, out_len); out_len = 0; }
void putchar(int c) { if (out_len == sizeof(out_buf)) flush(); out_buf[out_len++] = (char)c; if (c == '\n') flush(); }

static void put_num(u64 v, unsigned base, int width, char pad, int neg)
{
    char tmp[24];
    int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    if (neg) tmp[n++] = '-';
    while (n < width) { putchar(pad); width--; }
    while (n) putchar(tmp[--n]);
}

/* %d %u %x %s %c %% with an optional 0/width and l length. */
int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') { putchar(*fmt); continue; }
        fmt++;
        char pad = ' ';
        int width = 0, is_long = 0;
        if (*fmt == '0') { pad = '0'; fmt++; }
        while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') { is_long = 1; fmt++; }
        switch (*fmt) {
        case 'd': {
            i64 v = is_long ? va_arg(ap, i64) : va_arg(ap, int);
            put_num(v < 0 ? -(u64)v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u': put_num(is_long ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, width, pad, 0); break;
        case 'x': put_num(is_long ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, width, pad, 0); break;
        case 's': { const char *s = va_arg(ap, const char *); while (*s) putchar(*s++); break; }
        case 'c': putchar(va_arg(ap, int)); break;
        default: putchar(*fmt); break;
        }
    }
    va_end(ap);
    flush();
    return 0;
}
