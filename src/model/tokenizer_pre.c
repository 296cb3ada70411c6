/* tokenizer_pre.c - the pre-tokenizer of byte-level BPE vocabularies, and UTF-8 helpers.
 *
 * A tokenizer.ggml.pre name selects a list of split regexes (the strings are data taken
 * from the reference implementation, llama.cpp's llama-vocab.cpp, and must stay
 * byte-identical in meaning). The regexes run in sequence: each one splits every piece
 * the previous one produced, and both the matches and the text between matches become
 * pieces, exactly as the reference's unicode_regex_split does.
 *
 * Matching uses PCRE2 with UTF and UCP. Two details keep it equal to the reference:
 * "\s" is rewritten to the Unicode White_Space set the reference uses (PCRE2's own \s
 * leaves out U+0085), and "$" only matches at the very end of a piece.
 *
 * Invalid UTF-8 never reaches PCRE2: each invalid byte stands as U+FFFD in a sanitised
 * copy of the text (as the reference does), while the spans handed back point at the
 * original bytes, so the raw bytes are what gets encoded and decode(encode(x)) == x.
 * The Unicode property tables are PCRE2's, which may differ from the reference's for
 * characters assigned in the most recent Unicode versions.
 *
 * Compiled patterns are immutable and shared by all threads; match data is per call. */
#include "model/tokenizer_int.h"

#include "base/mem.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h> /* pcre2_compile, pcre2_match, pcre2_jit_compile */

#include <string.h>

#define PRE_MAX_REGEX 8

/* ---- Pattern table -------------------------------------------------------------- */

#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RE_LLAMA3                                                                                  \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"     \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                   \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"     \
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* CJK ranges shared by the two DeepSeek lists: U+4E00-9FA5, U+0800-4E00, U+AC00-D7FF. */
#define RE_DEEPSEEK_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"
/* The letter class of deepseek-llm, written with escapes because several of its
 * characters (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A) are canonical singletons
 * that editors and copy/paste silently normalise into other code points. */
#define RE_DEEPSEEK_LLM_LETTERS                                                                    \
    "\\s?[\\x{41}-\\x{5A}\\x{61}-\\x{7A}\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}"     \
    "\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}"         \
    "\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}" \
    "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}"    \
    "\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}"                 \
    "\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"                 \
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}"         \
    "\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"        \
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}"                 \
    "\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}"         \
    "\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}"         \
    "\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"                   \
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}"                  \
    "\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}"                 \
    "\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}"                 \
    "\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}"             \
    "\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"         \
    "\\x{1E900}-\\x{1E943}]+"
