/* A minimal lstm-stream client in C: libzmq + msgpack-c, written from docs/protocol.md alone.
 *
 *   cc -O2 -o lstm_client lstm_client.c $(pkg-config --cflags --libs libzmq msgpack)   (see README.md)
 *   ./lstm_client tcp://127.0.0.1:5555 pump
 *
 * It sends ping, info, step (x as a binary float32 array map), step_many and get_state on the streams
 * PREFIX-1 and PREFIX-2, and prints every float32 it gets back as the hex of its bits, so that a test can
 * compare it with the Python client bit for bit. Copy it: the helpers below (pack a request, wait for the
 * reply with our id, look a key up in a map) are all a client needs. Exit status 0 when every reply was ok.
 */
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define TIMEOUT_MS 10000

static void *sock;
static zmq_msg_t reply_msg;  /* the last reply's payload */
static uint64_t next_id = 1;

/* ---- packing ------------------------------------------------------------------------------ */
static void pack_str(msgpack_packer *pk, const char *s) {
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* The head every request shares: {"v": 1, "id": <id>, "op": <op>, ...n_fields more}. */
static void pack_head(msgpack_packer *pk, uint64_t id, const char *op, size_t n_fields) {
    msgpack_pack_map(pk, 3 + n_fields);
    pack_str(pk, "v");  msgpack_pack_int(pk, 1);
    pack_str(pk, "id"); msgpack_pack_uint64(pk, id);
    pack_str(pk, "op"); pack_str(pk, op);
}

/* An array map {"dtype": "float32", "shape": [rows, cols] or [cols], "data": bin}: little-endian float32. */
static void pack_f32(msgpack_packer *pk, const float *x, size_t rows, size_t cols, int rank) {
    size_t n = rows * cols;
    unsigned char *data = malloc(n ? 4 * n : 1);
    for (size_t k = 0; k < n; k++) {           /* byte by byte: little-endian whatever the host */
        uint32_t bits;
        memcpy(&bits, &x[k], 4);
        for (int b = 0; b < 4; b++) data[4 * k + b] = (unsigned char)(bits >> (8 * b));
    }
    msgpack_pack_map(pk, 3);
    pack_str(pk, "dtype"); pack_str(pk, "float32");
    pack_str(pk, "shape");
    msgpack_pack_array(pk, rank);
    if (rank == 2) msgpack_pack_uint64(pk, rows);
    msgpack_pack_uint64(pk, cols);
    pack_str(pk, "data");  msgpack_pack_bin(pk, 4 * n); msgpack_pack_bin_body(pk, data, 4 * n);
    free(data);
}

/* ---- reading replies -------------------------------------------------------------------------- */
static const msgpack_object *get(const msgpack_object *map, const char *key) {
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static int64_t as_int(const msgpack_object *o) {
    if (o == NULL) return -1;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) return (int64_t)o->via.u64;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) return o->via.i64;
    return -1;
}

/* Send one request (a DEALER sends one frame: the payload), then receive until the reply carrying our id
 * arrives (replies may come out of order: match them by id) or the wait times out. 0 when the reply is ok. */
static int call(msgpack_sbuffer *req, uint64_t id, msgpack_unpacked *reply) {
    if (zmq_send(sock, req->data, req->size, 0) < 0) return fprintf(stderr, "send failed\n"), -1;
    for (;;) {
        zmq_pollitem_t item = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, TIMEOUT_MS) <= 0) return fprintf(stderr, "no reply to %" PRIu64 "\n", id), -1;
        /* msgpack-c's str and bin objects point into the payload: keep it (reply_msg) until the next call */
        zmq_msg_close(&reply_msg);
        zmq_msg_init(&reply_msg);
        if (zmq_msg_recv(&reply_msg, sock, 0) < 0) return -1;
        size_t off = 0;
        msgpack_unpacked_destroy(reply);
        msgpack_unpacked_init(reply);
        int rc = msgpack_unpack_next(reply, zmq_msg_data(&reply_msg), zmq_msg_size(&reply_msg), &off);
        if (rc != MSGPACK_UNPACK_SUCCESS || as_int(get(&reply->data, "id")) != (int64_t)id)
            continue;  /* not ours (an old reply after a timeout): ignore it */
        const msgpack_object *ok = get(&reply->data, "ok");
        if (ok && ok->type == MSGPACK_OBJECT_BOOLEAN && ok->via.boolean) return 0;
        const msgpack_object *err = get(&reply->data, "error"), *code = get(err, "code"), *text = get(err, "message");
        fprintf(stderr, "error %.*s: %.*s\n", code ? (int)code->via.str.size : 1, code ? code->via.str.ptr : "?",
                text ? (int)text->via.str.size : 0, text ? text->via.str.ptr : "");
        return -1;
    }
}

