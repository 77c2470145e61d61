/* Causal attention over packed variable-length rows, flash style (online softmax, scores never
 * stored), grouped-query heads, tensor cores through `mma.sync.m16n8k16` (f32 accumulators).
 *
 * Layout: `qkv` is `[tokens, ld_qkv]`: query head h at columns `h*HD`, key head g at
 * `k_col + g*HD`, value head g at `v_col + g*HD` (the q/k/v projection's output, RoPE applied).
 * Row s of the batch holds tokens `cu[s] .. cu[s+1]`. `out` is `[tokens, ld_out]`, head h at
 * columns `h*HD`.
 *
 * Grid: x = query head, y = tile. Tile i is the pair `tiles[2i] = row`, `tiles[2i+1] = q0`: the
 * block computes queries `q0 .. q0+64` of that row (positions within the row) against keys
 * `0 .. q0+64`, 64 keys at a time; only the last key tile (the diagonal one) needs the causal
 * mask. Four warps, 16 queries each. Shared memory: one K tile and one V tile (the Q tile is
 * staged in the V buffer first), rows swizzled in 16-byte chunks (chunk c of row r lives at
 * c ^ (r & 7)) so that ldmatrix reads are free of bank conflicts. The next K tile is fetched
 * (cp.async) while the current one's softmax and P·V run. */
#define FA_TILE 64
#define FA_THREADS 128

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, u32 bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }
__device__ __forceinline__ void ldsm_x4(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32* r, u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

/* Byte offset of 16-byte chunk `c` of row `r` in a swizzled tile of HD-wide rows. */
template <int HD> __device__ __forceinline__ u32 swz(int r, int c) { return (u32)(r * HD + ((c ^ (r & 7)) << 3)) * 2u; }

/* Copies rows `0 .. valid` of a 64-row tile starting at global row `row0` into shared memory;
 * rows past `valid` are zero-filled (nothing is read for them). */
template <int HD>
__device__ __forceinline__ void load_tile(u32 dst, const u16* src, u32 ld, u32 row0, int valid) {
    constexpr int CPR = HD / 8;
#pragma unroll
    for (int it = 0; it < FA_TILE * CPR / FA_THREADS; ++it) {
        const int i = it * FA_THREADS + (int)threadIdx.x;
        const int r = i / CPR, c = i % CPR;
        const bool ok = r < valid;
        const u16* g = src + (size_t)(row0 + (ok ? r : 0)) * ld + c * 8;
        cp_async16(dst + swz<HD>(r, c), g, ok ? 16u : 0u);
    }
}

template <class T, int HD>
__device__ __forceinline__ void flash_attn(const u16* __restrict__ qkv, u16* __restrict__ out,
                                           const u32* __restrict__ tiles, const u32* __restrict__ cu,
                                           u32 ld_qkv, u32 ld_out, u32 group, u32 k_col, u32 v_col,
                                           float scale_log2) {
    __shared__ __align__(128) u16 sk[FA_TILE * HD];
    __shared__ __align__(128) u16 sv[FA_TILE * HD];
    const int head = blockIdx.x;
    const u32 seq = tiles[2 * blockIdx.y], q0 = tiles[2 * blockIdx.y + 1];
    const u32 start = cu[seq];
    const int len = (int)(cu[seq + 1] - start);
    const int kvh = head / (int)group;
    const u16* qg = qkv + (size_t)head * HD;
    const u16* kg = qkv + k_col + (size_t)kvh * HD;
    const u16* vg = qkv + v_col + (size_t)kvh * HD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3, m = lane >> 3, mr = lane & 7;
    const u32 sk0 = smem_addr(sk), sv0 = smem_addr(sv);
    const int n_kt = (int)(q0 / FA_TILE) + 1;

    load_tile<HD>(sv0, qg, ld_qkv, start + q0, min(FA_TILE, len - (int)q0));
    cp_commit();
    load_tile<HD>(sk0, kg, ld_qkv, start, min(FA_TILE, len));
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    u32 qa[HD / 16][4];
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk)
        ldsm_x4(qa[kk], sv0 + swz<HD>(warp * 16 + (m & 1) * 8 + mr, kk * 2 + (m >> 1)));
    __syncthreads();

    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float mrow[2] = {neg_inf(), neg_inf()}, lrow[2] = {0.f, 0.f};
    const int qrow0 = (int)q0 + warp * 16 + g; /* this thread's rows: qrow0 and qrow0 + 8 */

    for (int kt = 0; kt < n_kt; ++kt) {
        const int k0 = kt * FA_TILE;
        load_tile<HD>(sv0, vg, ld_qkv, start + k0, min(FA_TILE, len - k0));
        cp_commit();
        cp_wait<1>(); /* K tile kt has landed */
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                u32 b[4];
                ldsm_x4(b, sk0 + swz<HD>(j * 16 + (m >> 1) * 8 + mr, kk * 2 + (m & 1)));
                T::mma(s[2 * j], qa[kk], b[0], b[1]);
                T::mma(s[2 * j + 1], qa[kk], b[2], b[3]);
            }
        }
        __syncthreads(); /* every warp is done with the K tile */
        if (kt + 1 < n_kt) load_tile<HD>(sk0, kg, ld_qkv, start + k0 + FA_TILE, min(FA_TILE, len - k0 - FA_TILE));
        cp_commit();

        const bool diag = kt == n_kt - 1;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = s[nt][e] * scale_log2;
                if (diag) {
                    const int key = k0 + nt * 8 + 2 * t + (e & 1);
                    const int qry = qrow0 + (e >> 1) * 8;
                    if (key > qry) v = neg_inf();
                }
                s[nt][e] = v;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = neg_inf();
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(mrow[r], mx);
            const float alpha = exp2f(mrow[r] - mnew);
            mrow[r] = mnew;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const float p0 = exp2f(s[nt][2 * r] - mnew), p1 = exp2f(s[nt][2 * r + 1] - mnew);
                s[nt][2 * r] = p0;
                s[nt][2 * r + 1] = p1;
                sum += p0 + p1;
            }
            lrow[r] = lrow[r] * alpha + sum;
