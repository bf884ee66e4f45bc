// Runs the CUDA kernels' source on the host, thread by thread (the kernels use no shared memory
// and no barriers), on random cases, and writes each case's inputs and output caches for the
// Rust reference to check (tests/cuda_host.rs, which also writes k_host.cpp: the kernel source
// with its inline PTX replaced by host code). Usage: harness OUT.bin CASES SEED [pattern]; with
// `pattern`, the pattern kernels run instead, laid out as the backend launches them.
#include "mock_host.h"
#include "k_host.cpp"
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <string>

dim3 blockIdx, blockDim, gridDim, threadIdx;

typedef void (*Kernel)(const char*, const char*, char*, char*, const i64*, const float*, const float*, Params);

#define K(d, e, v) reshape_and_cache_flash_##d##_##e##v
#define ROW(e, v) {K(half, e, v), K(bfloat16, e, v), K(float, e, v)}
// [variant 0 vector, 1 x1, 2 scalar][encoding][dtype]
static Kernel table[3][5][3] = {
    {ROW(auto, ), ROW(fp8, ), ROW(fp8_e5m2, ), ROW(fp8_per_head, ), ROW(fp8_e5m2_per_head, )},
    {ROW(auto, _x1), ROW(fp8, _x1), ROW(fp8_e5m2, _x1), ROW(fp8_per_head, _x1), ROW(fp8_e5m2_per_head, _x1)},
    {ROW(auto, _scalar), ROW(fp8, _scalar), ROW(fp8_e5m2, _scalar), ROW(fp8_per_head, _scalar), ROW(fp8_e5m2_per_head, _scalar)},
};

// The pattern kernels (--ceiling pattern): [0 vector, 1 scalar][0 auto, 1 fp8][dtype].
#define P(d, c, v) pattern_##d##_##c##v
#define PROW(c, v) {P(half, c, v), P(bfloat16, c, v), P(float, c, v)}
static Kernel patterns[2][2][3] = {
    {PROW(auto, ), PROW(fp8, )},
    {PROW(auto, _scalar), PROW(fp8, _scalar)},
};

static FastDiv fastdiv(u32 divisor) {
    u32 d = divisor ? divisor : 1;
    u32 shift = 0;
    while ((1ull << shift) < d) shift++;
    unsigned __int128 m = ((unsigned __int128)1 << 32) * (((unsigned __int128)1 << shift) - d) / d + 1;
    FastDiv f = {d, (u32)m, shift, 0};
    return f;
}

static unsigned long long rng_state = 88172645463325252ull;
static unsigned long long rnd() { rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17; return rng_state; }
static double unif() { return (rnd() >> 11) * (1.0 / 9007199254740992.0); }
static float normal() { double u = unif() + 1e-12, v = unif(); return (float)(std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v)); }

static void put_elem(std::vector<char>& buf, int dtype, size_t i, float x, bool raw, unsigned rawbits) {
    if (dtype == 2) { unsigned b = raw ? rawbits : __float_as_uint(x); memcpy(&buf[i * 4], &b, 4); return; }
    unsigned short h;
    if (raw) h = (unsigned short)rawbits;
    else if (dtype == 1) { unsigned b = __float_as_uint(x); h = (unsigned short)(b >> 16); }  // truncation is fine for test data
    else {
        // float -> half, by truncation of a value in half's normal range (test data only).
        float a = std::fabs(x); unsigned sign = x < 0 ? 0x8000 : 0;
        if (!(a == a)) h = 0x7e00; else if (a >= 65504.0f) h = sign | 0x7bff; else if (a < 6.1035156e-05f) h = sign | (unsigned)(a / 5.9604644775390625e-08f);
        else { unsigned b = __float_as_uint(a); h = sign | (((b >> 23) - 112) << 10) | ((b >> 13) & 0x3ff); }
    }
    memcpy(&buf[i * 2], &h, 2);
}

static float special(int k) {
    static const float s[] = {NAN, -NAN, INFINITY, -INFINITY, 1.0e4f, -3.0e4f, 1.0e-6f, -2.0e-8f, 0.0f, -0.0f, 60000.0f, 5.0e-5f};
    return s[k % 12];
}

