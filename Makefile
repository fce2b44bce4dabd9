# nomoat - GNU Make build.
#
#   make              library (build/libnomoat.a, build/libnomoat.so) and tool (build/nomoat)
#   make test         set-up (missing Debian packages), then the whole suite:
#                     unit/golden tests, the same under ASan+UBSan, a bounded fuzz run
#   make check        just the unit/golden tests of the normal build (fast loop)
#   make test SAN=1   just the suite under AddressSanitizer + UndefinedBehaviorSanitizer
#   make fuzz         libFuzzer targets for FUZZ_SECONDS each (clang)
#   make demo         set-up, build, then the main job on ../shared/models/stories260K.gguf
#   make install PREFIX=/usr/local
#   make MPI=1        the same, built with mpicc for data-parallel training under
#                     mpirun (build-mpi/); `make test` builds and tests it too
#
# Several builds can live side by side: BUILD=dir picks the output folder.

SAN ?= 0
# ---- MPI (data-parallel training, issue 12) ----
# make MPI=1  the same library and tool compiled and linked by Open MPI's
#             mpicc with -DNM_MPI (src/train/dist.c), into build-mpi/ (with
#             SAN=1: build-mpi-san/); `make` itself never needs MPI
MPI ?= 0
ifeq ($(MPI),1)
ifeq ($(SAN),1)
BUILD ?= build-mpi-san
else
BUILD ?= build-mpi
endif
CC := mpicc
endif
# ---- end MPI ----
ifeq ($(SAN),1)
BUILD ?= build-san
else
BUILD ?= build
endif
PREFIX ?= /usr/local
CC ?= cc
WERROR ?= 1
FUZZ_SECONDS ?= 20
NOMOAT_SHARED ?= $(abspath ../shared)
export NOMOAT_SHARED

# Debian libraries we build on (see scripts/setup.sh for the packages).
PKGS := jansson libpcre2-8 libmicrohttpd
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Wshadow -Wno-unused-parameter
ifeq ($(WERROR),1)
WARN += -Werror
endif
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -pthread $(WARN) $(CFLAGS) -Iinclude -Isrc
ifeq ($(MPI),1)
ALL_CFLAGS += -DNM_MPI
endif
# OpenBLAS, when pkg-config finds it (libopenblas-dev; not in the aarch64
# cross build unless its arm64 package is there): full training's weight
# gradient, where it measures faster (src/train/gemm.h).  BLAS=0: without.
BLAS ?= auto
ifneq ($(BLAS),0)
ifeq ($(shell pkg-config --exists openblas 2>/dev/null && echo yes),yes)
PKGS += openblas
ALL_CFLAGS += -DNM_OPENBLAS
endif
endif
ifeq ($(SAN),1)
ALL_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_LDFLAGS := -fsanitize=address,undefined
endif
LDLIBS := -lm -pthread

LIB_SRC := $(shell find src -name '*.c' | sort)
TOOL_SRC := $(sort $(wildcard tools/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/obj/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
EXAMPLE_BIN := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))

.PHONY: all lib tool tests examples test check demo fuzz install clean setup
all: lib tool examples

lib: $(BUILD)/libnomoat.a $(BUILD)/libnomoat.so $(BUILD)/nomoat.pc
tool: $(BUILD)/nomoat
tests: $(TEST_BIN)
examples: $(EXAMPLE_BIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libnomoat.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libnomoat.so: $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,libnomoat.so.0 $(SAN_LDFLAGS) -o $@ $^ $(PKG_LIBS) $(LDLIBS)

$(BUILD)/nomoat.pc: nomoat.pc.in include/nomoat.h
	@mkdir -p $(BUILD)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(shell sed -n 's/^#define NM_VERSION_STRING "\(.*\)"/\1/p' include/nomoat.h)|g' \
	    -e 's|@PRIVATE_LIBS@|$(PKG_LIBS) $(LDLIBS)|g' $< > $@

$(BUILD)/nomoat: $(TOOL_OBJ) $(BUILD)/libnomoat.a
	$(CC) $(SAN_LDFLAGS) -o $@ $(TOOL_OBJ) $(BUILD)/libnomoat.a $(PKG_LIBS) $(LDLIBS)

$(BUILD)/obj/tests/testlib.o: tests/testlib.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(BUILD)/obj/tests/testlib.o $(BUILD)/libnomoat.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN_LDFLAGS) -o $@ $< $(BUILD)/obj/tests/testlib.o $(BUILD)/libnomoat.a $(PKG_LIBS) $(LDLIBS)

$(BUILD)/examples/%: $(BUILD)/obj/examples/%.o $(BUILD)/libnomoat.a
	@mkdir -p $(dir $@)
	$(CC) $(SAN_LDFLAGS) -o $@ $< $(BUILD)/libnomoat.a $(PKG_LIBS) $(LDLIBS)

