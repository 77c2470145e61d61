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

// The folded penalties (src/kernels/cuda.rs `ONCE_FOLD`): in a launch whose dense phase is
// `lp_dense_once`, a row that phase stages whole (min-p, no keep list) has its penalties
// applied there, to its chunks in shared memory, instead of by scattered reads and writes
// here. This phase sorts the row's penalty entries by chunk into the row's fold list `fl`
// (`lp_fold_row`): words [0, nchunks] the chunks' first entries (and the end), then from word
// LP_FOLD_E0(nchunks) the entries, two words each: the token's offset in its chunk, and its
// count << 1 | in_prompt. Tokens outside their chunk's aligned body (which the dense phase
// does not stage) are penalised here. Rows not folded get an empty list.
#define LP_FOLD_MAX_CHUNKS 256u
#define LP_FOLD_E0(nchunks) (((nchunks) + 2u) & ~1u)

// Where token `t` of a row lies for the dense phase: its chunk, its offset there, and whether
// that offset is in the chunk's 16-byte aligned body (see `lp_span`).
template <int K>
__device__ __forceinline__ bool lp_fold_place(const char* rowp, u32 vocab, u32 chunk, u32 t,
                                              u32& c, u32& o) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    c = t / chunk;
    const u32 c0 = c * chunk;
    const u32 span = min(chunk, vocab - c0);
    const u64 a = (u64)(rowp + (size_t)c0 * E::ES);
    u32 head = ((16u - (u32)(a & 15u)) & 15u) / E::ES;
    if (head > span) head = span;
    const u32 body_end = head + (span - head) / VEC * VEC;
    o = t - c0;
    return o >= head && o < body_end;
}

// Sorts a row's live penalty entries (`pt`/`pp` loaded ahead, the rest read from `list`) into
// its fold list `fl`, penalising the ones outside a chunk body in place (`lp_sparse`, after the
// bias phase; every thread, with barriers). `cnt`: LP_FOLD_MAX_CHUNKS + 1 shared words, zeroed
// before; `wsum`: one shared word per warp.
template <int K>
__device__ __forceinline__ void lp_fold_row(char* rowp, u32 vocab, u32 chunk, u32 nchunks,
                                            u32* fl, const u32* pt, const u32* pp,
                                            const u32* list, u32 used, float rep, float freq,
                                            float pres, u32* cnt, u32* wsum) {
    typedef Lp<K> E;
    const u32 tid = threadIdx.x, nt = blockDim.x;
    // Pass 1: count the entries of each chunk (and penalise the ones outside the bodies). An
    // entry (t, v) with v == 0 (count 0, not in the prompt) changes nothing.
    auto count = [&](u32 t, u32 v) {
        u32 c, o;
        if (v == 0u) return;
        if (lp_fold_place<K>(rowp, vocab, chunk, t, c, o)) {
            atomicAdd(&cnt[c], 1u);
        } else {
            E::put(rowp, t, lp_penalised(E::get(rowp, t), v >> 1, rep, freq, pres));
        }
    };
#pragma unroll
    for (u32 j = 0; j < LP_PEN_AHEAD; ++j) {
        if (tid + j * nt < used) count(pt[j], pp[j]);
    }
    for (u32 k = tid + LP_PEN_AHEAD * nt; k < used; k += nt) count(list[2 * k] - 1u, list[2 * k + 1]);
    __syncthreads();
    // The chunks' first entries: an exclusive scan of the counts (nchunks <= blockDim.x).
    const u32 lane = tid & 31u, warp = tid >> 5;
    const u32 own = tid < nchunks ? cnt[tid] : 0u;
    u32 inc = own;
    for (u32 d = 1; d < 32u; d <<= 1) {
        const u32 n = __shfl_up_sync(0xffffffffu, inc, d);
        if (lane >= d) inc += n;
    }
    if (lane == 31u) wsum[warp] = inc;
    __syncthreads();
    for (u32 w = 0; w < warp; ++w) inc += wsum[w];
    if (tid < nchunks) {
        cnt[tid] = inc - own; // this chunk's next entry
        fl[tid] = inc - own;
        if (tid == nchunks - 1u) fl[nchunks] = inc;
    }
    __syncthreads();
    // Pass 2: list the entries.
    u32* ents = fl + LP_FOLD_E0(nchunks);
    auto put = [&](u32 t, u32 v) {
        u32 c, o;
        if (v == 0u || !lp_fold_place<K>(rowp, vocab, chunk, t, c, o)) return;
        const u32 pos = atomicAdd(&cnt[c], 1u);
        ents[2 * pos] = o;
        ents[2 * pos + 1] = v;
    };
#pragma unroll
    for (u32 j = 0; j < LP_PEN_AHEAD; ++j) {
        if (tid + j * nt < used) put(pt[j], pp[j]);
    }
    for (u32 k = tid + LP_PEN_AHEAD * nt; k < used; k += nt) put(list[2 * k] - 1u, list[2 * k + 1]);
}

