"""cffi API-mode builder for the split virtqueue's C fast path (vmm.virtio._ring).

One job, both ways: a virtio-net queue and a tap fd. ring_drain_to_fd writes a
transmit queue's frames to the fd; ring_fill_from_fd reads frames from the fd
into a receive queue, through virtio-net's receive filter. Both make the same
checks as SplitQueue._walk and do what virtio_net.py's Python path does, run
without the GIL under the machine lock, and return to Python with the queue's
new indices; a ring that breaks the rules comes back as an error code that
vmm/virtio/queue.py turns into VirtqueueError.
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
    uint8_t *dirty;                     /* migration: a byte per guest page, or NULL */
    uint64_t dirty_pages;
};
struct rx_filter {                      /* virtio-net's RxFilter, as query-rx-filter has it */
    int promiscuous, allmulti, alluni, nomulti, nouni, nobcast;
    int unicast_overflow, multicast_overflow, vlan_filter;
    uint8_t mac[6];
    int n_unicast, n_multicast;
    uint8_t unicast[384], multicast[384];     /* 64 addresses each */
    uint8_t vlans[512];                       /* a bit per VLAN id */
};
"""

CDEF = STRUCTS + r"""
int ring_drain_to_fd(struct split_ring *q, int fd, uint32_t min_len, int max_chains,
                     uint64_t *sent);
int ring_fill_from_fd(struct split_ring *q, int fd, uint32_t hdr_len, int merge,
                      const struct rx_filter *f, int budget, int *stop, uint64_t *dropped,
                      uint64_t *delivered);
#define FILL_EMPTY ...
#define FILL_NO_BUFFERS ...
#define FILL_BUDGET ...
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

/* Migration's log of what the device wrote, a byte per page (GuestMemory.dirty_log). */
static void mark_dirty(const struct split_ring *q, uint64_t gpa, uint64_t len)
{
    for (uint64_t page = gpa >> 12; page <= (gpa + len - 1) >> 12; page++)
        if (page < q->dirty_pages)
            q->dirty[page] = 1;
}

/* The same, for a host address inside guest RAM. */
static void mark_host_dirty(const struct split_ring *q, const void *host, uint64_t len)
{
    const uint8_t *p = host;
    for (int i = 0; i < q->nram; i++) {
        const struct ram_region *r = &q->ram[i];
        if (p >= r->host && p < r->host + r->size) {
            mark_dirty(q, r->gpa + (uint64_t)(p - r->host), len);
            return;
        }
    }
}

/* Where a received frame goes as walk() meets the writable buffers: it copies
   what is left of src into each (Chain.write), and keeps the first non-empty ones
   so that num_buffers can be written at byte 10 afterwards (_write_at). */
struct sink {
    const uint8_t *src;
    uint32_t left, written;
    int nkept;
    struct iovec kept[12];
};

/* The readable buffers of the chain at `head` into iov (if any), the writable ones
   filled from sink (if any); *n = -1 if there are more readable buffers than
   writev takes (the frame is then dropped, as os.writev would). */
static int walk(const struct split_ring *q, uint16_t head, struct iovec *iov, int *n,
                uint64_t *total, struct sink *sink)
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
            if (sink) {
                uint32_t chunk = d.len < sink->left ? d.len : sink->left;
                memcpy(buf, sink->src, chunk);
                if (q->dirty && chunk)          /* after the data, for migration's log */
                    mark_dirty(q, d.addr, chunk);
                sink->src += chunk;
                sink->left -= chunk;
                sink->written += chunk;
                if (d.len && sink->nkept < 12) {
                    sink->kept[sink->nkept].iov_base = buf;
                    sink->kept[sink->nkept++].iov_len = d.len;
                }
            }
        } else if (writable) {
            return RING_ERR_ORDER;
        } else if (!iov) {
            /* a receive chain's readable buffers: not ours to touch */
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

/* SplitQueue.pending(): chains the driver has made available; RING_ERR_AHEAD if
   its index ran more than a queue ahead. */
static int pending(const struct split_ring *q)
{
    uint16_t n = (uint16_t)(load16(q->avail + 2) - q->last_avail);
    return n > q->size ? RING_ERR_AHEAD : n;
}

/* SplitQueue.pop()'s first half: the next available head (pending() > 0). */
static uint16_t pop_head(struct split_ring *q)
{
    uint16_t head = load16(q->avail + 4 + 2 * (q->last_avail % q->size));
    q->last_avail = (uint16_t)(q->last_avail + 1);
    if (q->event_idx)
        store16(q->used + 4 + 8 * q->size, (uint16_t)q->last_avail);
    return head;
}

static void push(struct split_ring *q, uint32_t head, uint32_t written)
{
    uint32_t elem[2] = {head, written};
    memcpy(q->used + 4 + 8 * (q->used_idx % q->size), elem, sizeof elem);
    q->used_idx = (uint16_t)(q->used_idx + 1);
    store16(q->used + 2, (uint16_t)q->used_idx);
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
        int avail = pending(q);
        if (avail <= 0) {
            if (avail < 0)
                return avail;
            break;
        }
        uint16_t head = pop_head(q);
        int n, err;
        uint64_t total;
        err = walk(q, head, iov, &n, &total, NULL);
        if (err)
            return err;
        if (fd >= 0 && n > 0 && total > min_len && writev(fd, iov, n) >= 0)
            (*sent)++;
        push(q, head, 0);
        done++;
    }
    return done;
}

/* virtio_net.py's _accepts: QEMU's receive filter, on a frame without its header. */
static int in_table(const uint8_t *table, int n, const uint8_t *mac)
{
    for (int i = 0; i < n; i++)
        if (!memcmp(table + 6 * i, mac, 6))
            return 1;
    return 0;
}

static int accepts(const struct rx_filter *f, const uint8_t *frame, uint32_t len)
{
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (f->promiscuous || len < 14)
        return 1;
    if (f->vlan_filter && frame[12] == 0x81 && frame[13] == 0x00) {
        /* as int.from_bytes(frame[14:16]) & 0xfff on what is there */
        uint32_t vid = len >= 16 ? ((frame[14] << 8) | frame[15]) & 0xfff
                     : len == 15 ? frame[14] : 0;
        if (!(f->vlans[vid >> 3] >> (vid & 7) & 1))
            return 0;
    }
    if (!memcmp(frame, broadcast, 6))
        return !f->nobcast;
    if (frame[0] & 1)
        return !f->nomulti && (f->allmulti || f->multicast_overflow ||
                               in_table(f->multicast, f->n_multicast, frame));
    if (f->nouni)
        return 0;
    return f->alluni || f->unicast_overflow || !memcmp(frame, f->mac, 6) ||
           in_table(f->unicast, f->n_unicast, frame);
}

#define FILL_EMPTY 0                /* the fd had nothing more */
#define FILL_NO_BUFFERS 1           /* the queue has no buffers: stop reading the fd */
#define FILL_BUDGET 2               /* read `budget` frames: come back later */
#define MAX_FRAME (65536 + 256)     /* tap.py's MAX_FRAME */

/* The tap reader's loop and VirtioNet.receive/_fill_rx: while the queue has
   buffers, reads a frame (with its hdr_len-byte vnet header) from fd, filters it,
   and writes it over one chain or (merge) as many as it takes, num_buffers at
   byte 10; a frame that does not fit goes back empty and is dropped. Returns 0, or
   a RING_ERR_ code; *stop says why it stopped, *delivered and *dropped count
   frames (up to an error too). */
int ring_fill_from_fd(struct split_ring *q, int fd, uint32_t hdr_len, int merge,
                      const struct rx_filter *f, int budget, int *stop, uint64_t *dropped,
                      uint64_t *delivered)
{
    uint8_t buf[MAX_FRAME];
    uint16_t heads[MAX_QUEUE_SIZE > 1024 ? 1024 : MAX_QUEUE_SIZE];
    uint32_t written[1024];
    struct iovec first_kept[12];
    int nfirst = 0;
    for (int frames = 0;; frames++) {
        if (frames >= budget) {
            *stop = FILL_BUDGET;
            return 0;
        }
        int avail = pending(q);
        if (avail < 0)
            return avail;
        if (avail == 0) {
            *stop = FILL_NO_BUFFERS;
            return 0;
        }
        ssize_t got = read(fd, buf, sizeof buf);
        if (got <= 0) {
            *stop = FILL_EMPTY;
            return 0;
        }
        uint32_t len = (uint32_t)got;
        uint32_t start = hdr_len < len ? hdr_len : len;
        uint32_t seen = len - start < 16 ? len - start : 16;
        if (!accepts(f, buf + start, seen))
            continue;
        struct sink sink = {buf, len, 0, 0, {{0, 0}}};
        int nchains = 0;
        while (sink.left > 0 && nchains < 1024) {
            avail = pending(q);
            if (avail < 0)
                return avail;
            if (avail == 0)
                break;
            uint16_t head = pop_head(q);
            uint32_t before = sink.written;
            int n, err;
            uint64_t total;
            sink.nkept = 0;
            /* the whole chain checked first, as _walk does, then filled */
            err = walk(q, head, NULL, &n, &total, NULL);
            if (!err)
                err = walk(q, head, NULL, &n, &total, &sink);
            if (err)
                return err;
            if (nchains == 0) {
                nfirst = sink.nkept;
                memcpy(first_kept, sink.kept, sizeof first_kept);
            }
            heads[nchains] = head;
            written[nchains++] = sink.written - before;
            if (!merge)
                break;
        }
        if (sink.left > 0) {                   /* no room: back empty, frame dropped */
            for (int i = 0; i < nchains; i++)
                push(q, heads[i], 0);
            (*dropped)++;
            continue;
        }
        if (merge) {                           /* num_buffers, at byte 10 of chain 0 */
            uint8_t count[2] = {(uint8_t)nchains, (uint8_t)(nchains >> 8)};
            uint32_t offset = 10, k = 0;
            for (int i = 0; i < nfirst && k < 2; i++) {
                uint8_t *p = first_kept[i].iov_base;
                uint32_t l = (uint32_t)first_kept[i].iov_len;
                if (offset >= l) {
                    offset -= l;
                    continue;
                }
                while (offset < l && k < 2)
                    p[offset++] = count[k++];
                offset = 0;
            }
            for (int i = 0; q->dirty && i < nfirst; i++)     /* again, after num_buffers */
                mark_host_dirty(q, first_kept[i].iov_base, first_kept[i].iov_len);
        }
        for (int i = 0; i < nchains; i++)
            push(q, heads[i], written[i]);
        (*delivered)++;
    }
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmm.virtio._ring", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
