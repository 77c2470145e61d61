/* RMSNorm with the residual add fused in, one block per token row (Hugging Face's rounding:
 * the sum is stored in the model dtype, normalised in f32, rounded, then scaled by the weight).
 *
 * `add_rms_norm`: for each row r, if `delta` is set, `x[r] += delta[r]` (in place); then
 * `h[r] = w * norm(x[r])`. `gather_add_rms_norm`: `h[r] = w * norm(x[rows[r]] + delta[rows[r]])`
 * without writing `x` (the final norm, on each row's last token only). `hidden % 8 == 0`. */
#define NORM_THREADS 256

template <class T>
__device__ __forceinline__ void add_rms_norm(u16* __restrict__ x, const u16* __restrict__ delta,
                                             const u16* __restrict__ w, u16* __restrict__ h,
                                             const u32* __restrict__ rows, u32 hidden, float eps) {
    __shared__ float sh[32];
    const u32 dst = blockIdx.x;
    const u32 src = rows ? rows[dst] : dst;
    u16* xr = x + (size_t)src * hidden;
    const u16* dr = delta ? delta + (size_t)src * hidden : 0;
    const bool write_x = dr && !rows;
    float ss = 0.f;
    for (u32 i = threadIdx.x * 8; i < hidden; i += NORM_THREADS * 8) {
        Vec8 a = *(const Vec8*)(xr + i);
        if (dr) {
            const Vec8 d = *(const Vec8*)(dr + i);
#pragma unroll
            for (int k = 0; k < 8; ++k) a.v[k] = T::store(T::load(a.v[k]) + T::load(d.v[k]));
            if (write_x) *(Vec8*)(xr + i) = a;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float f = T::load(a.v[k]);
            ss += f * f;
        }
    }
    const float rstd = rsqrtf(block_sum(ss, sh) / (float)hidden + eps);
    u16* hr = h + (size_t)dst * hidden;
    for (u32 i = threadIdx.x * 8; i < hidden; i += NORM_THREADS * 8) {
        Vec8 a = *(const Vec8*)(xr + i); /* this thread's own write, if any */
        if (dr && !write_x) {
            const Vec8 d = *(const Vec8*)(dr + i);
#pragma unroll
            for (int k = 0; k < 8; ++k) a.v[k] = T::store(T::load(a.v[k]) + T::load(d.v[k]));
        }
        const Vec8 wv = *(const Vec8*)(w + i);
        Vec8 o;
#pragma unroll
        for (int k = 0; k < 8; ++k) o.v[k] = T::store(T::load(wv.v[k]) * rnd<T>(T::load(a.v[k]) * rstd));
        *(Vec8*)(hr + i) = o;
    }
}

#define ADD_RMS_NORM(NAME, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS) NAME(u16* x, const u16* delta, const u16* w, \
                                                                    u16* h, const u32* rows, u32 hidden,  \
                                                                    float eps) {                          \
        add_rms_norm<T>(x, delta, w, h, rows, hidden, eps);                                             \
    }
ADD_RMS_NORM(add_rms_norm_f16, F16)
ADD_RMS_NORM(add_rms_norm_bf16, BF16)
