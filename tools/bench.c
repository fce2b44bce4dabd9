/* bench.c - `nomoat bench MODE ...`: speed measurements.  Each mode is one
 * static function listed in MODES; a mode parses its own options (argv[0]
 * is the mode flag) and prints its result.
 *
 *   nomoat bench --tokenize -m MODEL.gguf -f FILE [--reps N] [--json]
 *       tokenizer throughput: median MB/s (10^6 bytes of text per second)
 *       over N runs of nm_tokenize on the whole file, by wall time and by
 *       the thread's CPU time (tokenizing is single-threaded).
 *
 *   nomoat bench [--infer] -m MODEL.gguf [-p 512] [-n 128] [--threads N] [--reps N]
 *                [--no-roofline] [--bw-mb N] [--json]
 *       inference speed, the default mode: prompt processing (one batch of
 *       -p tokens) and generation (-n tokens one by one), median tokens/s,
 *       each as a fraction of its roofline measured in the same run.
 *
 *   nomoat bench --curate [--docs N] [--dups SHARE] [--threads N] [--json]
 *       exact + near de-duplication of N generated short documents (a
 *       share of them planted copies): time, recall by similarity, memory.
 */
#include "cli.h"
#include "base/base.h"
#include "base/threads.h"
#include "curate/curate.h"
#include "tensor/kernels.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CPU time of the calling thread: unlike wall time, it does not grow when
 * other processes compete for the cores. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median of v[0..n) (n >= 1), sorted in scratch (which may be v
 * itself when its order no longer matters). */
static double median(const double *v, int64_t n, double *scratch) {
    if (scratch != v) memcpy(scratch, v, (size_t)n * sizeof *v);
    qsort(scratch, (size_t)n, sizeof *scratch, cmp_double);
    return n % 2 ? scratch[n / 2] : 0.5 * (scratch[n / 2 - 1] + scratch[n / 2]);
}

/* ---- --tokenize ---- */

static int bench_tokenize(int argc, char **argv) {
    const char *model = NULL, *file = NULL;
    int64_t reps = 5;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "-f") == 0 || strcmp(a, "--file") == 0) {
            if (!(file = cli_value(argc, argv, &i))) return 2;
        } else if (strcmp(a, "--reps") == 0) {
            const char *s = cli_value(argc, argv, &i);
            if (!s) return 2;
            if (!cli_parse_i64(s, 1, 1000000, &reps)) return cli_usage("bench", "--reps needs a count from 1 up");
        } else if (strcmp(a, "--json") == 0) {
            json = true;
        } else {
            return cli_usage("bench", "unknown argument '%s' for --tokenize", a);
        }
    }
    if (!model || !file) return cli_usage("bench", "--tokenize needs -m MODEL.gguf and -f FILE");

    nm_err err = {0};
    char *text;
    size_t len;
    if (nm_read_file(file, &text, &len, &err)) return cli_fail(&err);
    nm_log log = cli_logger(false);
    nm_gguf *g = NULL;
    nm_vocab *v = NULL;
    double t0 = now_s();
    if (nm_gguf_open(model, &g, &err) || nm_vocab_from_gguf(g, &v, &log, &err)) {
        nm_gguf_free(g);
        free(text);
        return cli_fail(&err);
    }
    double load_s = now_s() - t0;
    nm_gguf_free(g);

    double *mbs = nm_calloc((size_t)reps, sizeof(double));
    double *cpu = nm_calloc((size_t)reps, sizeof(double));
    size_t n_tokens = 0;
    int rc = 0;
    for (int64_t r = 0; r < reps && mbs && cpu; r++) {
        int32_t *ids;
        double t = now_s(), c = cpu_s();
        if (nm_tokenize(v, text, len, false, false, &ids, &n_tokens, &err)) {
            rc = cli_fail(&err);
            break;
        }
        t = now_s() - t;
        c = cpu_s() - c;
        free(ids);
        mbs[r] = (double)len / 1e6 / (t > 1e-9 ? t : 1e-9);
        cpu[r] = (double)len / 1e6 / (c > 1e-9 ? c : 1e-9);
    }
    if (!mbs || !cpu) rc = cli_fail(&(nm_err){NM_ERR_NOMEM, "out of memory"});
    if (rc == 0) {
        const double med = median(mbs, reps, mbs), med_cpu = median(cpu, reps, cpu);
        if (json) {
            nm_buf b;
            nm_buf_init(&b);
            nm_buf_printf(&b, "{\"mode\": \"tokenize\", \"model\": ");
            nm_buf_json_str(&b, model, strlen(model));
            nm_buf_printf(&b, ", \"file\": ");
            nm_buf_json_str(&b, file, strlen(file));
            nm_buf_printf(&b,
                          ", \"bytes\": %zu, \"tokens\": %zu, \"reps\": %lld, \"median_mb_s\": %.3f, \"min_mb_s\": "
                          "%.3f, \"max_mb_s\": %.3f, \"median_cpu_mb_s\": %.3f, \"load_s\": %.4f}\n",
                          len, n_tokens, (long long)reps, med, mbs[0], mbs[reps - 1], med_cpu, load_s);
            if (!b.oom) fwrite(b.data, 1, b.len, stdout);
            nm_buf_deinit(&b);
        } else {
            printf("tokenize: %s on %s: %zu bytes -> %zu tokens\n", model, file, len, n_tokens);
            printf("  median %.2f MB/s over %lld reps (min %.2f, max %.2f); by CPU time %.2f MB/s; vocabulary "
                   "load %.1f ms\n",
                   med, (long long)reps, mbs[0], mbs[reps - 1], med_cpu, load_s * 1e3);
        }
    }
    free(mbs);
    free(cpu);
    free(text);
    nm_vocab_free(v);
    return rc;
}

