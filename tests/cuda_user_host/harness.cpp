// Runs a user's CUDA kernel on the host, thread by thread, for tests/cuda_user_host.rs: the
// program the tool gives NVRTC (kernel.cu: paged_kv.h, then the user's file) compiled as C++
// with mock_host.h (tests/cuda_host) standing in for the CUDA built-ins. Works for kernels
// without shared memory or barriers, as the example is.
// Usage: harness IN.bin OUT.bin, where IN holds the PagedKvParams (pointers ignored), the
// block count and block size (u64 each), then key, value, slot mapping, k scales, v scales,
// key cache and value cache, each as a u64 byte count and the bytes. OUT gets both caches.
#include "mock_host.h"
#include "kernel.cu"
#include <cstdio>
#include <vector>

dim3 blockIdx, blockDim, gridDim, threadIdx;

static unsigned long long read_u64(FILE* f) {
    unsigned long long v = 0;
    if (fread(&v, 8, 1, f) != 1) { fprintf(stderr, "short input\n"); exit(2); }
    return v;
}

static std::vector<char> read_part(FILE* f) {
    std::vector<char> bytes(read_u64(f) + 16);
    const size_t n = bytes.size() - 16;
    if (n && fread(bytes.data(), 1, n, f) != n) { fprintf(stderr, "short input\n"); exit(2); }
    return bytes;
}

int main(int argc, char** argv) {
    if (argc != 3) return 2;
    FILE* in = fopen(argv[1], "rb");
    if (!in) return 2;
    PagedKvParams p;
    if (fread(&p, sizeof p, 1, in) != 1) return 2;
    const unsigned long long blocks = read_u64(in), block = read_u64(in);
    std::vector<char> key = read_part(in), value = read_part(in), slots = read_part(in),
                      k_scale = read_part(in), v_scale = read_part(in),
                      key_cache = read_part(in), value_cache = read_part(in);
    const size_t cache_bytes = key_cache.size() - 16;
    fclose(in);
    p.key = key.data();
    p.value = value.data();
    p.slot_mapping = (const pkv_i64*)slots.data();
    p.k_scale = (const float*)k_scale.data();
    p.v_scale = (const float*)v_scale.data();
    p.key_cache = key_cache.data();
    p.value_cache = value_cache.data();
    gridDim = {(unsigned)blocks, 1, 1};
    blockDim = {(unsigned)block, 1, 1};
    for (unsigned long long b = 0; b < blocks; ++b) {
        for (unsigned long long t = 0; t < block; ++t) {
            blockIdx = {(unsigned)b, 0, 0};
            threadIdx = {(unsigned)t, 0, 0};
            PAGED_KV_ENTRY(p);
        }
    }
    FILE* out = fopen(argv[2], "wb");
    if (!out) return 2;
    fwrite(key_cache.data(), 1, cache_bytes, out);
    fwrite(value_cache.data(), 1, cache_bytes, out);
    fclose(out);
    return 0;
}
