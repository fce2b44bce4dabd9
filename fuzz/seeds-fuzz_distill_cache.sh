#!/usr/bin/env bash
# seeds-fuzz_distill_cache.sh SHARED CORPUS - small valid teacher caches.
set -eu
build-fuzz/make_distill_seeds "$2"