# ---- serve: the chat page is embedded with .incbin (src/serve/page.c) ----
# The compiler does not list .incbin files in its dependency output, so the
# object depends on the page explicitly.
$(BUILD)/obj/src/serve/page.o: src/serve/page.html
# ---- end serve ----

# ---- aarch64 cross build (kernels, issue 7) ----
# make cross-aarch64  library, tool, tests and examples for 64-bit ARM Linux
#                     with Debian's gcc-aarch64-linux-gnu into build-aarch64/
#                     (the arm64 -dev libraries come through multiarch, see
#                     scripts/setup.sh)
# make check-aarch64  runs its kernel, type, quantization and model tests
#                     under qemu-aarch64, on an emulated core with the
#                     dot-product extension and on one without
# Only the tests that run under qemu are built (Debian's aarch64 gcc 12
# also stops with an internal error on tests/test_train_optim.c).
AARCH64_CC ?= aarch64-linux-gnu-gcc
AARCH64_TESTS := $(filter $(TEST_SRC:tests/%.c=%),test_kernels test_types test_quantize test_model)
.PHONY: cross-aarch64 check-aarch64
cross-aarch64:
	PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
	  $(MAKE) --no-print-directory BUILD=build-aarch64 SAN=0 CC=$(AARCH64_CC) all \
	  $(AARCH64_TESTS:%=build-aarch64/tests/%)
check-aarch64: cross-aarch64
	scripts/test-aarch64.sh build-aarch64
# ---- end aarch64 ----

# ---- the two commands of the README ----
test:
ifeq ($(SAN),1)
	scripts/setup.sh
	$(MAKE) --no-print-directory SAN=1 BUILD=$(BUILD) all tests
	scripts/run-tests.sh $(BUILD)
else
	scripts/setup.sh
	scripts/test-all.sh
endif

check: all tests
	scripts/run-tests.sh $(BUILD)

demo:
	scripts/setup.sh
	$(MAKE) --no-print-directory all
	scripts/demo.sh $(BUILD)

setup:
	scripts/setup.sh

# ---- fuzzing (clang + libFuzzer) ----
# The library is compiled again by clang with coverage instrumentation
# (objects in build-fuzz/obj, so rebuilds are incremental); each
# fuzz/fuzz_NAME.c becomes build-fuzz/fuzz_NAME.
# fuzz/seeds-NAME.sh SHARED CORPUS (optional) fills a target's seed corpus.
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=build-fuzz/%)
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Iinclude -Isrc -fsanitize=address,undefined
FUZZ_OBJ := $(LIB_SRC:%.c=build-fuzz/obj/%.o)
build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -MMD -MP -c $< -o $@
build-fuzz/libnomoat-fuzz.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^
build-fuzz/%: fuzz/%.c build-fuzz/libnomoat-fuzz.a
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) -o $@ $< build-fuzz/libnomoat-fuzz.a $(PKG_LIBS) -lm -pthread
build-fuzz/make_seeds: fuzz/make_seeds.c build-fuzz/libnomoat-fuzz.a
	clang $(FUZZ_CFLAGS) $(PKG_CFLAGS) -o $@ $< build-fuzz/libnomoat-fuzz.a $(PKG_LIBS) -lm -pthread
build-fuzz/make_st_seeds: fuzz/make_st_seeds.c build-fuzz/libnomoat-fuzz.a
	clang $(FUZZ_CFLAGS) $(PKG_CFLAGS) -o $@ $< build-fuzz/libnomoat-fuzz.a $(PKG_LIBS) -lm -pthread
build-fuzz/make_distill_seeds: fuzz/make_distill_seeds.c build-fuzz/libnomoat-fuzz.a
	clang $(FUZZ_CFLAGS) $(PKG_CFLAGS) -o $@ $< build-fuzz/libnomoat-fuzz.a $(PKG_LIBS) -lm -pthread
fuzz: $(FUZZ_BIN) build-fuzz/make_seeds build-fuzz/make_st_seeds build-fuzz/make_distill_seeds
	scripts/run-fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BIN)
-include $(shell find build-fuzz/obj -name '*.d' 2>/dev/null)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/nomoat $(DESTDIR)$(PREFIX)/bin/nomoat
	install -m 644 $(BUILD)/libnomoat.a $(DESTDIR)$(PREFIX)/lib/libnomoat.a
	install -m 755 $(BUILD)/libnomoat.so $(DESTDIR)$(PREFIX)/lib/libnomoat.so.0
	ln -sf libnomoat.so.0 $(DESTDIR)$(PREFIX)/lib/libnomoat.so
	install -m 644 include/nomoat.h $(DESTDIR)$(PREFIX)/include/nomoat.h
	install -m 644 $(BUILD)/nomoat.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/nomoat.pc

clean:
	rm -rf build build-san build-fuzz build-*

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
