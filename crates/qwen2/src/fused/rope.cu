/* The q/k/v projection's bias and rotate-half RoPE, in place, one block per token.
 *
 * `qkv` is `[tokens, ld]` with `heads` heads of `hd` values each: the first `rope_heads` (query
 * and key heads) are rotated at the token's position `pos[t]` with the `[positions, hd/2]`
 * tables `cos`/`sin`, the rest (value heads) only get the bias. Rounding as Hugging Face's
 * `q * cos + rotate_half(q) * sin` in the model dtype. */
#define ROPE_THREADS 128

template <class T>
__device__ __forceinline__ void bias_rope(u16* __restrict__ qkv, const u16* __restrict__ bias,
                                          const u16* __restrict__ cos, const u16* __restrict__ sin,
                                          const u32* __restrict__ pos, u32 ld, u32 heads, u32 rope_heads,
                                          u32 hd) {
    /* Each step takes 8 values of a head's first half and the 8 they pair with in its second
     * half (16-byte accesses; hd % 16 == 0). */
    const u32 half = hd / 2, per_head = half / 8;
    u16* row = qkv + (size_t)blockIdx.x * ld;
    const u16* c = cos + (size_t)pos[blockIdx.x] * half;
    const u16* s = sin + (size_t)pos[blockIdx.x] * half;
    for (u32 i = threadIdx.x; i < heads * per_head; i += blockDim.x) {
        const u32 head = i / per_head, j = (i - head * per_head) * 8;
        const u32 a = head * hd + j, b = a + half;
        Vec8 xa = *(const Vec8*)(row + a), xb = *(const Vec8*)(row + b);
        const Vec8 ba = *(const Vec8*)(bias + a), bb = *(const Vec8*)(bias + b);
        if (head < rope_heads) {
            const Vec8 cv = *(const Vec8*)(c + j), sv = *(const Vec8*)(s + j);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float x1 = rnd<T>(T::load(xa.v[k]) + T::load(ba.v[k]));
                const float x2 = rnd<T>(T::load(xb.v[k]) + T::load(bb.v[k]));
                const float cc = T::load(cv.v[k]), ss = T::load(sv.v[k]);
                xa.v[k] = T::store(rnd<T>(x1 * cc) + rnd<T>(-x2 * ss));
                xb.v[k] = T::store(rnd<T>(x2 * cc) + rnd<T>(x1 * ss));
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                xa.v[k] = T::store(T::load(xa.v[k]) + T::load(ba.v[k]));
                xb.v[k] = T::store(T::load(xb.v[k]) + T::load(bb.v[k]));
            }
        }
        *(Vec8*)(row + a) = xa;
        *(Vec8*)(row + b) = xb;
    }
}

#define BIAS_ROPE(NAME, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(ROPE_THREADS) NAME(u16* qkv, const u16* bias, const u16* cos, \
                                                                    const u16* sin, const u32* pos, u32 ld,  \
                                                                    u32 heads, u32 rope_heads, u32 hd) {     \
        bias_rope<T>(qkv, bias, cos, sin, pos, ld, heads, rope_heads, hd);                              \
    }
BIAS_ROPE(bias_rope_f16, F16)
BIAS_ROPE(bias_rope_bf16, BF16)
