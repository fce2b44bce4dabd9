/* sbs.c - side-by-side comparison of two configurations: both answer the
 * same prompts with the same sampling and seeds; a self-contained HTML page
 * shows the answers in a seeded random left/right order with a form to
 * record which is better, and exports the choices as JSON for
 * nm_eval_tally. */
#include "curate/curate.h"
#include "eval/eval.h"

#include <stdlib.h>
#include <string.h>

/* The page: plain HTML, CSS and JavaScript, no external resource.  The data
 * sits in a <script type="application/json"> element (every '<' in it is
 * escaped) and is put on the page with textContent only, so no answer can
 * inject markup.  Choices are kept in localStorage under the report id and
 * exported as {"nomoat_side_by_side": 1, "report", "a", "b", "choices":
 * [{"id", "left": "a"|"b", "choice": "left"|"right"|"tie"|null}]}. */
static const char PAGE_HEAD[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>";
static const char PAGE_STYLE[] =
    "</title>\n<style>\n"
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em;color:#222;background:#fafafa}\n"
    "h1{font-size:1.3em}\n.item{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.8em}\n"
    ".prompt{white-space:pre-wrap;font-weight:600;margin-bottom:.6em}\n"
    ".pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}\n"
    ".answer{white-space:pre-wrap;border:1px solid #eee;border-radius:4px;padding:.6em;background:#fcfcfc}\n"
    ".answer h3{margin:0 0 .4em 0;font-size:.9em;color:#666}\n"
    ".form{margin-top:.6em}\n.form label{margin-right:1.2em;cursor:pointer}\n"
    ".done{border-color:#7a7}\n#bar{position:sticky;top:0;background:#fafafa;padding:.5em 0;border-bottom:1px solid #ddd}\n"
    "#out{width:100%;height:8em;font-family:monospace;display:none}\n"
    "</style>\n</head>\n<body>\n<h1 id=\"title\"></h1>\n"
    "<p>Each prompt was answered by two configurations; their answers are shown in a random order. "
    "Choose the better answer (or a tie), then export your choices and give the file to "
    "<code>nomoat eval --tally FILE</code>.</p>\n"
    "<div id=\"bar\"><span id=\"count\"></span> "
    "<button id=\"export\">Export choices (JSON)</button> <button id=\"show\">Show JSON</button> "
    "<button id=\"clear\">Clear</button></div>\n<textarea id=\"out\" readonly></textarea>\n"
    "<div id=\"items\"></div>\n<script type=\"application/json\" id=\"data\">";
static const char PAGE_TAIL[] =
    "</script>\n<script>\n"
    "(function(){\n"
    "var D=JSON.parse(document.getElementById('data').textContent);\n"
    "var KEY='nomoat-sbs-'+D.report;\n"
    "var C={};try{C=JSON.parse(localStorage.getItem(KEY)||'{}')||{};}catch(e){C={};}\n"
    "document.title=D.title;document.getElementById('title').textContent=D.title;\n"
    "function el(t,c,txt){var e=document.createElement(t);if(c)e.className=c;if(txt!==undefined)e.textContent=txt;return e;}\n"
    "function result(){var ch=[];D.items.forEach(function(it){ch.push({id:it.id,left:it.order,"
    "choice:C[it.id]===undefined?null:C[it.id]});});\n"
    " return {nomoat_side_by_side:1,report:D.report,a:D.a,b:D.b,choices:ch};}\n"
    "function save(){try{localStorage.setItem(KEY,JSON.stringify(C));}catch(e){}count();}\n"
    "function count(){var n=0;D.items.forEach(function(it){if(C[it.id]!==undefined)n++;});\n"
    " document.getElementById('count').textContent=n+' of '+D.items.length+' answered';\n"
    " var o=document.getElementById('out');if(o.style.display==='block')o.value=JSON.stringify(result(),null,1);}\n"
    "var box=document.getElementById('items');\n"
    "D.items.forEach(function(it,k){\n"
    " var d=el('div','item');d.id='item-'+it.id;\n"
    " d.appendChild(el('div','prompt',(k+1)+'. '+it.prompt));\n"
    " var p=el('div','pair');\n"
    " ['left','right'].forEach(function(side){var a=el('div','answer');a.appendChild(el('h3','',side==='left'?'Left':'Right'));"
    "a.appendChild(document.createTextNode(it[side]));p.appendChild(a);});\n"
    " d.appendChild(p);\n"
    " var f=el('div','form');\n"
    " [['left','Left is better'],['tie','Tie'],['right','Right is better']].forEach(function(o){\n"
    "  var l=el('label');var r=document.createElement('input');r.type='radio';r.name='c'+it.id;r.value=o[0];\n"
    "  if(C[it.id]===o[0]){r.checked=true;d.classList.add('done');}\n"
    "  r.addEventListener('change',function(){C[it.id]=o[0];d.classList.add('done');save();});\n"
    "  l.appendChild(r);l.appendChild(document.createTextNode(' '+o[1]));f.appendChild(l);});\n"
    " d.appendChild(f);box.appendChild(d);});\n"
    "document.getElementById('export').addEventListener('click',function(){\n"
    " var b=new Blob([JSON.stringify(result(),null,1)],{type:'application/json'});\n"
    " var a=document.createElement('a');a.href=URL.createObjectURL(b);a.download='choices-'+D.report+'.json';\n"
    " document.body.appendChild(a);a.click();setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);});\n"
    "document.getElementById('show').addEventListener('click',function(){var o=document.getElementById('out');\n"
    " o.style.display=o.style.display==='block'?'none':'block';count();});\n"
    "document.getElementById('clear').addEventListener('click',function(){if(!confirm('Forget every choice?'))return;\n"
    " C={};save();location.reload();});\n"
    "window.nomoatChoices=result;\n"
    "count();\n"
    "})();\n</script>\n</body>\n</html>\n";

static void html_text(nm_buf *b, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': nm_buf_push(b, "&lt;", 4); break;
        case '>': nm_buf_push(b, "&gt;", 4); break;
        case '&': nm_buf_push(b, "&amp;", 5); break;
        case '"': nm_buf_push(b, "&quot;", 6); break;
        default: nm_buf_push(b, s, 1);
        }
    }
}

