/* The q/k/v projection's bias and rotate-half RoPE, in place, one block per token.
 *
 * `qkv` is `[tokens, ld]` with `heads` heads of `hd` values each: the first `rope_heads` (query
 * and key heads) are rotated at the token's position `pos[t]` with the `[positions, hd/2]`
 * tables `cos`/`sin`, the rest (value heads) only get the bias. Rounding as Hugging Face's
 * `q * cos + rotate_half(q) * sin` in the model dtype. */
#define ROPE_THREADS 256

template <class T>
__device__ __forceinline__ void bias_rope(u16* __restrict__ qkv, const u16* __restrict__ bias,
                                          const u16* __restrict__ cos, const u16* __restrict__ sin,
                                          const u32* __restrict__ pos, u32 ld, u32 heads, u32 rope_heads,
                                          u32 hd) {
    const u32 half = hd / 2;
    u16* row = qkv + (size_t)blockIdx.x * ld;
    const u16* c = cos + (size_t)pos[blockIdx.x] * half;
    const u16* s = sin + (size_t)pos[blockIdx.x] * half;
    for (u32 i = threadIdx.x; i < heads * half; i += ROPE_THREADS) {
        const u32 head = i / half, j = i - head * half;
        const u32 a = head * hd + j, b = a + half;
        const float x1 = rnd<T>(T::load(row[a]) + T::load(bias[a]));
        const float x2 = rnd<T>(T::load(row[b]) + T::load(bias[b]));
        if (head < rope_heads) {
            const float cc = T::load(c[j]), ss = T::load(s[j]);
            row[a] = T::store(rnd<T>(x1 * cc) + rnd<T>(-x2 * ss));
            row[b] = T::store(rnd<T>(x2 * cc) + rnd<T>(x1 * ss));
        } else {
            row[a] = T::store(x1);
            row[b] = T::store(x2);
        }
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
