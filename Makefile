# mcai - one Makefile for the library, the command, tests, fuzzers and benchmarks.
#
# Sources are found by wildcard: every src/<module>/*.c except src/cli goes into
# libmcai.a; tests/test_*.c, bench/*.c and fuzz/fuzz_*.c each become one program.
# Files named *_avx2.c / *_avx512.c are compiled with those instruction sets and are only
# called after a run-time CPU check.

CC      ?= cc
SAN     ?=
BUILD   ?= build$(if $(SAN),-san)
PKGS    := libsodium sqlite3 jansson libmicrohttpd libpcre2-8 libutf8proc libcurl libxml-2.0
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -Wall -Wextra -Wshadow -Werror
SAN_ON  := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SANFLAGS := $(if $(SAN),$(SAN_ON))
ALL_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) $(SANFLAGS) -Isrc $(PKG_CFLAGS) -MMD -MP
LDLIBS  := $(PKG_LIBS) -lstemmer -lm -lpthread

AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mavx2 -mfma -mf16c

LIB_SRC := $(filter-out src/cli/%,$(wildcard src/*/*.c))
CLI_SRC := $(wildcard src/cli/*.c)
TEST_SRC := $(wildcard tests/test_*.c)
BENCH_SRC := $(wildcard bench/*.c)
# C++ files in bench/ wrap third-party C++ libraries (hnswlib) that benchmarks compare
# against; they never go into libmcai.
BENCH_CXX := $(wildcard bench/*.cpp)
BENCH_CXX_OBJ := $(BENCH_CXX:%.cpp=$(BUILD)/%.o)
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/libmcai.a
MCAI    := $(BUILD)/mcai
TESTS   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCHES := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

# all: the library, the mcai command, test programs and benchmarks.
# ./mcai always points at the plain build, never at the sanitizer one.
all: $(MCAI) $(TESTS) $(BENCHES)
	@$(if $(SAN),true,ln -sf $(MCAI) mcai 2>/dev/null || true)

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(MCAI): $(CLI_OBJ) $(LIB)
	$(CC) $(ALL_CFLAGS) -o $@ $(CLI_OBJ) $(LIB) $(LDLIBS)

$(BUILD)/tests/%: tests/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(LIB) $(LDLIBS) -lcmocka

$(BUILD)/bench/%.o: bench/%.cpp
	@mkdir -p $(dir $@)
	$(CXX) -std=c++17 -O3 -march=native -g $(SANFLAGS) -Isrc -c $< -o $@

# A benchmark bench/NAME.c links bench/NAME_*.cpp wrappers when there are any.
$(BUILD)/bench/%: bench/%.c $(LIB) $(BENCH_CXX_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(filter $(BUILD)/bench/$*_%.o,$(BENCH_CXX_OBJ)) $(LIB) $(LDLIBS) \
	    $(if $(filter $(BUILD)/bench/$*_%.o,$(BENCH_CXX_OBJ)),-lstdc++)

# test: build everything and run every test program; prints "N passed, N failed".
test: all
	@MCAI=$(MCAI) BUILD=$(BUILD) sh tests/run.sh $(TESTS)

# test-san: the same tests under AddressSanitizer and UBSan (separate build-san/ tree).
test-san:
	$(MAKE) SAN=1 OPT=-O1 test

# check: what CI runs: every test, then every test again under ASan + UBSan.
check:
	$(MAKE) test
	$(MAKE) test-san

# fuzz: build the libFuzzer targets with clang and run each for FUZZ_SECONDS.
FUZZ_SECONDS ?= 60
fuzz:
	@mkdir -p build-fuzz
	@for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); \
	  echo "fuzz: building $$n"; \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc $(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined \
	    -mavx2 -mfma -mf16c -o build-fuzz/$$n $$f $(LIB_SRC) $(PKG_LIBS) -lstemmer -lm -lpthread || exit 1; \
	  mkdir -p build-fuzz/corpus-$$n; \
	  ./build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) build-fuzz/corpus-$$n fuzz/corpus/$$n || exit 1; \
	done

# demo: set up, build, start the server on a small model and show tenants chatting.
demo: all
	@sh scripts/demo.sh

# format / format-check: apply or verify .clang-format on our C sources.
format:
	clang-format -i $(LIB_SRC) $(CLI_SRC) $(TEST_SRC) $(BENCH_SRC) $(FUZZ_SRC) $(wildcard src/*/*.h)
format-check:
	clang-format --dry-run --Werror $(LIB_SRC) $(CLI_SRC) $(TEST_SRC) $(BENCH_SRC) $(FUZZ_SRC) $(wildcard src/*/*.h)

# clean: remove every build tree.
clean:
	rm -rf build build-san build-fuzz mcai

.PHONY: all check test test-san fuzz demo format format-check clean
.SECONDARY:

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
