/* adapter.c - training adapters to and from the adapter files (see
 * adapter.h): a training adapter (nm_tm_lora: A [r x in], B [out x r] with
 * gradients) is copied into an nm_lora and written by nm_peft_write, or read
 * by nm_lora_open and copied back. */
#include "train/adapter.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t nm_adapter_hf_row(int64_t r, int64_t hd) {
    int64_t h = r / hd, i = r % hd, j = i / 2, s = i % 2;
    return h * hd + s * (hd / 2) + j;
}

void nm_tm_layout(const nm_tmodel *m, nm_lora_layout *lay) {
    memset(lay, 0, sizeof *lay);
    snprintf(lay->arch, sizeof lay->arch, "%s", m->hp.arch);
    lay->n_layer = m->hp.n_layer;
    for (int k = 0; k < NM_TM_COUNT; k++) {
        lay->in[k] = m->layers[0].w[k].cols;
        lay->out[k] = m->layers[0].w[k].rows;
    }
    lay->head_dim = m->hp.head_dim;
    lay->permute_qk = !m->hp.rope_neox;
}

nm_status nm_adapter_save_ex(const nm_tm_lora *l, const nm_tmodel *m, const char *dir, const char *base_name,
                             const nm_lora_prov *under, size_t n_under, nm_err *err) {
    nm_lora *x = nm_lora_create(l->n_layer);
    if (!x) return nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    nm_status st = NM_OK;
    x->alpha = l->alpha;
    x->rslora = l->rslora;
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_TM_COUNT && !st; k++)
            if (l->targets & (1u << k)) {
                const nm_tm_lora_mod *md = &l->mods[ly * NM_TM_COUNT + k];
                st = nm_lora_shape(x, ly, (nm_proj)k, l->rank, md->in, md->out, err);
            }
    if (!st) st = nm_lora_alloc(x, err);
    for (int64_t ly = 0; ly < l->n_layer && !st; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            if (!(l->targets & (1u << k))) continue;
            const nm_tm_lora_mod *md = &l->mods[ly * NM_TM_COUNT + k];
            nm_lora_mod *xm = nm_lora_mod_at(x, ly, (nm_proj)k);
            memcpy(xm->A, md->A, (size_t)(l->rank * md->in) * sizeof(float));
            for (int64_t o = 0; o < md->out; o++)
                for (int64_t j = 0; j < l->rank; j++) xm->Bt[j * md->out + o] = md->B[o * l->rank + j];
        }
    if (!st) {
        nm_lora_layout lay;
        nm_tm_layout(m, &lay);
        x->head_dim = lay.head_dim;
        x->permute_qk = lay.permute_qk;
        snprintf(x->arch, sizeof x->arch, "%s", lay.arch);
        nm_base_fingerprint(m->gguf, x->base_fp);
        x->has_base_fp = true;
        char *sig = nm_base_signature(m->gguf);
        st = nm_lora_set_strings(x, dir, base_name, sig, err);
        free(sig);
    }
    if (!st && n_under) {
        x->under = nm_calloc(n_under, sizeof *x->under);
        if (!x->under)
            st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
        else {
            memcpy(x->under, under, n_under * sizeof *under);
            x->n_under = n_under;
        }
    }
    if (!st) {
        nm_lora_finish(x);
        st = nm_peft_write(x, dir, NM_TYPE_F32, err);
    }
    nm_lora_free(x);
    return st;
}

nm_status nm_adapter_save(const nm_tm_lora *l, const nm_tmodel *m, const char *dir, const char *base_name,
                          nm_err *err) {
    return nm_adapter_save_ex(l, m, dir, base_name, NULL, 0, err);
}

nm_status nm_adapter_load(const nm_tmodel *m, const char *dir, nm_tm_lora **out, nm_err *err) {
    *out = NULL;
    nm_lora *x;
    nm_status st = nm_lora_open(dir, NULL, &x, err);
    if (st) return st;
    nm_lora_layout lay;
    nm_tm_layout(m, &lay);
    nm_tm_lora *l = NULL;
    if ((st = nm_lora_fit(x, &lay, err))) goto done;
    unsigned targets = 0;
    for (int64_t ly = 0; ly < x->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            const nm_lora_mod *xm = nm_lora_mod_at(x, ly, (nm_proj)k);
            if (!xm->r) continue;
            targets |= 1u << k;
            if (xm->r != x->rank) {
                st = nm_err_set(err, NM_ERR_UNSUPPORTED,
                                "%s: modules of different ranks (%lld and %lld) cannot be trained further", dir,
                                (long long)xm->r, (long long)x->rank);
                goto done;
            }
        }
    /* A GGUF LoRA without alpha has scale 1: alpha = r gives the same. */
    float alpha = x->alpha == 0.0f ? (float)x->rank : x->alpha;
    if ((st = nm_tm_lora_new(m, x->rank, alpha, x->rslora, 0.0f, targets, &l, err))) goto done;
    for (int64_t ly = 0; ly < x->n_layer; ly++)
        for (int k = 0; k < NM_TM_COUNT; k++) {
            const nm_lora_mod *xm = nm_lora_mod_at(x, ly, (nm_proj)k);
            if (!xm->r) continue;
            nm_tm_lora_mod *md = nm_tm_lora_mod_at(l, ly, (nm_tmod)k);
            memcpy(md->A, xm->A, (size_t)(xm->r * xm->in) * sizeof(float));
            for (int64_t o = 0; o < xm->out; o++)
                for (int64_t j = 0; j < xm->r; j++) md->B[o * xm->r + j] = xm->Bt[j * xm->out + o];
        }
done:
    nm_lora_free(x);
    if (st) {
        nm_tm_lora_free(l);
        return st;
    }
    *out = l;
    return NM_OK;
}
