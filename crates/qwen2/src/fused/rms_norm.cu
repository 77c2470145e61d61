/* RMSNorm, one block per row, rounded as Hugging Face's Qwen2RMSNorm: normalised in f32,
 * rounded to the model dtype, then scaled by the weight (in the model dtype).
 *
 * `h[r] = w * norm(x[src])` with `src = rows[r]` when `rows` is set (the final norm, on each
 * row's last token only), else `src = r`. `hidden % 8 == 0`. (The residual adds before each norm
 * are done by the preceding products' epilogues.) */
#define NORM_THREADS 256

template <class T>
__device__ __forceinline__ void rms_norm(const u16* __restrict__ x, const u16* __restrict__ w,
                                         u16* __restrict__ h, const u32* __restrict__ rows, u32 hidden,
                                         float eps) {
    __shared__ float sh[32];
    const u32 dst = blockIdx.x;
    const u16* xr = x + (size_t)(rows ? rows[dst] : dst) * hidden;
    float ss = 0.f;
    for (u32 i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
        const Vec8 a = *(const Vec8*)(xr + i);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float f = T::load(a.v[k]);
            ss += f * f;
        }
    }
    const float rstd = rsqrtf(block_sum(ss, sh) / (float)hidden + eps);
    u16* hr = h + (size_t)dst * hidden;
    for (u32 i = threadIdx.x * 8; i < hidden; i += blockDim.x * 8) {
        const Vec8 a = *(const Vec8*)(xr + i), wv = *(const Vec8*)(w + i);
        Vec8 o;
#pragma unroll
        for (int k = 0; k < 8; ++k) o.v[k] = T::store(T::load(wv.v[k]) * rnd<T>(T::load(a.v[k]) * rstd));
        *(Vec8*)(hr + i) = o;
    }
}

#define RMS_NORM(NAME, T)                                                                               \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS) NAME(const u16* x, const u16* w, u16* h,   \
                                                                    const u32* rows, u32 hidden, float eps) { \
        rms_norm<T>(x, w, h, rows, hidden, eps);                                                        \
    }
RMS_NORM(rms_norm_f16, F16)
RMS_NORM(rms_norm_bf16, BF16)