#define RE_DEEPSEEK_LLM_PUNCT                                                                      \
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+"
/* " ?[^(\s|.,!?…。，、।۔،)]+" */
#define RE_BLOOM " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{0964}\\x{06D4}\\x{060C})]+"
#define RE_TEKKEN                                                                                  \
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?"  \
    "((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"       \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_GPT4O                                                                                   \
    "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+"                         \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?"            \
    "((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*"                                               \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|"                                  \
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

enum {
    SET_DEFAULT,
    SET_GPT2,
    SET_LLAMA3,
    SET_QWEN2,
    SET_DEEPSEEK_LLM,
    SET_DEEPSEEK_CODER,
    SET_DEEPSEEK3,
    SET_FALCON,
    SET_STARCODER,
    SET_BLOOM,
    SET_VIKING,
    SET_TEKKEN,
    SET_GPT4O,
    SET_COUNT
};

static const char *const pre_sets[SET_COUNT][PRE_MAX_REGEX] = {
    [SET_DEFAULT] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
    [SET_GPT2] = {RE_GPT2},
    [SET_LLAMA3] = {RE_LLAMA3},
    [SET_QWEN2] = {RE_QWEN2},
    [SET_DEEPSEEK_LLM] = {"[\r\n]", RE_DEEPSEEK_LLM_LETTERS, RE_DEEPSEEK_LLM_PUNCT, "\\s+$",
                          RE_DEEPSEEK_CJK, "\\p{N}+"},
    [SET_DEEPSEEK_CODER] = {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_DEEPSEEK_CJK, "\\p{N}"},
    [SET_DEEPSEEK3] = {"\\p{N}{1,3}",
                       "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
                       "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}"
                       "\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|"
                       "\\s+"},
    [SET_FALCON] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]"},
    [SET_STARCODER] = {"\\p{N}", RE_GPT2},
    [SET_BLOOM] = {RE_BLOOM},
    [SET_VIKING] = {RE_BLOOM, "\\p{N}"},
    [SET_TEKKEN] = {RE_TEKKEN},
    [SET_GPT4O] = {RE_GPT4O},
};

struct pre_name {
    const char *name;
    int set;
    bool ignore_merges;
    bool add_bos;
    bool clean_spaces;
};

/* tokenizer.ggml.pre values, with the flags the reference sets for each. */
static const struct pre_name pre_names[] = {
    {"default", SET_DEFAULT, false, false, true},
    {"llama3", SET_LLAMA3, true, true, true},
    {"llama-v3", SET_LLAMA3, true, true, true},
    {"llama-bpe", SET_LLAMA3, true, true, true},
    {"falcon3", SET_LLAMA3, true, true, true},
    {"pixtral", SET_LLAMA3, true, true, true},
    {"dbrx", SET_LLAMA3, false, false, true},
    {"smaug-bpe", SET_LLAMA3, false, false, true},
    {"deepseek-llm", SET_DEEPSEEK_LLM, false, false, false},
    {"deepseek-coder", SET_DEEPSEEK_CODER, false, false, false},
    {"deepseek-v3", SET_DEEPSEEK3, false, false, false},
    {"falcon", SET_FALCON, false, false, true},
    {"mpt", SET_GPT2, false, false, true},
    {"gpt-2", SET_GPT2, false, false, true},
    {"phi-2", SET_GPT2, false, false, true},
    {"jina-es", SET_GPT2, false, false, true},
    {"jina-de", SET_GPT2, false, false, true},
    {"jina-v1-en", SET_GPT2, false, false, true},
    {"jina-v2-es", SET_GPT2, false, false, true},
    {"jina-v2-de", SET_GPT2, false, false, true},
    {"jina-v2-code", SET_GPT2, false, false, true},
    {"roberta-bpe", SET_GPT2, false, false, true},
    {"gigachat", SET_GPT2, false, false, true},
    {"olmo", SET_GPT2, false, false, true},
    {"jais", SET_GPT2, false, false, true},
    {"starcoder", SET_STARCODER, false, false, true},
    {"refact", SET_STARCODER, false, false, true},
    {"command-r", SET_STARCODER, false, false, false},
    {"smollm", SET_STARCODER, false, false, false},
    {"codeshell", SET_STARCODER, false, false, true},
    {"exaone", SET_STARCODER, false, false, true},
    {"minerva-7b", SET_STARCODER, false, false, true},
    {"qwen2", SET_QWEN2, false, false, false},
    {"deepseek-r1-qwen", SET_QWEN2, false, false, false},
    {"megrez", SET_QWEN2, false, false, true},
    {"stablelm2", SET_QWEN2, false, false, true},
    {"poro-chat", SET_BLOOM, false, false, false},
    {"bloom", SET_BLOOM, false, false, true},
    {"gpt3-finnish", SET_BLOOM, false, false, true},
    {"viking", SET_VIKING, false, false, false},
    {"tekken", SET_TEKKEN, true, true, false},
    {"gpt-4o", SET_GPT4O, false, false, false},
    {"llama4", SET_GPT4O, false, false, false},
};

bool tok_pre_lookup(const char *name, size_t len, struct tok_pre_def *out) {
    for (size_t i = 0; i < sizeof(pre_names) / sizeof(pre_names[0]); i++) {
        const struct pre_name *p = &pre_names[i];
        if (strlen(p->name) == len && memcmp(p->name, name, len) == 0) {
            out->regex_set = p->set;
            out->ignore_merges = p->ignore_merges;
            out->add_bos = p->add_bos;
            out->clean_spaces = p->clean_spaces;
            return true;
        }
    }
    return false;
}

/* ---- UTF-8 and the GPT-2 byte map ----------------------------------------------- */

size_t tok_utf8_len(uint8_t lead) {
    static const uint8_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[lead >> 4];
}

/* Printable bytes stand for themselves; the other 68 map to U+0100.. in byte order. */
static bool byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

/* The 68 others, in byte order: 0x00-0x20 (33), 0x7F-0xA0 (34), 0xAD (1). */
static uint32_t byte_to_cp(uint8_t b) {
    if (byte_is_printable(b))
        return b;
    if (b <= 0x20)
        return 256u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 256u + 33u + (uint32_t)(b - 0x7F);
    return 256u + 67u; /* 0xAD */
}

size_t tok_byte_encode(uint8_t b, char out[2]) {
    uint32_t cp = byte_to_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

int tok_byte_decode(uint32_t cp) {
    if (cp < 256)
        return byte_is_printable((int)cp) ? (int)cp : -1;
    if (cp < 256 + 33)
        return (int)(cp - 256);
    if (cp < 256 + 67)
        return (int)(0x7F + cp - 256 - 33);
    return cp == 256 + 67 ? 0xAD : -1;
}

/* Length of the valid UTF-8 sequence at s (strict: no overlongs, surrogates or code
 * points above U+10FFFF), or 0 if the byte at s does not start one. */
static size_t utf8_valid_len(const uint8_t *s, size_t n) {
    uint8_t b = s[0];
    if (b < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        if (b == 0xE0)
            lo = 0xA0;
        if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    }
    return need;
}

size_t tok_utf8_char_len(const char *s, size_t n) {
    size_t k = utf8_valid_len((const uint8_t *)s, n);
    return k ? k : 1;
}

/* ---- Compiling ------------------------------------------------------------------ */

struct tok_pre {
    int n_re;
    pcre2_code *re[PRE_MAX_REGEX];
    pcre2_general_context *gctx;
};

/* The Unicode White_Space set, as the reference's tables define \s. */
#define WS_ITEMS                                                                                   \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"    \
    "\\x{205F}\\x{3000}"

static void *pcre_alloc(size_t n, void *user) {
    (void)user;
    return mc_malloc(n);
}

static void pcre_free(void *p, void *user) {
    (void)user;
    mc_free(p);
}

/* Copies pattern with \s and \S replaced by explicit White_Space classes. Returns an
 * mc_malloc'd string or NULL when out of memory. */
static char *rewrite_space_classes(const char *pattern) {
    size_t n = strlen(pattern), ws = strlen(WS_ITEMS);
    size_t cap = n * (ws + 4) + 1;
    char *out = mc_malloc(cap);
    if (!out)
        return NULL;
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < n) {
            char e = pattern[++i];
            if (e == 's' || (e == 'S' && !in_class)) {
                if (!in_class)
                    out[o++] = '[';
                if (!in_class && e == 'S')
                    out[o++] = '^';
                memcpy(out + o, WS_ITEMS, ws);
                o += ws;
                if (!in_class)
                    out[o++] = ']';
            } else {
                out[o++] = c;
                out[o++] = e;
            }
            continue;
        }
        if (c == '[' && !in_class)
            in_class = true;
        else if (c == ']' && in_class)
            in_class = false;
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

int tok_pre_create(int regex_set, struct tok_pre **out, struct mc_err *err) {
    *out = NULL;
    if (regex_set < 0 || regex_set >= SET_COUNT)
        return mc_err_set(err, MC_EINVAL, "pre-tokenizer set %d out of range", regex_set);
    struct tok_pre *p = mc_calloc(1, sizeof(*p));
    if (!p)
        return mc_err_set(err, MC_ENOMEM, "out of memory for the pre-tokenizer");
    p->gctx = pcre2_general_context_create(pcre_alloc, pcre_free, NULL);
    if (!p->gctx) {
        mc_free(p);
        return mc_err_set(err, MC_ENOMEM, "out of memory for the pre-tokenizer");
    }
    pcre2_compile_context *cctx = pcre2_compile_context_create(p->gctx);
    if (!cctx) {
        tok_pre_free(p);
        return mc_err_set(err, MC_ENOMEM, "out of memory for the pre-tokenizer");
    }

    int rc = MC_OK;
    for (int i = 0; i < PRE_MAX_REGEX && pre_sets[regex_set][i] && rc == MC_OK; i++) {
        char *pat = rewrite_space_classes(pre_sets[regex_set][i]);
        if (!pat) {
            rc = mc_err_set(err, MC_ENOMEM, "out of memory for the pre-tokenizer");
            break;
        }
        int ecode;
        PCRE2_SIZE eoff;
        uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_DOLLAR_ENDONLY | PCRE2_NO_UTF_CHECK;
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, opts, &ecode, &eoff, cctx);
        mc_free(pat);
        if (!re) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(ecode, msg, sizeof(msg));
            rc = mc_err_set(err, MC_EINTERNAL, "pre-tokenizer regex %d of set %d: %s at %zu", i,
                            regex_set, (const char *)msg, (size_t)eoff);
            break;
        }
        /* JIT is an optimisation only: matching falls back to the interpreter. */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        p->re[p->n_re++] = re;
    }
    pcre2_compile_context_free(cctx);
    if (rc != MC_OK) {
        tok_pre_free(p);
        return rc;
    }
    *out = p;
    return MC_OK;
}