/* The prompt as one text: a plain prompt as it is, a conversation as
 * "role: content" lines. */
static void prompt_text(const nm_cand *x, nm_buf *b) {
    if (x->raw) {
        nm_buf_push(b, x->msgs[0].content, strlen(x->msgs[0].content));
        return;
    }
    for (size_t i = 0; i < x->n_msgs; i++) {
        if (i) nm_buf_push(b, "\n", 1);
        if (x->n_msgs > 1) nm_buf_printf(b, "%s: ", x->msgs[i].role);
        nm_buf_push(b, x->msgs[i].content, strlen(x->msgs[i].content));
    }
}

nm_status nm_eval_side_by_side(const nm_cands *prompts, const nm_sbs_params *p, const char *html_path,
                               const char *jsonl_path, const nm_log *log, nm_err *err) {
    if (!p->a || !p->b) return nm_err_set(err, NM_ERR_ARG, "side by side needs two models");
    nm_gen_params g = p->gen;
    g.n = 1;
    /* one base seed for both sides, drawn once if random */
    if (g.sampling.seed == NM_SEED_RANDOM) {
        nm_model_info info;
        nm_model_get_info(p->a, &info);
        nm_sampler_params sp = nm_sampler_params_default();
        nm_sampler *s = NULL;
        nm_status st = nm_sampler_new(&sp, info.n_vocab, &s, err);
        if (st) return st;
        g.sampling.seed = nm_sampler_seed(s);
        nm_sampler_free(s);
    }
    nm_cands *ca = nm_cands_new(), *cb = nm_cands_new();
    nm_buf h, jl, t;
    nm_buf_init(&h);
    nm_buf_init(&jl);
    nm_buf_init(&t);
    nm_status st = NM_OK;
    if (!ca || !cb) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    if (!st) {
        nm_logf(log, NM_LOG_INFO, "side by side: answers of %s", p->name_a ? p->name_a : "A");
        g.loras = p->loras_a;
        g.n_loras = p->n_loras_a;
        st = nm_cands_generate(p->a, prompts, &g, ca, log, err);
    }
    if (!st) {
        nm_logf(log, NM_LOG_INFO, "side by side: answers of %s", p->name_b ? p->name_b : "B");
        g.loras = p->loras_b;
        g.n_loras = p->n_loras_b;
        st = nm_cands_generate(p->b, prompts, &g, cb, log, err);
    }
    if (!st && nm_cands_size(ca) != nm_cands_size(cb))
        st = nm_err_set(err, NM_ERR_INTERNAL, "the two sides answered a different number of prompts");
    const char *name_a = p->name_a ? p->name_a : "A", *name_b = p->name_b ? p->name_b : "B";
    const char *title = p->title ? p->title : "Side by side";
    /* the report id: a hash of what is compared, so choices cannot be
     * applied to another report by mistake */
    uint64_t id = nm_cu_hash(name_a, strlen(name_a), nm_cu_hash(name_b, strlen(name_b), p->order_seed));
    for (size_t i = 0; !st && i < nm_cands_size(ca); i++) {
        const nm_cand *x = nm_cands_at(ca, i), *y = nm_cands_at(cb, i);
        id = nm_cu_hash(x->response, strlen(x->response), id);
        id = nm_cu_hash(y->response, strlen(y->response), id);
    }
    char report[17];
    snprintf(report, sizeof report, "%016llx", (unsigned long long)id);
    nm_rng rng;
    nm_rng_seed(&rng, p->order_seed);
    if (!st) {
        nm_buf_push(&h, PAGE_HEAD, sizeof PAGE_HEAD - 1);
        html_text(&h, title);
        nm_buf_push(&h, PAGE_STYLE, sizeof PAGE_STYLE - 1);
        nm_buf_printf(&h, "{\"title\": ");
        nm_cu_json_str(&h, title, strlen(title));
        nm_buf_printf(&h, ", \"report\": \"%s\", \"a\": ", report);
        nm_cu_json_str(&h, name_a, strlen(name_a));
        nm_buf_printf(&h, ", \"b\": ");
        nm_cu_json_str(&h, name_b, strlen(name_b));
        nm_buf_printf(&h, ", \"items\": [");
    }
    for (size_t i = 0; !st && i < nm_cands_size(ca); i++) {
        const nm_cand *x = nm_cands_at(ca, i), *y = nm_cands_at(cb, i);
        bool left_a = (nm_rng_u64(&rng) >> 63) != 0;
        t.len = 0;
        prompt_text(x, &t);
        nm_buf_printf(&h, "%s\n{\"id\": %zu, \"prompt\": ", i ? "," : "", i);
        nm_cu_json_str(&h, t.len ? (const char *)t.data : "", t.len);
        /* "order": which configuration answers on the left */
        nm_buf_printf(&h, ", \"order\": \"%s\", \"left\": ", left_a ? "a" : "b");
        const char *lt = left_a ? x->response : y->response, *rt = left_a ? y->response : x->response;
        nm_cu_json_str(&h, lt, strlen(lt));
        nm_buf_printf(&h, ", \"right\": ");
        nm_cu_json_str(&h, rt, strlen(rt));
        nm_buf_push(&h, "}", 1);
        /* JSONL */
        nm_buf_printf(&jl, "{\"id\": %zu, \"prompt_id\": %lld, \"report\": \"%s\", ", i, (long long)x->prompt_id, report);
        if (x->raw) {
            nm_buf_printf(&jl, "\"prompt\": ");
            nm_cu_json_str(&jl, x->msgs[0].content, strlen(x->msgs[0].content));
        } else {
            nm_buf_printf(&jl, "\"messages\": [");
            for (size_t k = 0; k < x->n_msgs; k++) {
                nm_buf_printf(&jl, "%s{\"role\": ", k ? ", " : "");
                nm_cu_json_str(&jl, x->msgs[k].role, strlen(x->msgs[k].role));
                nm_buf_printf(&jl, ", \"content\": ");
                nm_cu_json_str(&jl, x->msgs[k].content, strlen(x->msgs[k].content));
                nm_buf_push(&jl, "}", 1);
            }
            nm_buf_push(&jl, "]", 1);
        }
        nm_buf_printf(&jl, ", \"a\": ");
        nm_cu_json_str(&jl, x->response, strlen(x->response));
        nm_buf_printf(&jl, ", \"b\": ");
        nm_cu_json_str(&jl, y->response, strlen(y->response));
        nm_buf_printf(&jl, ", \"left\": \"%s\", \"name_a\": ", left_a ? "a" : "b");
        nm_cu_json_str(&jl, name_a, strlen(name_a));
        nm_buf_printf(&jl, ", \"name_b\": ");
        nm_cu_json_str(&jl, name_b, strlen(name_b));
        nm_buf_printf(&jl, ", \"seed\": \"%llu\"}\n", (unsigned long long)x->seed);
    }
    if (!st) {
        nm_buf_printf(&h, "]}");
        nm_buf_push(&h, PAGE_TAIL, sizeof PAGE_TAIL - 1);
        if (h.oom || jl.oom) st = nm_err_set(err, NM_ERR_NOMEM, "out of memory");
    }
    if (!st && html_path) st = nm_write_file_atomic(html_path, h.data, h.len, err);
    if (!st && jsonl_path) st = nm_write_file_atomic(jsonl_path, jl.len ? jl.data : (const uint8_t *)"", jl.len, err);
    nm_buf_deinit(&h);
    nm_buf_deinit(&jl);
    nm_buf_deinit(&t);
    nm_cands_free(ca);
    nm_cands_free(cb);
    return st;
}