/* ---- --model (the default): prompt processing and generation speed ---- */

/* What one token costs the weight matrices: the bytes generation reads
 * (every matrix once; the embedding table only when it is also the output)
 * and the multiply-adds of the products, with whether most of those are on
 * quantized weights (8-bit dot products) or float ones (F32 FMA).  out_macs
 * is the output matrix's share: a prompt computes logits for its last
 * token only, so prompt processing is credited with it once a prompt, not
 * once a token (pp_macs). */
typedef struct token_cost {
    double bytes, macs, out_macs;
    bool int8;
} token_cost;

static double pp_macs(const token_cost *c, int64_t n_prompt) {
    return n_prompt > 0 ? c->macs - c->out_macs + c->out_macs / (double)n_prompt : 0;
}

static token_cost model_cost(const nm_gguf *g) {
    token_cost c = {0, 0, 0, false};
    double quant_macs = 0;
    const bool tied = nm_gguf_find_tensor(g, "output.weight") == NULL;
    for (int64_t i = 0; i < nm_gguf_n_tensors(g); i++) {
        const nm_gguf_tensor *t = nm_gguf_tensor_at(g, i);
        const size_t n = strlen(t->name);
        if (t->n_dims < 2 || n < 7 || strcmp(t->name + n - 7, ".weight") != 0) continue;
        if (!tied && !strcmp(t->name, "token_embd.weight")) continue;
        const double macs = (double)t->ne[0] * (double)t->ne[1];
        c.bytes += (double)t->nbytes;
        c.macs += macs;
        if (!strcmp(t->name, tied ? "token_embd.weight" : "output.weight")) c.out_macs = macs;
        if (t->type != NM_TYPE_F32 && t->type != NM_TYPE_F16 && t->type != NM_TYPE_BF16) quant_macs += macs;
    }
    c.int8 = quant_macs > c.macs / 2;
    return c;
}

/* --profile: the phases of the timed runs (nm_context_profile), summed
 * over the repetitions, and the wall time of those runs. */
typedef struct run_profile {
    nm_profile p;
    double wall;
} run_profile;

static void profile_add(run_profile *sum, const nm_context *c, double wall) {
    nm_profile p;
    nm_context_profile(c, &p);
    sum->p.passes += p.passes;
    sum->p.rows += p.rows;
    for (int i = 0; i < NM_PHASE_COUNT; i++) {
        sum->p.seconds[i] += p.seconds[i];
        sum->p.in_regions[i] += p.in_regions[i];
        sum->p.waiting[i] += p.waiting[i];
        sum->p.regions[i] += p.regions[i];
    }
    sum->wall += wall;
}

/* Time outside every phase: the decode calls themselves (checks, setting
 * up passes) and the timer's own cost. */
static double profile_outside(const run_profile *r) {
    double in = 0;
    for (int i = 0; i < NM_PHASE_COUNT; i++) in += r->p.seconds[i];
    return r->wall - in;
}

/* Milliseconds per `unit` (a prompt, a token), each phase's total split
 * into the part inside parallel regions (and of that, the calling thread
 * waiting for the others) and the part the calling thread ran alone. */
static void profile_print(const char *what, const run_profile *r, double units, const char *unit) {
    if (units <= 0) return;
    const double ms = 1e3 / units;
    printf("  profile of %s, ms a %s (%lld passes, %lld rows): 'alone' = the calling thread working while the\n"
           "  others wait for the next region; 'waiting' = inside a region, the caller done with its share\n",
           what, unit, (long long)r->p.passes, (long long)r->p.rows);
    printf("    %-10s %9s %8s %11s %9s %9s %8s\n", "phase", "total", "share", "in regions", "waiting", "alone",
           "regions");
    for (int i = 0; i < NM_PHASE_COUNT; i++) {
        const double t = r->p.seconds[i], in = r->p.in_regions[i];
        printf("    %-10s %9.3f %7.1f%% %11.3f %9.3f %9.3f %8.1f\n", nm_phase_name((nm_phase)i), t * ms,
               r->wall > 0 ? 100 * t / r->wall : 0, in * ms, r->p.waiting[i] * ms, (t - in) * ms,
               (double)r->p.regions[i] / units);
    }
    const double out = profile_outside(r);
    printf("    %-10s %9.3f %7.1f%%\n", "(outside)", out * ms, r->wall > 0 ? 100 * out / r->wall : 0);
    printf("    %-10s %9.3f\n", "(all)", r->wall * ms);
}

static void profile_json(nm_buf *b, const char *key, const run_profile *r) {
    nm_buf_printf(b, ", \"%s\": {\"passes\": %lld, \"rows\": %lld, \"wall_s\": %.9f, \"outside_s\": %.9f, \"phases\": {",
                  key, (long long)r->p.passes, (long long)r->p.rows, r->wall, profile_outside(r));
    for (int i = 0; i < NM_PHASE_COUNT; i++)
        nm_buf_printf(b, "%s\"%s\": {\"s\": %.9f, \"in_regions_s\": %.9f, \"waiting_s\": %.9f, \"regions\": %lld}",
                      i ? ", " : "", nm_phase_name((nm_phase)i), r->p.seconds[i], r->p.in_regions[i], r->p.waiting[i],
                      (long long)r->p.regions[i]);
    nm_buf_printf(b, "}}");
}