void tok_pre_free(struct tok_pre *p) {
    if (!p)
        return;
    for (int i = 0; i < p->n_re; i++)
        pcre2_code_free(p->re[i]);
    pcre2_general_context_free(p->gctx);
    mc_free(p);
}

/* ---- Splitting ------------------------------------------------------------------ */

/* The text as units (one code point, or one invalid byte) and its sanitised copy. */
struct units {
    size_t n;
    size_t *src_off; /* (n + 1) byte offset of unit i in the input */
    size_t *san_off; /* (n + 1) byte offset of unit i in san */
    char *san;       /* valid UTF-8: invalid input bytes replaced by U+FFFD */
};

static void units_free(struct units *u) {
    mc_free(u->src_off);
    mc_free(u->san_off);
    mc_free(u->san);
}

static int units_build(const char *text, size_t len, struct units *u, struct mc_err *err) {
    memset(u, 0, sizeof(*u));
    u->src_off = mc_malloc((len + 1) * sizeof(size_t));
    u->san_off = mc_malloc((len + 1) * sizeof(size_t));
    u->san = mc_malloc(len * 3 + 1);
    if (!u->src_off || !u->san_off || !u->san) {
        units_free(u);
        return mc_err_set(err, MC_ENOMEM, "out of memory splitting %zu bytes of text", len);
    }
    size_t i = 0, s = 0, n = 0;
    while (i < len) {
        size_t k = utf8_valid_len((const uint8_t *)text + i, len - i);
        u->src_off[n] = i;
        u->san_off[n] = s;
        if (k == 0) {
            memcpy(u->san + s, "\xEF\xBF\xBD", 3);
            s += 3;
            i += 1;
        } else {
            memcpy(u->san + s, text + i, k);
            s += k;
            i += k;
        }
        n++;
    }
    u->src_off[n] = len;
    u->san_off[n] = s;
    u->san[s] = '\0';
    u->n = n;
    return MC_OK;
}

