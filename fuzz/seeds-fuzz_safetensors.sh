#!/usr/bin/env bash
# seeds-fuzz_safetensors.sh SHARED CORPUS - small valid adapter files.
set -eu
build-fuzz/make_st_seeds "$2"
