/* optim.c - AdamW, clipping and the learning-rate schedule (see optim.h). */
#include "train/optim.h"
#include "base/base.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const SCHED_NAMES[] = {"cosine", "linear", "constant"};

int nm_sched_parse(const char *name) {
    for (int i = 0; i < 3; i++)
        if (strcmp(name, SCHED_NAMES[i]) == 0) return i;
    return -1;
}

const char *nm_sched_name(nm_sched_kind k) { return (unsigned)k < 3 ? SCHED_NAMES[k] : "?"; }

double nm_sched_lr(const nm_sched *s, int64_t step) {
    if (step < s->warmup) return s->lr * (double)(step + 1) / (double)s->warmup;
    if (s->kind == NM_SCHED_CONSTANT) return s->lr;
    int64_t span = s->total - s->warmup;
    double p = span > 0 ? (double)(step - s->warmup) / (double)span : 1.0;
    if (p > 1) p = 1;
    if (p < 0) p = 0;
    if (s->kind == NM_SCHED_LINEAR) return s->min_lr + (s->lr - s->min_lr) * (1.0 - p);
    return s->min_lr + (s->lr - s->min_lr) * 0.5 * (1.0 + cos(M_PI * p));
}

nm_status nm_adamw_init(nm_adamw *o, nm_tparam *params, int64_t n_params, nm_err *err) {
    memset(o, 0, sizeof *o);
    o->params = params;
    o->n_params = n_params;
    for (int64_t i = 0; i < n_params; i++) o->n_elems += (uint64_t)params[i].n;
    o->m = nm_calloc((size_t)o->n_elems + 1, sizeof(float));
    o->v = nm_calloc((size_t)o->n_elems + 1, sizeof(float));
    if (!o->m || !o->v) {
        nm_adamw_deinit(o);
        return nm_err_set(err, NM_ERR_NOMEM, "out of memory for optimiser state (%.1f MiB)",
                          (double)o->n_elems * 8.0 / 1048576.0);
    }
    return NM_OK;
}

void nm_adamw_deinit(nm_adamw *o) {
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

void nm_adamw_step(nm_adamw *o, const nm_adamw_cfg *c, double lr) {
    o->t++;
    double bc1 = 1.0 - pow(c->beta1, (double)o->t), bc2 = 1.0 - pow(c->beta2, (double)o->t);
    float b1 = (float)c->beta1, b2 = (float)c->beta2;
    float step = (float)(lr / bc1), rbc2 = (float)(1.0 / sqrt(bc2)), eps = (float)c->eps;
    uint64_t off = 0;
    for (int64_t i = 0; i < o->n_params; i++) {
        nm_tparam *p = &o->params[i];
        float decay = p->ndim >= 2 ? (float)(1.0 - lr * c->weight_decay) : 1.0f;
        float *m = o->m + off, *v = o->v + off;
        for (int64_t j = 0; j < p->n; j++) {
            float g = p->grad[j];
            m[j] = b1 * m[j] + (1.0f - b1) * g;
            v[j] = b2 * v[j] + (1.0f - b2) * g * g;
            p->data[j] = p->data[j] * decay - step * m[j] / (sqrtf(v[j]) * rbc2 + eps);
        }
        off += (uint64_t)p->n;
    }
}

double nm_grad_norm(const nm_tparam *p, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < p[i].n; j++) s += (double)p[i].grad[j] * p[i].grad[j];
    return sqrt(s);
}

void nm_grad_scale(nm_tparam *p, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < p[i].n; j++) p[i].grad[j] *= s;
}

void nm_grad_zero(nm_tparam *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) memset(p[i].grad, 0, (size_t)p[i].n * sizeof(float));
}

double nm_grad_clip(nm_tparam *p, int64_t n, double max_norm) {
    double norm = nm_grad_norm(p, n);
    /* PyTorch's clip_grad_norm_: factor max / (norm + 1e-6), only if < 1 */
    if (max_norm > 0 && norm > max_norm) nm_grad_scale(p, n, (float)(max_norm / (norm + 1e-6)));
    return norm;
}