static void wr(FILE* f, const void* p, size_t n) { fwrite(p, 1, n, f); }
static void wr64(FILE* f, long long v) { wr(f, &v, 8); }

int main(int argc, char** argv) {
    const char* out = argc > 1 ? argv[1] : "cases.bin";
    int ncases = argc > 2 ? atoi(argv[2]) : 400;
    if (argc > 3) rng_state ^= strtoull(argv[3], 0, 10) * 0x9e3779b97f4a7c15ull;
    const bool pattern = argc > 4 && std::string(argv[4]) == "pattern";
    FILE* f = fopen(out, "wb");
    wr64(f, ncases);
    for (int c = 0; c < ncases; ++c) {
        int dtype = rnd() % 3;
        int enc = rnd() % 5;  // 0 auto, 1 e4m3, 2 e5m2, 3 e4m3 per head, 4 e5m2 per head
        int layout = rnd() % 2;
        int variant = rnd() % 3;
        bool fp8 = enc != 0;
        long long H = 1 + rnd() % 5;
        long long D = fp8 ? 16 * (1 + rnd() % 4) : (variant == 2 ? 1 + rnd() % 40 : 8 * (1 + rnd() % 8));
        long long B = 1 + rnd() % 8;
        long long T = 1 + rnd() % 40;
        long long NB = (2 * T + B - 1) / B + 1 + rnd() % 3;
        long long slots_n = NB * B;
        // Input strides: contiguous, fused (Q query heads), or gaps.
        int strides_kind = rnd() % 3;
        long long head_stride = D, token_stride = H * D;
        if (strides_kind == 1) { long long Q = rnd() % 5; token_stride = (Q + 2 * H) * D; }
        if (strides_kind == 2) { head_stride = D + rnd() % 4; token_stride = (H - 1) * head_stride + D + rnd() % 6; }
        int in_size = dtype == 2 ? 4 : 2;
        long long span = (T - 1) * token_stride + (H - 1) * head_stride + D;
        std::vector<char> key(span * in_size + 64), value(span * in_size + 64);
        for (int t = 0; t < 2; ++t) {
            std::vector<char>& buf = t ? value : key;
            for (long long i = 0; i < span; ++i) {
                int r = rnd() % 40;
                if (r == 0) put_elem(buf, dtype, i, special(rnd()), false, 0);
                else if (r == 1) put_elem(buf, dtype, i, 0, true, (unsigned)rnd());
                else put_elem(buf, dtype, i, normal() * std::ldexp(1.0f, (int)(rnd() % 20) - 10), false, 0);
            }
        }
        // Slots: distinct, some padding.
        std::vector<long long> perm(slots_n);
        for (long long i = 0; i < slots_n; ++i) perm[i] = i;
        for (long long i = slots_n - 1; i > 0; --i) { long long j = rnd() % (i + 1); std::swap(perm[i], perm[j]); }
        std::vector<i64> slots(T);
        for (long long t = 0; t < T; ++t) slots[t] = (rnd() % 8 == 0) ? -1 : perm[t];
        // Scales: per head or per tensor; mostly in the fast range, sometimes outside.
        bool per_head = enc >= 3;
        int nscales = per_head ? H : 1;
        std::vector<float> ks(nscales), vs(nscales);
        for (int t = 0; t < 2; ++t) {
            std::vector<float>& sc = t ? vs : ks;
            for (int h = 0; h < nscales; ++h) {
                int r = rnd() % 12;
                static const float odd[] = {0.0f, -0.5f, INFINITY, NAN, -NAN, 1.0e-30f, 3.0e38f, 1.0e-40f};
                if (r == 0) sc[h] = odd[rnd() % 8];
                else sc[h] = (float)(1.0 + unif()) * std::ldexp(1.0f, (int)(rnd() % 6) - 8);
            }
        }
        std::vector<float> dev_scales;
        for (float x : ks) dev_scales.push_back(x);
        for (float x : vs) dev_scales.push_back(x);
        int cache_size = fp8 ? 1 : in_size;
        long long cache_elems = slots_n * H * D;
        std::vector<char> kc(cache_elems * cache_size + 64), vc(cache_elems * cache_size + 64);
        for (auto& b : kc) b = (char)rnd();
        for (auto& b : vc) b = (char)rnd();
        std::vector<char> kc0 = kc, vc0 = vc;
        // Launch shape, as src/backend/cuda/shape.rs plans it (threads and items per thread
        // drawn, as forced launches do).
        bool vector_ok = variant != 2;
        long long epi = !vector_ok ? 1 : (fp8 ? 16 : 16 / in_size);
        long long cs_block = layout == 0 ? B * H * D : H * B * D;
        long long cs_slot = layout == 0 ? H * D : D;
        long long cs_head = layout == 0 ? D : B * D;
        if (vector_ok) {
            bool aligned = D % epi == 0 && (token_stride * in_size) % 16 == 0 && (head_stride * in_size) % 16 == 0
                && (cs_block * cache_size) % 16 == 0 && (cs_slot * cache_size) % 16 == 0 && (cs_head * cache_size) % 16 == 0;
            if (!aligned) { variant = 2; epi = 1; }
        }
        u32 threads = 32 * (1 + rnd() % 8);
        u32 ipt = variant == 1 ? 1 : 1 + rnd() % 4;
        long long iph = D / epi, ipkv = H * iph, ipt_tok = 2 * ipkv;
        long long per_pass = threads * ipt;
        long long tpb = ipt_tok >= per_pass ? 1 : std::min(per_pass / ipt_tok, T);
        if (tpb == 1 && ipt_tok <= per_pass) ipt = (u32)((ipt_tok + threads - 1) / threads);
        per_pass = threads * ipt;
        long long segments = (tpb * ipt_tok + per_pass - 1) / per_pass;
        long long groups = (T + tpb - 1) / tpb;
        long long grid = groups * segments;
        // Sometimes a grid smaller than the work (the kernels loop).
        if (rnd() % 4 == 0) grid = 1 + grid / 3;
        Params p;
        memset(&p, 0, sizeof p);
        p.num_tokens = T; p.num_slots = slots_n;
        p.key_token_stride = token_stride; p.key_head_stride = head_stride;
        p.value_token_stride = token_stride; p.value_head_stride = head_stride;
        p.cache_block_stride = cs_block; p.cache_slot_stride = cs_slot; p.cache_head_stride = cs_head;
        p.token_groups = groups;
        p.items_per_token = fastdiv(ipt_tok); p.items_per_head = fastdiv(iph);
        p.block_size = fastdiv(B); p.segments = fastdiv(segments);
        p.items_per_kv = ipkv; p.tokens_per_block = tpb; p.items_per_thread = ipt;
        Kernel k = table[variant][enc][dtype];
        if (pattern) {
            // One item per thread and load, blockDim.x * items_per_thread consecutive items a
            // block (src/backend/cuda.rs), sometimes fewer blocks than the work (it loops).
            k = patterns[variant == 2][fp8][dtype];
            ipt = 1 + rnd() % 4;
            p.items_per_thread = ipt;
            grid = (T * ipt_tok + threads * ipt - 1) / (threads * ipt);
            if (rnd() % 4 == 0) grid = 1 + grid / 3;
        }
        blockDim.x = threads; gridDim.x = grid;
        for (long long b = 0; b < grid; ++b) {
            blockIdx.x = b;
            for (u32 t = 0; t < threads; ++t) {
                threadIdx.x = t;
                k(key.data(), value.data(), kc.data(), vc.data(), slots.data(), dev_scales.data(), dev_scales.data() + nscales, p);
            }
        }
        long long hdr[] = {dtype, enc, layout, T, H, D, B, NB, token_stride, head_stride, variant, threads, ipt, grid};
        for (long long v : hdr) wr64(f, v);
        wr(f, key.data(), span * in_size); wr(f, value.data(), span * in_size);
        wr(f, slots.data(), 8 * T);
        wr(f, ks.data(), 4 * nscales); wr(f, vs.data(), 4 * nscales);
        wr(f, kc0.data(), cache_elems * cache_size); wr(f, vc0.data(), cache_elems * cache_size);
        wr(f, kc.data(), cache_elems * cache_size); wr(f, vc.data(), cache_elems * cache_size);
    }
    fclose(f);
    return 0;
}