template <int K>
__device__ __forceinline__ void lp_sparse(
    char* logits, u32 vocab,
    const u32* bans0, u32 bans0_w, const u32* bans1, u32 bans1_w,
    const u32* ids, u32 n_ids, float boost,
    const u32* bias, u32 bias_w,
    u32* pen, u32 pen_w, u32 pen_hw, const u32* pen_params, const u32* pen_log, u32 pen_slots,
    u32* fold, u32 fold_stride, u32 chunk, u32 nchunks, const u32* minps, const u32* keep_t,
    u32 keep_w)
{
    typedef Lp<K> E;
    __shared__ u32 fold_cnt[LP_FOLD_MAX_CHUNKS + 1];
    __shared__ u32 fold_wsum[32];
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
    // And each list's first entries, one per thread, whatever the counts (within the tables'
    // widths; what lies past a count is not used).
    const u32 ban0_t = ban_e0 && 1u + tid < bans0_w ? ban_e0[1 + tid] : 0u;
    const u32 ban1_t = ban_e1 && 1u + tid < bans1_w ? ban_e1[1 + tid] : 0u;
    const u32 bias_t = bias_e && 2u + 2u * tid < bias_w ? bias_e[1 + 2 * tid] : 0u;
    const u32 bias_v = bias_e && 2u + 2u * tid < bias_w ? bias_e[2 + 2 * tid] : 0u;
    float rep = 1.0f, freq = 0.0f, pres = 0.0f;
    u32 slot = LP_NO_SLOT;
    if (pen) {
        rep = __uint_as_float(pen_params[4 * row]);
        freq = __uint_as_float(pen_params[4 * row + 1]);
        pres = __uint_as_float(pen_params[4 * row + 2]);
        slot = pen_params[4 * row + 3];
    }
    const bool penalised = slot != LP_NO_SLOT && (rep != 1.0f || freq != 0.0f || pres != 0.0f);
    // A folded row: `fold` (ONCE_FOLD), penalised, with min-p, without a keep list.
    u32* fl = fold ? fold + (size_t)row * fold_stride : (u32*)0;
    bool folded = false;
    if (fl && penalised) {
        const u32 head = keep_t ? keep_t[(size_t)row * keep_w] : 0u;
        folded = minps[row] != 0xff800000u && (head == 0u || head == LP_KEEP_BITMASK);
        for (u32 k = tid; k <= nchunks; k += nt) fold_cnt[k] = 0u; // the ban phase's barrier follows
    }
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

    for (u32 k = tid; k < n_ban0; k += nt) E::put(rowp, k == tid ? ban0_t : ban_e0[1 + k], LP_NEG_INF);
    for (u32 k = tid; k < n_ban1; k += nt) E::put(rowp, k == tid ? ban1_t : ban_e1[1 + k], LP_NEG_INF);
    __syncthreads();
    for (u32 k = tid; k < n_ids; k += nt) {
        const u32 t = ids[k];
        E::put(rowp, t, __fadd_rn(E::get(rowp, t), boost));
    }
    __syncthreads();
    for (u32 k = tid; k < n_bias; k += nt) {
        const u32 t = k == tid ? bias_t : bias_e[1 + 2 * k];
        const u32 v = k == tid ? bias_v : bias_e[2 + 2 * k];
        E::put(rowp, t, __fadd_rn(E::get(rowp, t), __uint_as_float(v)));
    }
    __syncthreads();
    if (fl && !folded) {
        for (u32 k = tid; k <= nchunks; k += nt) fl[k] = 0u; // an empty fold list
    }
    if (!penalised) return;
    if (folded) {
        lp_fold_row<K>(rowp, vocab, chunk, nchunks, fl, pt, pp, list, used, rep, freq, pres,
                       fold_cnt, fold_wsum);
        return;
    }
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

