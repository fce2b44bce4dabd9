/* fuzz_distill_cache.c - libFuzzer target for the teacher cache reader
 * (src/distill/cache.c): a cache is a file that travels between machines
 * and runs, so the reader must refuse anything malformed.  Whatever it
 * accepts must be fully usable: every entry decodable with ids inside the
 * vocabulary and distinct, every trained position mapped to an entry, and
 * the loss of every entry finite. */
#include "distill/distill.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void one(uint8_t *buf, size_t size) {
    nm_dcache *c;
    nm_err err;
    if (nm_dcache_open_buffer(buf, size, "fuzz.kd", &c, &err) != NM_OK) return;
    /* the loss below needs O(V) memory and time: small vocabularies only */
    bool loss = c->n_vocab <= 4096;
    int32_t *ids = malloc(c->k * sizeof *ids);
    float *lq = malloc((c->k + 1) * sizeof *lq);
    float *z = calloc(loss ? c->n_vocab : 1, sizeof *z);
    uint32_t *stamp = calloc(loss ? c->n_vocab : 1, sizeof *stamp);
    uint64_t seen = 0;
    for (int64_t i = 0; i < c->data.n_tok; i++) {
        if (c->data.tok[i] < 0 || (uint32_t)c->data.tok[i] >= c->n_vocab) abort();
        int64_t e = c->entry_of[i];
        if (e < 0) continue;
        if ((uint64_t)e != seen++) abort(); /* entries follow the positions in order */
        if (!loss) continue;
        nm_dcache_entry(c, (uint64_t)e, ids, lq);
        nm_kd_cfg cfg = {2.0f, 0.5f, (e & 1) != 0};
        memset(z, 0, c->n_vocab * sizeof *z);
        double l = nm_kd_position(z, c->n_vocab, ids, lq, (int)c->k, c->data.tok[i], &cfg, 1.0f, true, stamp,
                                  (uint32_t)e + 1u);
        if (!isfinite(l)) abort();
    }
    if (seen != c->n_pos) abort();
    free(ids);
    free(lq);
    free(z);
    free(stamp);
    nm_dcache_free(c);
}

/* Each input is read twice: as it is (the checksum refuses nearly every
 * mutation), and with its checksum made right, so that the field checks
 * behind it meet the mutations too. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    one(buf, size);
    if (size >= 8) {
        memcpy(buf, data, size);
        uint64_t h = nm_dcache_checksum(buf, size - 8);
        for (int i = 0; i < 8; i++) buf[size - 8 + (size_t)i] = (uint8_t)(h >> (8 * i));
        one(buf, size);
    }
    free(buf);
    return 0;
}