/* The unit that starts at sanitised offset off, searched within units [lo, hi]. */
static size_t unit_at(const struct units *u, size_t lo, size_t hi, size_t off) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (u->san_off[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* A piece as a half-open range of units. */
struct upiece {
    size_t a, b;
};

/* Runs one regex over piece [a, b) and appends the resulting pieces to out. */
static int split_piece(const pcre2_code *re, pcre2_match_data *md, const struct units *u, size_t a,
                       size_t b, struct upiece *out, size_t *n_out) {
    PCRE2_SPTR subj = (PCRE2_SPTR)(u->san + u->san_off[a]);
    size_t base = u->san_off[a], slen = u->san_off[b] - base;
    size_t pos = 0, prev_end = 0;

    while (pos < slen) {
        int rc = pcre2_match(re, subj, slen, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH)
            rc = pcre2_match(re, subj, slen, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
        /* Any error other than no-match (a resource limit) ends the matching in this
         * piece; the rest stays one piece rather than failing the whole call. */
        if (rc < 0)
            break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* Empty match: step over one character and look again. */
            size_t next = unit_at(u, a, b, base + ms + 1);
            pos = u->san_off[next] - base;
            continue;
        }
        if (ms > prev_end) {
            out[*n_out].a = unit_at(u, a, b, base + prev_end);
            out[*n_out].b = unit_at(u, a, b, base + ms);
            (*n_out)++;
        }
        out[*n_out].a = unit_at(u, a, b, base + ms);
        out[*n_out].b = unit_at(u, a, b, base + me);
        (*n_out)++;
        prev_end = me;
        pos = me;
    }
    if (prev_end < slen) {
        out[*n_out].a = unit_at(u, a, b, base + prev_end);
        out[*n_out].b = b;
        (*n_out)++;
    }
    return MC_OK;
}

int tok_pre_split(const struct tok_pre *p, const char *text, size_t len, struct tok_span **spans,
                  size_t *n_spans, struct mc_err *err) {
    *spans = NULL;
    *n_spans = 0;
    if (len == 0)
        return MC_OK;

    struct units u;
    int rc = units_build(text, len, &u, err);
    if (rc != MC_OK)
        return rc;

    /* Two ping-pong piece lists; a split never yields more pieces than units. */
    struct upiece *cur = mc_malloc((u.n + 1) * sizeof(*cur));
    struct upiece *nxt = mc_malloc((u.n + 1) * sizeof(*nxt));
    pcre2_match_data *md = pcre2_match_data_create(8, p->gctx);
    if (!cur || !nxt || !md) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory splitting %zu bytes of text", len);
        goto out_free;
    }
    size_t n_cur = 1;
    cur[0].a = 0;
    cur[0].b = u.n;

    for (int r = 0; r < p->n_re; r++) {
        size_t n_nxt = 0;
        for (size_t i = 0; i < n_cur; i++)
            split_piece(p->re[r], md, &u, cur[i].a, cur[i].b, nxt, &n_nxt);
        struct upiece *t = cur;
        cur = nxt;
        nxt = t;
        n_cur = n_nxt;
    }

    struct tok_span *sp = mc_malloc(n_cur * sizeof(*sp) + 1);
    if (!sp) {
        rc = mc_err_set(err, MC_ENOMEM, "out of memory splitting %zu bytes of text", len);
        goto out_free;
    }
    for (size_t i = 0; i < n_cur; i++) {
        sp[i].off = u.src_off[cur[i].a];
        sp[i].len = u.src_off[cur[i].b] - sp[i].off;
    }
    *spans = sp;
    *n_spans = n_cur;

out_free:
    pcre2_match_data_free(md);
    mc_free(cur);
    mc_free(nxt);
    units_free(&u);
    return rc;
}