/* The read bandwidth beside generation run r: the better of the probes
 * before and after it (bw[2r], bw[2r + 1]). */
static double beside_bw(const double *bw, int64_t r) {
    return bw[2 * r] > bw[2 * r + 1] ? bw[2 * r] : bw[2 * r + 1];
}

/* Like llama-bench: random token ids (speed does not depend on them), a
 * warm-up pass that also pages the mapped weights in, then per repetition a
 * prompt of n_prompt tokens decoded as one batch from an empty cache, and
 * n_gen tokens decoded one at a time from an empty cache.
 *
 * Rooflines (unless --no-roofline): the same run measures the machine's
 * memory read bandwidth and its peak multiply-add rates with the pool's
 * threads (nm_measure_machine, before and after the timed runs, best
 * kept), then reports generation as a fraction of bandwidth / bytes read
 * per token and prompt processing as a fraction of peak / multiply-adds
 * per token (weight products only; attention is extra work on top).
 * Generation is also given against the read bandwidth measured right
 * before and after each of its runs (the better of the two, median over
 * the runs): on a VM the host's other tenants move memory bandwidth by
 * half from one second to the next (this 2-core EPYC: 33-35 GB/s or
 * 50-57 GB/s), so the best probe of the whole run may describe a moment
 * the generation runs never saw.  Both figures are printed. */
