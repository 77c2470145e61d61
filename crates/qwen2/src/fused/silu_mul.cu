/* The MLP's gate, in place: `gu` is `[rows, 2*inter]` (gate then up, the fused gate/up
 * projection's output); `gu[r, :inter] = silu(gate) * up`, rounded like Hugging Face's
 * `act_fn(gate) * up` in the model dtype. The down projection then reads the first half of each
 * row (leading dimension `2*inter`). `inter % 8 == 0`. */
#define SILU_THREADS 256

template <class T>
__device__ __forceinline__ void silu_mul(u16* __restrict__ gu, u32 rows, u32 inter) {
    const u32 per_row = inter / 8;
    const size_t n = (size_t)rows * per_row;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / per_row, c = (i - r * per_row) * 8;
        u16* g = gu + r * 2 * inter + c;
        const Vec8 a = *(const Vec8*)g, b = *(const Vec8*)(g + inter);
        Vec8 o;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float x = T::load(a.v[k]);
            o.v[k] = T::store(rnd<T>(x / (1.f + expf(-x))) * T::load(b.v[k]));
        }
        *(Vec8*)g = o;
    }
}

extern "C" __global__ void __launch_bounds__(SILU_THREADS) silu_mul_f16(u16* gu, u32 rows, u32 inter) { silu_mul<F16>(gu, rows, inter); }
extern "C" __global__ void __launch_bounds__(SILU_THREADS) silu_mul_bf16(u16* gu, u32 rows, u32 inter) { silu_mul<BF16>(gu, rows, inter); }
