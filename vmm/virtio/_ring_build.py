"""cffi API-mode builder for the split virtqueue's C fast path (vmm.virtio._ring).

One job: drain a transmit queue straight into a file descriptor (virtio-net on
a tap), with the same checks SplitQueue._walk makes in Python. It runs without
the GIL, under the machine lock like the Python path, and returns to Python with
the queue's new indices; a ring that breaks the rules comes back as an error
code that vmm/virtio/queue.py turns into VirtqueueError.
"""

from cffi import FFI

# Declared once, for cffi and for the compiler alike.
STRUCTS = r"""
struct ram_region { uint64_t gpa; uint64_t size; uint8_t *host; };
struct split_ring {
    uint8_t *desc, *avail, *used;
    uint32_t size, last_avail, used_idx;
    int event_idx;
    const struct ram_region *ram;
    int nram;
};
"""

CDEF = STRUCTS + r"""
int ring_drain_to_fd(struct split_ring *q, int fd, uint32_t min_len, int max_chains,
                     uint64_t *sent);
#define RING_ERR_HEAD ...
#define RING_ERR_LOOP ...
#define RING_ERR_NESTED ...
#define RING_ERR_INDIRECT_NEXT ...
#define RING_ERR_INDIRECT_SIZE ...
#define RING_ERR_OUTSIDE ...
#define RING_ERR_ORDER ...
#define RING_ERR_NEXT ...
#define RING_ERR_AHEAD ...
"""

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4
#define MAX_QUEUE_SIZE 32768
#define MAX_IOV 1024                     /* the kernel's UIO_MAXIOV */

#define RING_ERR_HEAD (-1)
#define RING_ERR_LOOP (-2)
#define RING_ERR_NESTED (-3)
#define RING_ERR_INDIRECT_NEXT (-4)
#define RING_ERR_INDIRECT_SIZE (-5)
#define RING_ERR_OUTSIDE (-6)
#define RING_ERR_ORDER (-7)
#define RING_ERR_NEXT (-8)
#define RING_ERR_AHEAD (-9)
""" + STRUCTS + r"""
struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

/* The guest shares these fields: one load or store each, ordered. */
static uint16_t load16(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

static void store16(uint8_t *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE);
}

/* Host address of [gpa, gpa+len) if all of it is in one RAM region, else NULL. */
static uint8_t *guest(const struct split_ring *q, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < q->nram; i++) {
        const struct ram_region *r = &q->ram[i];
        if (gpa >= r->gpa && len <= r->size && gpa - r->gpa <= r->size - len)
            return r->host + (gpa - r->gpa);
    }
    return NULL;
}

/* The readable buffers of the chain at `head` into iov; *n = -1 if there are more
   than writev takes (the frame is then dropped, as os.writev would). */
static int walk(const struct split_ring *q, uint16_t head, struct iovec *iov, int *n,
                uint64_t *total)
{
    const uint8_t *table = q->desc;
    uint32_t table_size = q->size, index = head, seen = 0;
    int indirect = 0, writable = 0;
    *n = 0;
    *total = 0;
    if (head >= q->size)
        return RING_ERR_HEAD;
    for (;;) {
        struct desc d;
        if (++seen > table_size)
            return RING_ERR_LOOP;
        memcpy(&d, table + 16 * (uint64_t)index, sizeof d);   /* read once */
        if (d.flags & DESC_F_INDIRECT) {
            if (indirect)
                return RING_ERR_NESTED;
            if (d.flags & DESC_F_NEXT)
                return RING_ERR_INDIRECT_NEXT;
            if (d.len == 0 || d.len % 16 || d.len / 16 > MAX_QUEUE_SIZE)
                return RING_ERR_INDIRECT_SIZE;
            table = guest(q, d.addr, d.len);
            if (!table)
                return RING_ERR_OUTSIDE;
            table_size = d.len / 16;
            index = 0;
            seen = 0;
            indirect = 1;
            continue;
        }
        uint8_t *buf = guest(q, d.addr, d.len);
        if (!buf)
            return RING_ERR_OUTSIDE;
        if (d.flags & DESC_F_WRITE) {
            writable = 1;
        } else if (writable) {
            return RING_ERR_ORDER;
        } else if (*n >= 0 && *n < MAX_IOV) {
            iov[*n].iov_base = buf;
            iov[*n].iov_len = d.len;
            (*n)++;
            *total += d.len;
        } else {
            *n = -1;
        }
        if (!(d.flags & DESC_F_NEXT))
            return 0;
        if (d.next >= table_size)
            return RING_ERR_NEXT;
        index = d.next;
    }
}

/* Takes up to max_chains chains: each whose readable part is longer than min_len
   is written to fd with writev (fd < 0: consumed, not sent), then returned used
   with length 0. Returns the number taken, or a RING_ERR_ code. */
int ring_drain_to_fd(struct split_ring *q, int fd, uint32_t min_len, int max_chains,
                     uint64_t *sent)
{
    struct iovec iov[MAX_IOV];             /* 16 KiB of stack: no state between calls */
    int done = 0;
    while (done < max_chains) {
        uint16_t pending = (uint16_t)(load16(q->avail + 2) - q->last_avail);
        if (pending == 0)
            break;
        if (pending > q->size)
            return RING_ERR_AHEAD;
        uint16_t head = load16(q->avail + 4 + 2 * (q->last_avail % q->size));
        q->last_avail = (uint16_t)(q->last_avail + 1);
        if (q->event_idx)
            store16(q->used + 4 + 8 * q->size, (uint16_t)q->last_avail);
        int n, err;
        uint64_t total;
        err = walk(q, head, iov, &n, &total);
        if (err)
            return err;
        if (fd >= 0 && n > 0 && total > min_len && writev(fd, iov, n) >= 0)
            (*sent)++;
        uint32_t elem[2] = {head, 0};
        memcpy(q->used + 4 + 8 * (q->used_idx % q->size), elem, sizeof elem);
        q->used_idx = (uint16_t)(q->used_idx + 1);
        store16(q->used + 2, (uint16_t)q->used_idx);
        done++;
    }
    return done;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmm.virtio._ring", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
