// The sparse phase: bans, the global boost, biases and penalties on the listed tokens only.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// ------------------------------------------------------------------------------------------
// Sparse phase.

template <int K>
__device__ __forceinline__ void lp_sparse(
    char* logits, u32 vocab,
    const u32* bans0, u32 bans0_w, const u32* bans1, u32 bans1_w,
    const u32* ids, u32 n_ids, float boost,
    const u32* bias, u32 bias_w,
    u32* pen, u32 pen_w, u32 pen_hw, const u32* pen_params, const u32* pen_log, u32 pen_slots)
{
    typedef Lp<K> E;
    const u32 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    char* rowp = logits + (size_t)row * vocab * E::ES;
    const u32* bans[2] = {bans0, bans1};
    const u32 bans_w[2] = {bans0_w, bans1_w};
    for (int b = 0; b < 2; ++b) {
        if (!bans[b]) continue;
        const u32* e = bans[b] + (size_t)row * bans_w[b];
        const u32 n = e[0];
        for (u32 k = tid; k < n; k += nt) E::put(rowp, e[1 + k], LP_NEG_INF);
    }
    __syncthreads();
    for (u32 k = tid; k < n_ids; k += nt) {
        const u32 t = ids[k];
        E::put(rowp, t, __fadd_rn(E::get(rowp, t), boost));
    }
    __syncthreads();
    if (bias) {
        const u32* e = bias + (size_t)row * bias_w;
        const u32 n = e[0];
        for (u32 k = tid; k < n; k += nt) {
            const u32 t = e[1 + 2 * k];
            E::put(rowp, t, __fadd_rn(E::get(rowp, t), __uint_as_float(e[2 + 2 * k])));
        }
    }
    __syncthreads();
    if (pen) {
        const float rep = __uint_as_float(pen_params[4 * row]);
        const float freq = __uint_as_float(pen_params[4 * row + 1]);
        const float pres = __uint_as_float(pen_params[4 * row + 2]);
        const u32 slot = pen_params[4 * row + 3];
        if (slot != LP_NO_SLOT && (rep != 1.0f || freq != 0.0f || pres != 0.0f)) {
            u32* tab = pen + (size_t)slot * pen_w;
            if (pen_log) lp_count_slot(tab, pen_hw, pen_log, pen_slots, slot);
            const u32 used = min(tab[0], pen_hw / 2u);
            const u32* list = tab + 1 + 2 * pen_hw;
            for (u32 k = tid; k < used; k += nt) {
                const u32 i = list[k];
                const u32 t = tab[1 + 2 * i] - 1u;
                const u32 packed = tab[2 + 2 * i];
                const u32 count = packed >> 1;
                const bool in_prompt = (packed & 1u) != 0u;
                if (count == 0u && !in_prompt) continue;
                float y = E::get(rowp, t);
                if (rep != 1.0f) y = y > 0.0f ? __fdiv_rn(y, rep) : __fmul_rn(y, rep);
                if (count > 0u) {
                    y = __fsub_rn(y, __fmul_rn(freq, (float)count));
                    y = __fsub_rn(y, pres);
                }
                E::put(rowp, t, y);
            }
        }
    }
}