static int bench_model(int argc, char **argv) {
    const char *model = NULL;
    int64_t n_prompt = 512, n_gen = 128, n_threads = 0, reps = 5, bw_mb = 512;
    bool json = false, roofline = true, profile = false;
    run_profile prof_pp = {0}, prof_tg = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "-p") || !strcmp(a, "-n") || !strcmp(a, "-t") || !strcmp(a, "--threads") ||
                   !strcmp(a, "--reps")) {
            int64_t *dst = a[1] == 'p' ? &n_prompt : a[1] == 'n' ? &n_gen : a[2] == 'r' ? &reps : &n_threads;
            int64_t lo = dst == &reps ? 1 : 0;
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, lo, 1 << 20, dst)) return cli_usage("bench", "%s needs a count, got '%s'", a, v);
        } else if (!strcmp(a, "--bw-mb")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 16, 1 << 16, &bw_mb)) return cli_usage("bench", "--bw-mb needs MiB from 16, got '%s'", v);
        } else if (!strcmp(a, "--no-roofline")) {
            roofline = false;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--profile")) {
            profile = true;
        } else {
            return cli_usage("bench", "unknown argument '%s'", a);
        }
    }
    if (!model) return cli_usage("bench", "missing -m MODEL.gguf");
    if (n_prompt == 0 && n_gen == 0) return cli_usage("bench", "nothing to measure (-p 0 -n 0)");

    nm_err err = {0};
    nm_log log = cli_logger(false);
    nm_model *m = NULL;
    nm_context *c = NULL;
    nm_pool *pool = NULL; /* the context's threads, which also run the probes */
    nm_read_probe *probe = NULL;
    int32_t *ids = NULL;
    double *pp = NULL, *tg = NULL, *tg_bw = NULL, *tg_rt = NULL, *sorted = NULL;
    int rc = 1;
    nm_isa isa;
    if (nm_isa_select(&isa, &err)) goto out;
    if (nm_model_load(model, &log, &m, &err)) goto out;
    nm_model_info info;
    nm_model_get_info(m, &info);
    const token_cost cost = model_cost(nm_model_gguf(m));
    nm_context_params cp = nm_context_default_params();
    const int64_t longest = n_prompt > n_gen ? n_prompt : n_gen;
    cp.n_ctx = (int32_t)(longest > 16 ? longest : 16);
    cp.n_batch = (int32_t)(n_prompt > 0 ? n_prompt : 1);
    /* One pool for the model and the probes: the round trip is then
     * measured between the threads that run the model, and no second set
     * of threads spins down beside it at the start of a run. */
    if (nm_pool_new(n_threads ? (int)n_threads : nm_cpu_count(), &pool, &err)) goto out;
    cp.pool = pool;
    if (nm_context_new(m, &cp, &c, &err)) goto out;
    ids = nm_calloc((size_t)longest + 1, sizeof *ids);
    pp = nm_calloc((size_t)reps, sizeof *pp);
    tg = nm_calloc((size_t)reps, sizeof *tg);
    tg_bw = nm_calloc(2 * (size_t)reps, sizeof *tg_bw); /* before and after each run */
    sorted = nm_calloc((size_t)reps, sizeof *sorted);
    tg_rt = nm_calloc((size_t)reps, sizeof *tg_rt);
    if (!ids || !pp || !tg || !tg_bw || !tg_rt || !sorted) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    nm_rng rng;
    nm_rng_seed(&rng, 1234);
    for (int64_t i = 0; i <= longest; i++) ids[i] = (int32_t)(nm_rng_u64(&rng) % (uint64_t)info.n_vocab);
    /* warm-up */
    /* warm-up: at most 16 tokens, never past ids' longest + 1 */
    const int64_t warm = n_prompt > 0 && n_prompt < 16 ? n_prompt : longest + 1 < 16 ? longest + 1 : 16;
    if (nm_decode(c, ids, (int32_t)warm, &err)) goto out;
    nm_machine_peaks peaks = {0};
    double round_trip = 0; /* ns between two threads; 0 with one */
    if (roofline) {
        if (nm_read_probe_new((size_t)bw_mb << 20, &probe, &err) ||
            nm_measure_machine(pool, isa, probe, &peaks, &err))
            goto out;
        if (n_gen == 0) round_trip = nm_measure_round_trip(pool); /* else beside each run */
    }
    for (int64_t r = 0; r < reps; r++) {
        if (n_prompt > 0) {
            nm_context_truncate(c, 0, NULL);
            nm_context_set_profiling(c, profile);
            double t = now_s();
            if (nm_decode(c, ids, (int32_t)n_prompt, &err)) goto out;
            const double took = now_s() - t;
            pp[r] = (double)n_prompt / took;
            if (profile) profile_add(&prof_pp, c, took);
            nm_context_set_profiling(c, false);
        }
        if (n_gen > 0) {
            /* memory read bandwidth right before and right after this run,
             * the better of the two: generation's roofline as it was during
             * the run (on a shared host it moves by half between seconds) */
            double bw0 = 0, bw1 = 0;
            if (roofline && nm_measure_read(pool, isa, probe, 2, &bw0, &err)) goto out;
            /* and how far apart the threads are (kernels.h nm_measure_round_trip) */
            if (roofline) tg_rt[r] = nm_measure_round_trip(pool);
            nm_context_truncate(c, 0, NULL);
            nm_context_set_profiling(c, profile);
            double t = now_s();
            for (int64_t i = 0; i < n_gen; i++)
                if (nm_decode(c, ids + i, 1, &err)) goto out;
            const double took = now_s() - t;
            tg[r] = (double)n_gen / took;
            if (profile) profile_add(&prof_tg, c, took);
            nm_context_set_profiling(c, false); /* the probes' regions are not the model's */
            if (roofline && nm_measure_read(pool, isa, probe, 2, &bw1, &err)) goto out;
            tg_bw[2 * r] = bw0;
            tg_bw[2 * r + 1] = bw1;
        }
    }
    if (roofline) { /* again, the best of both: a conservative fraction */
        nm_machine_peaks again;
        if (nm_measure_machine(pool, isa, probe, &again, &err)) goto out;
        if (again.read_bytes_s > peaks.read_bytes_s) peaks.read_bytes_s = again.read_bytes_s;
        for (int64_t i = 0; i < 2 * reps; i++) /* and the generation runs' own probes */
            if (tg_bw[i] > peaks.read_bytes_s) peaks.read_bytes_s = tg_bw[i];
        if (again.fma_s > peaks.fma_s) peaks.fma_s = again.fma_s;
        if (again.int8_s > peaks.int8_s) peaks.int8_s = again.int8_s;
    }
    /* tg, tg_bw and tg_rt stay in run order for --json's tg_runs */
    const double pp_med = median(pp, reps, pp), tg_med = median(tg, reps, sorted);
    const double tg_min = sorted[0], tg_max = sorted[reps - 1];
    for (int64_t r = 0; r < reps; r++) { /* each run against the bandwidth beside it */
        const double bw = beside_bw(tg_bw, r);
        sorted[r] = bw > 0 ? tg[r] * cost.bytes / bw : 0;
    }
    const double beside_med = median(sorted, reps, sorted);
    if (n_gen > 0 && roofline) round_trip = median(tg_rt, reps, sorted);
    const double peak = cost.int8 ? peaks.int8_s : peaks.fma_s;
    const double pp_frac = roofline && peak > 0 ? pp_med * pp_macs(&cost, n_prompt) / peak : 0;
    const double tg_frac = roofline && peaks.read_bytes_s > 0 ? tg_med * cost.bytes / peaks.read_bytes_s : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    if (json) {
        nm_buf b;
        nm_buf_init(&b);
        nm_buf_printf(&b, "{\"mode\": \"model\", \"model\": ");
        nm_buf_json_str(&b, model, strlen(model));
        nm_buf_printf(&b,
                      ", \"params\": %llu, \"weight_bytes\": %llu, \"threads\": %d, \"isa\": \"%s\", \"reps\": %lld, "
                      "\"n_prompt\": %lld, \"n_gen\": %lld, \"pp_tokens_s\": %.3f, \"pp_min\": %.3f, \"pp_max\": %.3f, "
                      "\"tg_tokens_s\": %.3f, \"tg_min\": %.3f, \"tg_max\": %.3f, \"peak_rss_bytes\": %lld, "
                      "\"bytes_per_token\": %.0f, \"macs_per_token\": %.0f, \"pp_macs_per_token\": %.0f, "
                      "\"pp_peak\": \"%s\", \"in_memory\": %s, \"packed_matrices\": %d",
                      (unsigned long long)info.n_params, (unsigned long long)info.weight_bytes,
                      nm_context_n_threads(c), nm_isa_name(isa), (long long)reps, (long long)n_prompt, (long long)n_gen,
                      pp_med, pp[0], pp[reps - 1], tg_med, tg_min, tg_max, (long long)ru.ru_maxrss * 1024,
                      cost.bytes, cost.macs, pp_macs(&cost, n_prompt), cost.int8 ? "int8" : "f32_fma",
                      info.in_memory ? "true" : "false", (int)info.n_packed);
        if (roofline)
            nm_buf_printf(&b,
                          ", \"read_bytes_s\": %.0f, \"fma_s\": %.0f, \"int8_s\": %.0f, \"pp_roofline_fraction\": %.4f, "
                          "\"tg_roofline_fraction\": %.4f, \"tg_roofline_fraction_beside\": %.4f, \"round_trip_ns\": %.1f",
                          peaks.read_bytes_s, peaks.fma_s, peaks.int8_s, pp_frac, tg_frac, n_gen > 0 ? beside_med : 0,
                          round_trip);
        if (roofline && n_gen > 0) {
            /* each generation run in order: tokens/s, the bandwidth beside it
             * (the better of before and after; both, so that runs during
             * which the host changed its memory state can be told apart) */
            nm_buf_printf(&b, ", \"tg_runs\": [");
            for (int64_t r = 0; r < reps; r++) {
                nm_buf_printf(&b,
                              "%s{\"tokens_s\": %.3f, \"read_bytes_s\": %.0f, \"read_before\": %.0f, "
                              "\"read_after\": %.0f, \"round_trip_ns\": %.1f}",
                              r ? ", " : "", tg[r], beside_bw(tg_bw, r), tg_bw[2 * r], tg_bw[2 * r + 1], tg_rt[r]);
            }
            nm_buf_printf(&b, "]");
        }
        if (profile && n_prompt > 0) profile_json(&b, "profile_pp", &prof_pp);
        if (profile && n_gen > 0) profile_json(&b, "profile_tg", &prof_tg);
        nm_buf_printf(&b, "}\n");
        if (!b.oom) fwrite(b.data, 1, b.len, stdout);
        nm_buf_deinit(&b);
    } else {
        char packed[48] = "";
        if (info.n_packed) snprintf(packed, sizeof packed, ", %d matrices packed", (int)info.n_packed);
        printf("model: %s (%s, %.1fM parameters, %.1f MiB of weights, %s%s), %d threads, %s kernels, %lld reps\n",
               model, info.arch, info.n_params / 1e6, info.weight_bytes / 1048576.0,
               info.in_memory ? "read into memory" : "mapped", packed, nm_context_n_threads(c), nm_isa_name(isa),
               (long long)reps);
        if (n_prompt > 0) {
            printf("  pp%-5lld %10.2f tokens/s (min %.2f, max %.2f)", (long long)n_prompt, pp_med, pp[0], pp[reps - 1]);
            if (roofline)
                printf("   %5.1f%% of the %s peak (%.2f G multiply-adds a token)", 100 * pp_frac,
                       cost.int8 ? "int8 dot-product" : "F32 FMA", pp_macs(&cost, n_prompt) / 1e9);
            printf("\n");
        }
        if (n_gen > 0) {
            printf("  tg%-5lld %10.2f tokens/s (min %.2f, max %.2f)", (long long)n_gen, tg_med, tg_min, tg_max);
            if (roofline)
                printf("   %5.1f%% of memory bandwidth (%.1f MB read a token); %.1f%% of the bandwidth measured "
                       "beside each run (median)",
                       100 * tg_frac, cost.bytes / 1e6, 100 * beside_med);
            printf("\n");
        }
        if (roofline) {
            printf("  machine (%s, %d threads): memory read %.1f GB/s, F32 FMA %.1f G/s, int8 dot product %.1f G "
                   "multiply-adds/s",
                   nm_isa_name(isa), peaks.threads, peaks.read_bytes_s / 1e9, peaks.fma_s / 1e9, peaks.int8_s / 1e9);
            if (round_trip > 0) printf(", thread-to-thread round trip %.0f ns", round_trip);
            printf("\n");
        }
        printf("  peak RSS %.1f MiB\n", ru.ru_maxrss / 1024.0);
        if (profile && n_prompt > 0) {
            char what[32];
            snprintf(what, sizeof what, "pp%lld", (long long)n_prompt);
            profile_print(what, &prof_pp, (double)reps, "prompt");
        }
        if (profile && n_gen > 0) {
            char what[32];
            snprintf(what, sizeof what, "tg%lld", (long long)n_gen);
            profile_print(what, &prof_tg, (double)(reps * n_gen), "token");
        }
    }
    rc = 0;