#pragma unroll
            for (int dt = 0; dt < HD / 8; ++dt) {
                o[dt][2 * r] *= alpha;
                o[dt][2 * r + 1] *= alpha;
            }
        }

        cp_wait<1>(); /* V tile kt has landed (the next K tile may still be in flight) */
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            u32 pa[4];
            pa[0] = T::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = T::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = T::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = T::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < HD / 16; ++dp) {
                u32 b[4];
                ldsm_x4_t(b, sv0 + swz<HD>(kk * 16 + (m & 1) * 8 + mr, dp * 2 + (m >> 1)));
                T::mma(o[2 * dp], pa, b[0], b[1]);
                T::mma(o[2 * dp + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads(); /* every warp is done with the V tile */
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = 1.f / l;
        const int q = qrow0 + r * 8;
        if (q < len) {
            u16* dst = out + (size_t)(start + q) * ld_out + (size_t)head * HD + 2 * t;
#pragma unroll
            for (int dt = 0; dt < HD / 8; ++dt)
                *(u32*)(dst + dt * 8) = T::pack(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
        }
    }
}

#define FLASH_ATTN(NAME, T, HD)                                                                        \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) NAME(                                     \
        const u16* qkv, u16* out, const u32* tiles, const u32* cu, u32 ld_qkv, u32 ld_out, u32 group,  \
        u32 k_col, u32 v_col, float scale_log2) {                                                      \
        flash_attn<T, HD>(qkv, out, tiles, cu, ld_qkv, ld_out, group, k_col, v_col, scale_log2);       \
    }
FLASH_ATTN(flash_attn_f16_hd128, F16, 128)
FLASH_ATTN(flash_attn_bf16_hd128, BF16, 128)
FLASH_ATTN(flash_attn_f16_hd64, F16, 64)
FLASH_ATTN(flash_attn_bf16_hd64, BF16, 64)
