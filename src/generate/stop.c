/*
 * stop.c - stop strings while streaming.  A generation loop prints text as
 * it comes, but must never print the start of a stop string that the next
 * tokens complete; so besides "is a stop string there?" it needs to know how
 * much of the text is safe: everything except the longest tail that is a
 * prefix of some stop string.
 */
#include "base/base.h"

#include <string.h>

bool nm_stop_find(const char *text, size_t len, const char *const *stops, size_t n_stops,
                  size_t *stop_at, size_t *safe_len) {
    size_t best = SIZE_MAX; /* earliest start of a complete stop string */
    size_t hold = 0;        /* longest tail that may become one */
    for (size_t i = 0; i < n_stops; i++) {
        const char *st = stops ? stops[i] : NULL;
        size_t sl = st ? strlen(st) : 0;
        if (sl == 0) continue;
        const char *hit = len >= sl ? memmem(text, len, st, sl) : NULL;
        if (hit) {
            size_t at = (size_t)(hit - text);
            if (at < best) best = at;
            continue;
        }
        size_t k = sl - 1 < len ? sl - 1 : len;
        for (; k > hold; k--)
            if (memcmp(text + len - k, st, k) == 0) {
                hold = k;
                break;
            }
    }
    if (best != SIZE_MAX) {
        if (stop_at) *stop_at = best;
        if (safe_len) *safe_len = best;
        return true;
    }
    if (stop_at) *stop_at = len;
    if (safe_len) *safe_len = len - hold;
    return false;
}