out:
    if (rc) cli_fail(&err);
    free(ids);
    free(pp);
    free(tg);
    free(tg_bw);
    free(sorted);
    free(tg_rt);
    nm_read_probe_free(probe);
    nm_context_free(c);
    nm_pool_free(pool);
    nm_model_free(m);
    return rc;
}

/* ---- dispatch ---- */

typedef struct bench_mode {
    const char *flag;
    const char *summary;
    int (*run)(int argc, char **argv);
} bench_mode;

/* ---- --curate: near-duplicate removal at scale on generated documents ---- */

/* Synthetic short documents: words of a 20000-word vocabulary drawn with a
 * Zipf-like law (p ~ 1/rank, as in natural text), 10 to 50 words each.
 * After the originals, a share of the documents are planted copies of
 * earlier ones: half exact up to case and punctuation, the other half
 * near duplicates (one word replaced, or one word appended), whose true
 * Jaccard similarity (5-word shingles) is computed to report recall by
 * similarity. */
static void cb_word(nm_rng *r, const uint32_t *cdf, char *out) {
    uint32_t u = (uint32_t)(nm_rng_u64(r) >> 32), lo = 0, hi = 20000;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (cdf[mid] < u) lo = mid + 1; else hi = mid;
    }
    static const char cons[] = "bcdfghjklmnprstvwz", vow[] = "aeiou";
    uint32_t w = lo < 20000 ? lo : 19999, k = 0;
    do { /* a pronounceable spelling of the rank: one syllable per base-90 digit */
        out[k++] = cons[w % 18];
        out[k++] = vow[(w / 18) % 5];
        w /= 90;
    } while (w);
    out[k] = 0;
}

