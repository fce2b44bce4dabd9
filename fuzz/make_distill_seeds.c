/* make_distill_seeds.c DIR - small valid teacher caches (2- and 4-byte ids,
 * k below and equal to the vocabulary, masked and unmasked rows) as the
 * seed corpus of fuzz_distill_cache. */
#include "distill/distill.h"
#include "base/base.h"

#include <math.h>
#include <stdio.h>

static int write_seed(const char *dir, const char *name, uint32_t V, uint32_t k, bool masked) {
    /* three examples of 5, 7 and 3 tokens */
    static const int64_t lens[3] = {5, 7, 3};
    int32_t tok[15];
    uint8_t trn[15];
    int64_t off[3], len[3];
    int64_t o = 0;
    for (int e = 0; e < 3; e++) {
        off[e] = o;
        len[e] = lens[e];
        for (int64_t j = 0; j < lens[e]; j++, o++) {
            tok[o] = (int32_t)((o * 7 + 1) % V);
            trn[o] = masked ? j >= 2 : 1;
        }
    }
    nm_dataset d = {0};
    d.tok = tok;
    d.trn = trn;
    d.ex_off = off;
    d.ex_len = len;
    d.n_ex = 3;
    d.n_tok = 15;
    uint64_t n_pos = 0;
    for (int e = 0; e < 3; e++)
        for (int64_t j = 1; j < len[e]; j++) n_pos += trn[off[e] + j];
    nm_dcache_hdr h = {k, V, 8, masked ? NM_DCACHE_MASK_PROMPT : 0u, n_pos, 0x1234, nm_dataset_hash(&d), 0x5678,
                       "{\"teacher\":\"seed\"}"};
    nm_buf b;
    nm_buf_init(&b);
    nm_dcache_encode_head(&h, &d, &b);
    size_t ib = nm_dcache_id_bytes(V), eb = (size_t)k * ib + ((size_t)k + 1) * 2;
    int32_t ids[64];
    float lq[65];
    uint8_t ent[64 * 4 + 65 * 2];
    for (uint64_t p = 0; p < n_pos; p++) {
        for (uint32_t i = 0; i < k; i++) {
            ids[i] = (int32_t)((p + i * 3) % V);
            lq[i] = -1.0f - (float)i;
        }
        lq[k] = k < V ? -3.0f : -INFINITY;
        nm_dcache_encode_entry(k, ib, ids, lq, ent);
        nm_buf_push(&b, ent, eb);
    }
    uint64_t sum = nm_dcache_checksum(b.data, b.len);
    nm_buf_push_u64(&b, sum);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    nm_err err;
    int rc = b.oom || nm_write_file_atomic(path, b.data, b.len, &err) ? 1 : 0;
    nm_buf_deinit(&b);
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_distill_seeds DIR\n");
        return 2;
    }
    int rc = 0;
    rc |= write_seed(argv[1], "small.kd", 64, 4, true);
    rc |= write_seed(argv[1], "full.kd", 8, 8, false);
    rc |= write_seed(argv[1], "wide.kd", 70000, 3, true);
    return rc;
}
