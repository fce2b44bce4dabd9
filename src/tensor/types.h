/*
 * types.h - the type-traits table: one row per tensor type, kernels dispatched
 * through it (the ggml way).  To add a tensor type: add its id to nm_type in
 * nomoat.h, its block struct and conversions in quants.c, and one row in the
 * table in types.c.  Nothing else switches on type ids.
 */
#ifndef NM_TYPES_H
#define NM_TYPES_H

#include "nomoat.h"

typedef void (*nm_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*nm_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct nm_type_traits {
    const char *name;
    int64_t blck_size;    /* elements per block                      */
    size_t type_size;     /* bytes per block                         */
    bool is_quantized;
    nm_to_float_fn to_float;     /* NULL: cannot dequantize (yet)    */
    nm_from_float_fn from_float; /* NULL: cannot quantize (yet)      */
} nm_type_traits;

/* NULL for ids nomoat does not know. */
const nm_type_traits *nm_type_traits_get(uint32_t t);

#endif