static int bench_curate(int argc, char **argv) {
    int64_t n_docs = 1000000, threads = 0;
    double dup_share = 0.1;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--docs")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 10, 100000000, &n_docs)) return cli_usage("bench", "--docs needs a count from 10, got '%s'", v);
        } else if (!strcmp(a, "--dups")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_f64(v, &dup_share) || !(dup_share >= 0 && dup_share < 1))
                return cli_usage("bench", "--dups needs a share in [0, 1), got '%s'", v);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!cli_parse_i64(v, 0, 1024, &threads)) return cli_usage("bench", "--threads needs a count, got '%s'", v);
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            return cli_usage("bench", "unknown argument '%s' for --curate", a);
        }
    }
    nm_err err = {0};
    nm_log log = cli_logger(false);
    log.min_level = NM_LOG_WARN; /* the result is printed below */
    /* the Zipf table */
    uint32_t *cdf = malloc(20000 * sizeof *cdf);
    int64_t *src = malloc((size_t)n_docs * sizeof *src);
    char *path = NULL;
    if (!cdf || !src) {
        free(cdf);
        free(src);
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        return cli_fail(&err);
    }
    double total = 0, acc = 0;
    for (int k = 0; k < 20000; k++) total += 1.0 / (k + 1);
    for (int k = 0; k < 20000; k++) {
        acc += 1.0 / (k + 1) / total;
        cdf[k] = acc >= 1 ? UINT32_MAX : (uint32_t)(acc * 4294967296.0);
    }
    /* write the documents to a temporary file, one per line, as a user's
     * file would be */
    const char *tmp = getenv("TMPDIR");
    size_t plen = strlen(tmp ? tmp : "/tmp") + 40;
    path = malloc(plen);
    snprintf(path, plen, "%s/nomoat-bench-curate-%d.txt", tmp ? tmp : "/tmp", (int)getpid());
    FILE *f = fopen(path, "w+b");
    if (!f) {
        nm_err_set(&err, NM_ERR_IO, "%s: cannot create", path);
        free(cdf);
        free(src);
        free(path);
        return cli_fail(&err);
    }
    nm_rng rng;
    nm_rng_seed(&rng, 2024);
    int64_t n_orig = (int64_t)((double)n_docs * (1 - dup_share));
    /* line offsets of every document, to copy earlier ones */
    long *off = malloc((size_t)n_docs * sizeof *off);
    nm_buf line;
    nm_buf_init(&line);
    char word[16];
    double t0 = now_s();
    for (int64_t d = 0; d < n_docs && off; d++) {
        off[d] = ftell(f);
        line.len = 0;
        src[d] = -1;
        if (d < n_orig) {
            int64_t L = 10 + (int64_t)(nm_rng_u64(&rng) % 41);
            for (int64_t k = 0; k < L; k++) {
                cb_word(&rng, cdf, word);
                if (k == 0) word[0] = (char)(word[0] - 32);
                nm_buf_printf(&line, "%s%s", k ? " " : "", word);
                if (k % 9 == 8) nm_buf_push(&line, ",", 1);
            }
            nm_buf_push(&line, ".", 1);
        } else {
            int64_t s = (int64_t)(nm_rng_u64(&rng) % (uint64_t)n_orig), kind = (int64_t)(nm_rng_u64(&rng) % 4);
            src[d] = s;
            /* read the original back */
            long here = ftell(f);
            fseek(f, off[s], SEEK_SET);
            char buf[1024];
            if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
            fseek(f, here, SEEK_SET);
            size_t bl = strcspn(buf, "\n");
            buf[bl] = 0;
            if (kind <= 1) { /* exact up to case and punctuation */
                for (size_t k = 0; k < bl; k++) {
                    char c = buf[k];
                    if (c == ',') continue;
                    if (kind == 1 && c >= 'a' && c <= 'z') c = (char)(c - 32);
                    nm_buf_push(&line, &c, 1);
                }
                nm_buf_push(&line, "!", 1);
            } else if (kind == 2) { /* one word appended */
                nm_buf_push(&line, buf, bl);
                cb_word(&rng, cdf, word);
                nm_buf_printf(&line, " %s", word);
            } else { /* one word replaced */
                size_t n_sp = 0;
                for (size_t k = 0; k < bl; k++) n_sp += buf[k] == ' ';
                size_t target = (size_t)(nm_rng_u64(&rng) % (n_sp + 1)), w = 0, k = 0;
                for (; k < bl; k++) {
                    if (w == target) break;
                    nm_buf_push(&line, &buf[k], 1);
                    w += buf[k] == ' ';
                }
                cb_word(&rng, cdf, word);
                nm_buf_printf(&line, "zq%s", word); /* a word the vocabulary never makes */
                while (k < bl && buf[k] != ' ') k++;
                nm_buf_push(&line, buf + k, bl - k);
            }
        }
        nm_buf_push(&line, "\n", 1);
        fwrite(line.data, 1, line.len, f);
    }
    fclose(f);
    double gen_s = now_s() - t0;
    int rc = 1;
    nm_docset *ds = nm_docset_new();
    nm_clean_result r = {0};
    if (!off || line.oom || !ds) {
        nm_err_set(&err, NM_ERR_NOMEM, "out of memory");
        goto out;
    }
    t0 = now_s();
    if (nm_docset_add_file(ds, path, NM_DOC_LINES, NULL, &err)) goto out;
    double load_s = now_s() - t0;
    nm_clean_params p;
    nm_clean_params_default(&p);
    p.threads = (int32_t)threads;
    struct timespec c0, c1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    t0 = now_s();
    if (nm_clean_run(ds, &p, &r, &log, &err)) goto out;
    double clean_s = now_s() - t0;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    double clean_cpu = (double)(c1.tv_sec - c0.tv_sec) + (double)(c1.tv_nsec - c0.tv_nsec) * 1e-9;
    /* recall of the planted copies, by kind and by true similarity */
    int64_t planted[2] = {0}, found[2] = {0}, bin_n[3] = {0}, bin_found[3] = {0}, false_pos = 0;
    nm_minhash mh;
    nm_mh_scratch sa = {0}, sb = {0};
    nm_u64vec ha = {0}, hb = {0};
    if (nm_minhash_init(&mh, 1, p.shingle, false, 1, &err)) goto out;
    for (int64_t d = 0; d < n_docs; d++) {
        bool removed = r.step[d] == NM_CLEAN_EXACT || r.step[d] == NM_CLEAN_NEAR;
        if (src[d] < 0) {
            /* an original removed as a duplicate of another original */
            if (removed) false_pos++;
            continue;
        }
        const nm_doc *a = nm_docset_doc(ds, (size_t)d), *b = nm_docset_doc(ds, (size_t)src[d]);
        char *na = NULL, *nb = NULL;
        size_t la, lb;
        nm_text_normalize(a->text, a->len, &na, &la, NULL);
        nm_text_normalize(b->text, b->len, &nb, &lb, NULL);
        bool same = na && nb && la == lb && !memcmp(na, nb, la);
        free(na);
        free(nb);
        if (same) {
            planted[0]++;
            found[0] += removed;
            continue;
        }
        planted[1]++;
        found[1] += removed;
        nm_minhash_shingles(&mh, a->text, a->len, &sa, &ha);
        nm_minhash_shingles(&mh, b->text, b->len, &sb, &hb);
        size_t inter = 0;
        for (size_t x = 0; x < ha.n; x++)
            for (size_t y = 0; y < hb.n; y++)
                if (ha.v[x] == hb.v[y]) {
                    inter++;
                    break;
                }
        double J = (double)inter / (double)(ha.n + hb.n - inter);
        int bin = J >= 0.9 ? 0 : J >= 0.8 ? 1 : 2;
        bin_n[bin]++;
        bin_found[bin] += removed;
    }
    nm_minhash_deinit(&mh);
    nm_mh_scratch_deinit(&sa);
    nm_mh_scratch_deinit(&sb);
    nm_u64vec_free(&ha);
    nm_u64vec_free(&hb);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t file_bytes = 0;
    for (size_t i = 0; i < nm_docset_size(ds); i++) file_bytes += nm_docset_doc(ds, i)->len + 1;
    double pr[3] = {nm_lsh_prob(0.95, r.bands, r.rows), nm_lsh_prob(0.85, r.bands, r.rows),
                    nm_lsh_prob(0.75, r.bands, r.rows)};
    if (json) {
        printf("{\"documents\": %lld, \"bytes\": %zu, \"threads\": %d, \"generate_s\": %.2f, \"load_s\": %.2f, "
               "\"clean_s\": %.2f, \"clean_cpu_s\": %.2f, \"exact_s\": %.2f, \"near_s\": %.2f, \"docs_per_s\": %.0f, \"exact_removed\": %zu, "
               "\"near_removed\": %zu, \"bands\": %d, \"rows\": %d, \"near_bytes\": %llu, \"docset_bytes\": %zu, "
               "\"peak_rss_bytes\": %lld, \"planted_exact\": %lld, \"found_exact\": %lld, \"planted_near\": %lld, "
               "\"found_near\": %lld, \"recall_j90\": [%lld, %lld], \"recall_j80\": [%lld, %lld], "
               "\"recall_below80\": [%lld, %lld], \"originals_removed\": %lld}\n",
               (long long)n_docs, file_bytes, threads ? (int)threads : nm_cpu_count(), gen_s, load_s, clean_s, clean_cpu,
               r.seconds[NM_CLEAN_EXACT], r.seconds[NM_CLEAN_NEAR], (double)n_docs / clean_s, r.count[NM_CLEAN_EXACT],
               r.count[NM_CLEAN_NEAR], r.bands, r.rows, (unsigned long long)r.near_bytes, nm_docset_bytes(ds),
               (long long)ru.ru_maxrss * 1024, (long long)planted[0], (long long)found[0], (long long)planted[1],
               (long long)found[1], (long long)bin_found[0], (long long)bin_n[0], (long long)bin_found[1],
               (long long)bin_n[1], (long long)bin_found[2], (long long)bin_n[2], (long long)false_pos);
    } else {
        printf("curate: %lld generated documents (%.1f MB, %.1f s to generate, %.1f s to load), %d threads\n",
               (long long)n_docs, (double)file_bytes / 1e6, gen_s, load_s, threads ? (int)threads : nm_cpu_count());
        printf("  exact + near de-duplication: %.1f s wall, %.1f s CPU (exact %.1f s, near %.1f s wall): %.0f "
               "documents/s\n",
               clean_s, clean_cpu, r.seconds[NM_CLEAN_EXACT], r.seconds[NM_CLEAN_NEAR], (double)n_docs / clean_s);
        printf("  removed: %zu exact, %zu near (LSH %d bands x %d rows, %llu comparisons)\n", r.count[NM_CLEAN_EXACT],
               r.count[NM_CLEAN_NEAR], r.bands, r.rows, (unsigned long long)r.lsh_pairs);
        printf("  planted copies found: exact up to case/punctuation %lld/%lld; near %lld/%lld\n", (long long)found[0],
               (long long)planted[0], (long long)found[1], (long long)planted[1]);
        printf("    by true Jaccard: >= 0.9: %lld/%lld (LSH alone %.3f at 0.95), 0.8-0.9: %lld/%lld (%.3f at 0.85), "
               "< 0.8: %lld/%lld (%.3f at 0.75; not meant to go)\n",
               (long long)bin_found[0], (long long)bin_n[0], pr[0], (long long)bin_found[1], (long long)bin_n[1], pr[1],
               (long long)bin_found[2], (long long)bin_n[2], pr[2]);
        printf("  originals removed (chance similarity): %lld\n", (long long)false_pos);
        printf("  memory: peak RSS %.1f MiB: documents %.1f MiB, signatures + band keys %.1f MiB\n",
               ru.ru_maxrss / 1024.0, (double)nm_docset_bytes(ds) / 1048576.0, (double)r.near_bytes / 1048576.0);
    }
    rc = 0;
