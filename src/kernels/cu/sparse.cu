// The sparse phase: bans, the global boost, biases and penalties on the listed tokens only.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// ------------------------------------------------------------------------------------------
// Sparse phase.

// A logit after repetition (divide positive, multiply negative), frequency and presence
// penalties (the CPU's `penalise`, operation for operation).
__device__ __forceinline__ float lp_penalised(float y, u32 count, float rep, float freq, float pres) {
    if (rep != 1.0f) y = y > 0.0f ? __fdiv_rn(y, rep) : __fmul_rn(y, rep);
    if (count > 0u) {
        y = __fsub_rn(y, __fmul_rn(freq, (float)count));
        y = __fsub_rn(y, pres);
    }
    return y;
}

// Penalty entries a thread loads ahead, before the phases' barriers (more go through a plain
// loop): the row's table is read while the bans, boost and bias are applied.
#define LP_PEN_AHEAD 4u

template <int K>
__device__ __forceinline__ void lp_sparse(
    char* logits, u32 vocab,
    const u32* bans0, u32 bans0_w, const u32* bans1, u32 bans1_w,
    const u32* ids, u32 n_ids, float boost,
    const u32* bias, u32 bias_w,
    u32* pen, u32 pen_w, u32 pen_hw, const u32* pen_params, const u32* pen_log, u32 pen_slots)
{
    typedef Lp<K> E;
    // The dense launch after this one may start its prologue (it waits before the logits).
    lp_grid_release();
    const u32 row = blockIdx.x;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    char* rowp = logits + (size_t)row * vocab * E::ES;
    // Every phase's row header first: independent loads in flight together, not one after
    // each barrier (the phase is latency-bound: a few listed tokens per thread).
    const u32* ban_e0 = bans0 ? bans0 + (size_t)row * bans0_w : (const u32*)0;
    const u32* ban_e1 = bans1 ? bans1 + (size_t)row * bans1_w : (const u32*)0;
    const u32* bias_e = bias ? bias + (size_t)row * bias_w : (const u32*)0;
    const u32 n_ban0 = ban_e0 ? ban_e0[0] : 0u;
    const u32 n_ban1 = ban_e1 ? ban_e1[0] : 0u;
    const u32 n_bias = bias_e ? bias_e[0] : 0u;
    float rep = 1.0f, freq = 0.0f, pres = 0.0f;
    u32 slot = LP_NO_SLOT;
    if (pen) {
        rep = __uint_as_float(pen_params[4 * row]);
        freq = __uint_as_float(pen_params[4 * row + 1]);
        pres = __uint_as_float(pen_params[4 * row + 2]);
        slot = pen_params[4 * row + 3];
    }
    const bool penalised = slot != LP_NO_SLOT && (rep != 1.0f || freq != 0.0f || pres != 0.0f);
    u32* tab = penalised ? pen + (size_t)slot * pen_w : (u32*)0;
    // The counts do not depend on the logits: brought up to date (block-uniform branch, with
    // barriers) and read ahead before the logits phases.
    if (penalised && pen_log) lp_count_slot(tab, pen_hw, pen_log, pen_slots, slot);
    const u32 used = penalised ? min(tab[0], pen_hw / 2u) : 0u;
    const u32* list = penalised ? tab + 1 + 2 * pen_hw : (const u32*)0; // (key, value) pairs
    u32 pt[LP_PEN_AHEAD], pp[LP_PEN_AHEAD];
#pragma unroll
    for (u32 j = 0; j < LP_PEN_AHEAD; ++j) {
        const u32 k = tid + j * nt;
        pp[j] = 0u;
        pt[j] = 0u;
        if (k < used) {
            pt[j] = list[2 * k] - 1u;
            pp[j] = list[2 * k + 1];
        }
    }

    for (u32 k = tid; k < n_ban0; k += nt) E::put(rowp, ban_e0[1 + k], LP_NEG_INF);
    for (u32 k = tid; k < n_ban1; k += nt) E::put(rowp, ban_e1[1 + k], LP_NEG_INF);
    __syncthreads();
    for (u32 k = tid; k < n_ids; k += nt) {
        const u32 t = ids[k];
        E::put(rowp, t, __fadd_rn(E::get(rowp, t), boost));
    }
    __syncthreads();
    for (u32 k = tid; k < n_bias; k += nt) {
        const u32 t = bias_e[1 + 2 * k];
        E::put(rowp, t, __fadd_rn(E::get(rowp, t), __uint_as_float(bias_e[2 + 2 * k])));
    }
    __syncthreads();
    if (!penalised) return;
    // A table lists each token once: the loads of a thread's logits cannot alias its stores,
    // so all of them are issued before the first store.
    float y[LP_PEN_AHEAD];
#pragma unroll
    for (u32 j = 0; j < LP_PEN_AHEAD; ++j) {
        const bool live = tid + j * nt < used && ((pp[j] >> 1) != 0u || (pp[j] & 1u) != 0u);
        y[j] = live ? E::get(rowp, pt[j]) : 0.0f;
    }
#pragma unroll
    for (u32 j = 0; j < LP_PEN_AHEAD; ++j) {
        const u32 count = pp[j] >> 1;
        const bool in_prompt = (pp[j] & 1u) != 0u;
        if (tid + j * nt >= used || (count == 0u && !in_prompt)) continue;
        E::put(rowp, pt[j], lp_penalised(y[j], count, rep, freq, pres));
    }
    for (u32 k = tid + LP_PEN_AHEAD * nt; k < used; k += nt) {
        const u32 t = list[2 * k] - 1u;
        const u32 packed = list[2 * k + 1];
        const u32 count = packed >> 1;
        const bool in_prompt = (packed & 1u) != 0u;
        if (count == 0u && !in_prompt) continue;
        E::put(rowp, t, lp_penalised(E::get(rowp, t), count, rep, freq, pres));
    }
}