/* Print an array map's float32 elements as the hex of their bits: "<label> 3f800000 bf000000 ...". */
static int print_f32(const char *label, const msgpack_object *a) {
    const msgpack_object *dtype = get(a, "dtype"), *data = get(a, "data");
    if (!dtype || dtype->type != MSGPACK_OBJECT_STR || dtype->via.str.size != 7 ||
        memcmp(dtype->via.str.ptr, "float32", 7) != 0 || !data || data->type != MSGPACK_OBJECT_BIN)
        return fprintf(stderr, "%s: not a float32 array map\n", label), -1;
    const unsigned char *p = (const unsigned char *)data->via.bin.ptr;
    printf("%s", label);
    for (uint32_t k = 0; k + 4 <= data->via.bin.size; k += 4)
        printf(" %08" PRIx32, (uint32_t)p[k] | (uint32_t)p[k + 1] << 8 | (uint32_t)p[k + 2] << 16 |
                                  (uint32_t)p[k + 3] << 24);
    printf("\n");
    return 0;
}

/* ---- the example ------------------------------------------------------------------------------ */
int main(int argc, char **argv) {
    if (argc != 3) return fprintf(stderr, "usage: %s ENDPOINT STREAM_PREFIX\n", argv[0]), 2;
    char s1[200], s2[200];
    snprintf(s1, sizeof s1, "%s-1", argv[2]);
    snprintf(s2, sizeof s2, "%s-2", argv[2]);
    zmq_msg_init(&reply_msg);
    void *ctx = zmq_ctx_new();
    sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, argv[1]) != 0) return fprintf(stderr, "cannot connect to %s\n", argv[1]), 1;

    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_unpacked reply;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_unpacked_init(&reply);
    int failed = 0;
    uint64_t id;

    /* ping: the daemon's clock, a float64 */
    pack_head(&pk, id = next_id++, "ping", 0);
    if (call(&buf, id, &reply) == 0) {
        const msgpack_object *t = get(&reply.data, "time");
        printf("ping %.3f\n", t && t->type == MSGPACK_OBJECT_FLOAT64 ? t->via.f64 : -1.0);
    } else failed = 1;

    /* info: the input size I that every x must have */
    msgpack_sbuffer_clear(&buf);
    pack_head(&pk, id = next_id++, "info", 0);
    if (call(&buf, id, &reply) != 0) return 1;
    int64_t I = as_int(get(get(&reply.data, "model"), "input_size"));
    if (I <= 0 || I > 4096) return fprintf(stderr, "bad input_size\n"), 1;
    printf("info input_size %" PRId64 "\n", I);

    float *x = malloc(sizeof(float) * 2 * I);
    for (int64_t j = 0; j < 2 * I; j++) x[j] = 0.25f * (float)j - 0.5f;

    /* step: one sample (I,) of stream 1, then two samples (2, I) */
    msgpack_sbuffer_clear(&buf);
    pack_head(&pk, id = next_id++, "step", 2);
    pack_str(&pk, "stream"); pack_str(&pk, s1);
    pack_str(&pk, "x"); pack_f32(&pk, x, 1, I, 1);
    failed |= call(&buf, id, &reply) || print_f32("step", get(&reply.data, "y"));

    msgpack_sbuffer_clear(&buf);
    pack_head(&pk, id = next_id++, "step", 2);
    pack_str(&pk, "stream"); pack_str(&pk, s1);
    pack_str(&pk, "x"); pack_f32(&pk, x, 2, I, 2);
    failed |= call(&buf, id, &reply) || print_f32("step2", get(&reply.data, "y"));

    /* step_many: streams 1 and 2, one row each: x (2, I) -> y (2, O) */
    msgpack_sbuffer_clear(&buf);
    pack_head(&pk, id = next_id++, "step_many", 2);
    pack_str(&pk, "streams"); msgpack_pack_array(&pk, 2); pack_str(&pk, s1); pack_str(&pk, s2);
    pack_str(&pk, "x"); pack_f32(&pk, x, 2, I, 2);
    failed |= call(&buf, id, &reply) || print_f32("step_many", get(&reply.data, "y"));

    /* get_state: h (L, P), c (L, H) and the step count of stream 1 */
    msgpack_sbuffer_clear(&buf);
    pack_head(&pk, id = next_id++, "get_state", 1);
    pack_str(&pk, "stream"); pack_str(&pk, s1);
    if (call(&buf, id, &reply) == 0) {
        failed |= print_f32("h", get(&reply.data, "h")) || print_f32("c", get(&reply.data, "c"));
        printf("steps %" PRId64 "\n", as_int(get(&reply.data, "steps")));
    } else failed = 1;

    free(x);
    msgpack_unpacked_destroy(&reply);
    zmq_msg_close(&reply_msg);
    msgpack_sbuffer_destroy(&buf);
    zmq_close(sock);
    zmq_ctx_destroy(ctx);
    return failed;
}