out:
    if (rc) cli_fail(&err);
    nm_clean_result_deinit(&r);
    nm_docset_free(ds);
    nm_buf_deinit(&line);
    remove(path);
    free(path);
    free(off);
    free(src);
    free(cdf);
    return rc;
}

/* ---- --train: the training-step benchmark lives with `nomoat train --bench`
 * (one implementation, nm_train_bench); this mode forwards to it. ---- */
static int bench_train(int argc, char **argv) {
    char **targv = calloc((size_t)argc + 2, sizeof *targv);
    if (!targv) return 1;
    targv[0] = "train";
    targv[1] = "--bench";
    for (int i = 1; i < argc; i++) targv[i + 1] = argv[i];
    int rc = cmd_train(argc + 1, targv);
    free(targv);
    return rc;
}

static const bench_mode MODES[] = {
    {"--infer", "-m MODEL.gguf [-p 512] [-n 128] [--threads N] [--reps N] [--no-roofline] [--bw-mb 512] [--profile]\n"
                "          [--json]:\n"
                "          prompt processing and generation speed, median tokens/s (the default: --infer may be\n"
                "          left out), each as a fraction of its roofline measured in the same run with the same\n"
                "          threads: generation x bytes read a token / memory read bandwidth, prompt processing x\n"
                "          multiply-adds a token / peak rate (int8 dot product for quantized weights, F32 FMA\n"
                "          for float ones; generation also against the bandwidth measured right before and after\n"
                "          each of its runs, since a shared host moves it between seconds); --bw-mb sizes the\n"
                "          bandwidth buffer.  The model line says how many matrices were packed for the\n"
                "          kernels; NOMOAT_PACK=0 (or NOMOAT_MMAP=1) measures them as stored.  The machine\n"
                "          line adds the threads' round trip (one cache line between two of them, beside each\n"
                "          generation run): a VM's vCPUs on two core complexes hand rows over ~5x slower.\n"
                "          --profile adds where the time goes: per phase of the forward pass (norms, Q/K/V,\n"
                "          attention, FFN, ...) the time inside parallel regions, the calling thread's waits\n"
                "          there, and the time it worked alone while the other threads idled",
     bench_model},
    {"--tokenize", "-m MODEL.gguf -f FILE [--reps N] [--json]: tokenizer throughput (median MB/s)", bench_tokenize},
    {"--train", "-m MODEL.gguf [--rank 8] [--seq 256] [--batch 1] [--threads N] [--steps 3] [--full]: LoRA\n"
                "          training tokens/s, GFLOP/s and peak RSS (same as nomoat train --bench)",
     bench_train},
    {"--curate", "[--docs N (1000000)] [--dups SHARE (0.1)] [--threads N] [--json]: exact + near (MinHash/LSH)\n"
                 "          de-duplication of generated short documents: time, recall, peak memory",
     bench_curate},
};
#define N_MODES (sizeof MODES / sizeof MODES[0])

static void help(void) {
    printf("usage: nomoat bench MODE [options]\n\nModes:\n");
    for (size_t i = 0; i < N_MODES; i++) printf("  %s %s\n", MODES[i].flag, MODES[i].summary);
}

int cmd_bench(int argc, char **argv) {
    if (argc < 2) return cli_usage("bench", "missing a mode (e.g. --tokenize)");
    if (cli_is_help(argv[1])) {
        help();
        return 0;
    }
    for (size_t i = 0; i < N_MODES; i++)
        if (strcmp(argv[1], MODES[i].flag) == 0) {
            for (int j = 2; j < argc; j++)
                if (cli_is_help(argv[j])) {
                    help();
                    return 0;
                }
            return MODES[i].run(argc - 1, argv + 1);
        }
    /* no mode flag: the inference benchmark, which takes all the arguments */
    for (int j = 2; j < argc; j++)
        if (cli_is_help(argv[j])) {
            help();
            return 0;
        }
    return bench_model(argc, argv);
}
