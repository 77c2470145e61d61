#define EMBED_THREADS 256

/* Token embeddings: `x[t] = table[ids[t]]`, rows of `hidden` 16-bit values (`hidden % 8 == 0`). */
extern "C" __global__ void __launch_bounds__(EMBED_THREADS) embed_rows(const u16* __restrict__ table, const u32* __restrict__ ids,
                                                                      u16* __restrict__ x, u32 hidden) {
    const Vec8* src = (const Vec8*)(table + (size_t)ids[blockIdx.x] * hidden);
    Vec8* dst = (Vec8*)(x + (size_t)blockIdx.x * hidden);
    for (u32 i = threadIdx.x; i < hidden / 8; i += blockDim.x) dst[i] = src[i];
}
