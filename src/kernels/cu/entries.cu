// The kernels' extern "C" entry points, per dtype, and the table kernels.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// `lp_dense_once` as kernel FN, without or with folded penalties (FOLD).
#define LP_ONCE_ENTRY(FN, K, FOLD)                                                             \
    extern "C" __global__ void __launch_bounds__(LP_THREADS, LP_ONCE_BLOCKS) FN(               \
        char* logits, u32 batch, u32 vocab, u32 chunk, const u32* keep_t, u32 keep_w,          \
        const u32* gbits, const u32* smask, const u32* sactive, const u32* temps,              \
        const u32* minps, u32* sync, u32 nchunks, u32 flags, u32* surv, const u32* fold,       \
        u32 fold_stride, const u32* pen_params) {                                              \
        lp_dense_once<K, FOLD>(logits, batch, vocab, chunk, keep_t, keep_w, gbits, smask,      \
                               sactive, temps, minps, sync, nchunks, flags, surv, fold,        \
                               fold_stride, pen_params);                                       \
    }

#define LP_ENTRY(NAME, K)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) lp_sparse_##NAME(                        \
        char* logits, u32 vocab, const u32* bans0, u32 bans0_w, const u32* bans1, u32 bans1_w, \
        const u32* ids, u32 n_ids, float boost, const u32* bias, u32 bias_w, u32* pen,         \
        u32 pen_w, u32 pen_hw, const u32* pen_params, const u32* pen_log, u32 pen_slots,       \
        u32* fold, u32 fold_stride, u32 chunk, u32 nchunks, const u32* minps,                  \
        const u32* keep_t, u32 keep_w) {                                                       \
        lp_sparse<K>(logits, vocab, bans0, bans0_w, bans1, bans1_w, ids, n_ids, boost, bias,   \
                     bias_w, pen, pen_w, pen_hw, pen_params, pen_log, pen_slots, fold,         \
                     fold_stride, chunk, nchunks, minps, keep_t, keep_w);                      \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) lp_dense_##NAME(                         \
        char* logits, u32 batch, u32 vocab, u32 chunk, const u32* keep_t, u32 keep_w,          \
        const u32* gbits, const u32* smask, const u32* sactive, const u32* temps,              \
        const u32* minps, float* partial, u32 nchunks, int pass) {                             \
        lp_dense<K>(logits, batch, vocab, chunk, keep_t, keep_w, gbits, smask, sactive, temps, \
                    minps, partial, nchunks, pass);                                            \
    }                                                                                          \
    LP_ONCE_ENTRY(lp_dense_once_##NAME, K, false)                                              \
    LP_ONCE_ENTRY(lp_dense_once_fold_##NAME, K, true)                                          \
    extern "C" __global__ void __launch_bounds__(LP_THREADS) lp_dense_cluster_##NAME(          \
        char* logits, u32 batch, u32 vocab, u32 slice, const u32* keep_t, u32 keep_w,          \
        const u32* gbits, const u32* smask, const u32* sactive, const u32* temps,              \
        const u32* minps) {                                                                    \
        lp_dense_cluster<K>(logits, batch, vocab, slice, keep_t, keep_w, gbits, smask,         \
                            sactive, temps, minps);                                            \
    }

LP_ENTRY(f32, 0)
LP_ENTRY(f16, 1)
LP_ENTRY(bf16, 2)

// Deferred writes of host tables: `n` triples (address low, address high, value).
extern "C" __global__ void __launch_bounds__(256) lp_scatter(const u32* triples, u32 n) {
    for (u32 k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += gridDim.x * blockDim.x) {
        const u64 addr = (u64)triples[3 * k] | ((u64)triples[3 * k + 1] << 32);
        *reinterpret_cast<u32*>(addr) = triples[3 * k + 2];
    }
}

// Penalty counts: processes the whole log (grid: one block per slot), for steps whose changes
// pile up between two applies.
extern "C" __global__ void __launch_bounds__(256) lp_counts(u32* tab, u32 width, u32 w,
                                                            const u32* log, u32 slots) {
    lp_count_slot(tab + (size_t)blockIdx.x * width, w, log, slots, blockIdx.x);
}

// Penalty counts: rehashes every slot (grid: one block per slot) from `old` (W = old_w) into
// the zeroed `tab` (W = w), dropping entries whose count is 0 outside the prompt.
extern "C" __global__ void __launch_bounds__(256) lp_count_rehash(const u32* old, u32 old_width,
                                                                  u32 old_w, u32* tab,
                                                                  u32 width, u32 w) {
    const u32* o = old + (size_t)blockIdx.x * old_width;
    u32* t = tab + (size_t)blockIdx.x * width;
    const u32 used = min(o[0], old_w / 2u);
    for (u32 k = threadIdx.x; k < used; k += blockDim.x) {
        const u32 v = o[2 + 2 * old_w + 2 * k];
        if (v == 0u) continue;
        const u32 j = lp_claim(t, w, o[1 + 2 * old_w + 2 * k] - 1u);
        if (j != LP_NO_ENTRY) t[2 + 2 * w + 2 * j] = v;
    }
}
