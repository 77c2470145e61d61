#define THREADS 256
__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float ld_f32(float x) { return x; }
__device__ __forceinline__ float st_f32(float x) { return x; }
__device__ __forceinline__ float ld_bf16(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short st_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
__device__ __forceinline__ float ld_f16(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ unsigned short st_f16(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }

__device__ float block_reduce(float v, bool is_max, float* sh) {
    for (int o = 16; o > 0; o >>= 1) { float w = __shfl_xor_sync(0xffffffffu, v, o); v = is_max ? fmaxf(v, w) : v + w; }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (THREADS >> 5) ? sh[lane] : (is_max ? neg_inf() : 0.f);
        for (int o = 16; o > 0; o >>= 1) { float w = __shfl_xor_sync(0xffffffffu, v, o); v = is_max ? fmaxf(v, w) : v + w; }
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

/* Row r of `rows` rows of `len` scores holds query q0 + r % chunk: it sees keys 0..=q0 + r % chunk. */
#define CAUSAL_SOFTMAX(NAME, T, LD, ST) \
extern "C" __global__ void __launch_bounds__(THREADS) NAME(T* s, unsigned int rows, unsigned int len, unsigned int chunk, unsigned int q0) { \
    __shared__ float sh[32]; \
    for (unsigned int row = blockIdx.x; row < rows; row += gridDim.x) { \
        T* p = s + (size_t)row * len; \
        unsigned int last = q0 + row % chunk; \
        float m = neg_inf(); \
        for (unsigned int j = threadIdx.x; j <= last; j += THREADS) m = fmaxf(m, LD(p[j])); \
        m = block_reduce(m, true, sh); \
        float sum = 0.f; \
        for (unsigned int j = threadIdx.x; j <= last; j += THREADS) sum += expf(LD(p[j]) - m); \
        sum = block_reduce(sum, false, sh); \
        float inv = 1.f / sum; \
        for (unsigned int j = threadIdx.x; j < len; j += THREADS) p[j] = ST(j <= last ? expf(LD(p[j]) - m) * inv : 0.f); \
    } \
}
CAUSAL_SOFTMAX(causal_softmax_f32, float, ld_f32, st_f32)
CAUSAL_SOFTMAX(causal_softmax_f16, unsigned short, ld_f16, st_f16)
CAUSAL_SOFTMAX(causal_softmax_bf16, unsigned short, ld_bf16, st_bf16)
