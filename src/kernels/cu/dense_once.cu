// `lp_dense_once`: the dense phase of a launch with min-p in one pass over the logits,
// with (row, chunk) tickets and a published row maximum.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// `flags` of `lp_dense_once` (src/kernels/cuda.rs `ONCE_*`).
// Rows with a step mask: every 16-byte group is loaded before the keep mask is built, and where
// the step mask is the row's only mask its words are copied into the keep mask by cp.async
// beside the chunk's loads (one wait, one barrier).
#define LP_ONCE_SPEC_CP 2u
// Rows with min-p never wait for the row maximum: a block cuts its chunk at its own maximum's
// threshold (never above the row's), stores it, lists the chunk's survivors and publishes; the
// row's last block to publish cuts the listed survivors at the row's threshold (`lp_finalize`).
#define LP_ONCE_NOWAIT 8u
// LP_ONCE_NOWAIT for the rows with a mask only.
#define LP_ONCE_NOWAIT_MASKED 16u
// Survivors listed per row (LP_SURV_BLOCK per chunk, dense.cu; more: the row's last block
// re-reads the row).
#define LP_SURV_ROW 2048u

// A row maximum as a u32 with the same order (-0 below +0; NaN never reaches it), for
// atomicMax. 0 is below every key of a float, so a zeroed slot holds "nothing yet".
__device__ __forceinline__ u32 lp_key(float x) {
    const u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float lp_unkey(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ u32 lp_load_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u32 lp_load_relaxed(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// The four words that decide what happens to a row: keep-table head, step-mask flag,
// temperature and ln(min_p) bits (loaded ahead by one thread, see `lp_dense_once`).
__device__ __forceinline__ void lp_row_words(u32* w, u32 row, const u32* keep_t, u32 keep_w,
                                             const u32* smask, const u32* sactive,
                                             const u32* temps, const u32* minps) {
    w[0] = keep_t ? keep_t[(size_t)row * keep_w] : 0u;
    w[1] = smask ? sactive[row] : 0u;
    w[2] = temps ? temps[row] : 0x3f800000u; // 1.0f
    w[3] = minps ? minps[row] : 0xff800000u; // -inf
}

// With folded penalties, five more words, loaded with them (once `lp_sparse` has completed):
// the row's repetition, frequency and presence penalties, and where chunk `c`'s entries start
// and end in the row's fold list.
__device__ __forceinline__ void lp_fold_words(u32* w, u32 row, u32 c, const u32* pen_params,
                                              const u32* fold, u32 fold_stride) {
    const u32* fl = fold + (size_t)row * fold_stride;
    w[0] = pen_params[4 * row];
    w[1] = pen_params[4 * row + 1];
    w[2] = pen_params[4 * row + 2];
    w[3] = fl[c];
    w[4] = fl[c + 1];
}

template <int K>
__device__ __forceinline__ LpRow lp_row_of(char* logits, u32 row, u32 vocab, const u32* keep_t,
                                           u32 keep_w, const u32* gbits, const u32* smask,
                                           const u32* w) {
    LpRow r;
    r.p = logits + (size_t)row * vocab * Lp<K>::ES;
    r.head_word = w[0];
    r.entry = r.head_word != 0u ? keep_t + (size_t)row * keep_w : (const u32*)0;
    r.srow = w[1] != 0u ? smask + (size_t)row * ((vocab + 31u) >> 5) : (const u32*)0;
    r.temp = __uint_as_float(w[2]);
    r.rcp = r.temp != 1.0f ? lp_recip(r.temp) : 0.0f;
    r.lnp = __uint_as_float(w[3]);
    r.has_min_p = r.lnp != LP_NEG_INF;
    r.values = r.temp != 1.0f || r.has_min_p;
    r.masked = r.head_word != 0u || gbits || r.srow;
    return r;
}

// `lp_build_keep` with every global read in one round: a keep list's ids (at most
// KEEP_LIST_MAX <= LP_THREADS, one per thread) are read with the mask words. Ends with a
// barrier.
__device__ __forceinline__ void lp_build_keep_once(u32* keep, const LpRow& r, const u32* gbits,
                                                   u32 c0, u32 c1) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 nwords = (c1 - c0 + 31u) >> 5;
    const u32 w0 = c0 >> 5;
    const bool bitmask = r.head_word == LP_KEEP_BITMASK;
    const bool list = r.head_word != 0u && !bitmask;
    const u32 t = list && tid < r.head_word ? r.entry[1 + tid] : 0xffffffffu;
    for (u32 w = tid; w < nwords + 2u; w += nt) {
        u32 k = 0u;
        if (w < nwords) {
            k = bitmask ? r.entry[1 + w0 + w] : 0xffffffffu;
            if (gbits) k &= gbits[w0 + w];
            if (r.srow) k &= r.srow[w0 + w];
        }
        keep[w] = k; // for a list: what the other masks allow
    }
    __syncthreads();
    if (list) { // block-uniform
        const bool ok = t >= c0 && t < c1 && ((keep[(t - c0) >> 5] >> ((t - c0) & 31u)) & 1u);
        __syncthreads();
        for (u32 w = tid; w < nwords; w += nt) keep[w] = 0u;
        __syncthreads();
        if (ok) atomicOr(&keep[(t - c0) >> 5], 1u << ((t - c0) & 31u));
        __syncthreads();
    }
}

// The keep mask of tokens [c0, c1) of a row whose only mask is its step mask `srow`: its
// words copied by cp.async (in flight with the chunk's loads), padded with two zero words.
// Complete once every thread has waited for its copies and passed a barrier (ends with both).
__device__ __forceinline__ void lp_keep_copy(u32* keep, const u32* srow, u32 c0, u32 c1) {
    const u32 nwords = (c1 - c0 + 31u) >> 5;
    const u32 w0 = c0 >> 5;
    const u32 kbase = (u32)__cvta_generic_to_shared(keep);
    for (u32 w = threadIdx.x; w < nwords + 2u; w += LP_THREADS) {
        if (w < nwords) {
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(kbase + 4u * w), "l"(srow + w0 + w) : "memory");
        } else {
            keep[w] = 0u;
        }
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();
}

// A row whose keep set is a list (at most KEEP_LIST_MAX ids), in `lp_dense_once`: the block
// of its first chunk reads, tempers, cuts and writes all of its kept tokens (the row maximum
// needs no other block); every block writes -inf over the other tokens of its chunk without
// reading them, with element stores beside kept tokens (which that first block may be writing).
template <int K>
__device__ __forceinline__ void lp_list_row(u32* keep, float* red, const LpRow& r,
                                            const u32* gbits, u32 c0, u32 c1) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 tid = threadIdx.x;
    lp_build_keep_once(keep, r, gbits, c0, c1);
    const LpSpan s = lp_span<K>(r.p, c0, c1 - c0);
    for (u32 v = tid; v < s.nvec; v += LP_THREADS) {
        const u32 bits = lp_keep_bits(keep, s.head + v * VEC, VEC);
        if (bits == 0u) {
            lp_store16(s.body + (size_t)v * 16u, E::NEG_INF_WORD);
        } else {
            for (u32 e = 0; e < VEC; ++e) {
                if (!((bits >> e) & 1u)) E::put(r.p, c0 + s.head + v * VEC + e, LP_NEG_INF);
            }
        }
    }
    if (tid < s.head + s.tail) {
        const u32 off = tid < s.head ? tid : s.body_end + (tid - s.head);
        if (!((keep[off >> 5] >> (off & 31u)) & 1u)) E::put(r.p, c0 + off, LP_NEG_INF);
    }
    if (c0 != 0u || !r.values) return; // block-uniform
    const u32 t = tid < r.head_word ? r.entry[1 + tid] : 0u;
    const bool kept = tid < r.head_word && (!gbits || ((gbits[t >> 5] >> (t & 31u)) & 1u)) &&
                      (!r.srow || ((r.srow[t >> 5] >> (t & 31u)) & 1u));
    const float y = kept ? lp_tempered<K>(r.p, t, r.temp) : LP_NEG_INF;
    float thr = LP_NEG_INF;
    if (r.has_min_p) thr = __fadd_rn(lp_block_max(y, red), r.lnp);
    if (kept) {
        if (y < thr) E::put(r.p, t, LP_NEG_INF);
        else if (r.temp != 1.0f) E::put(r.p, t, y);
    }
}

// LP_ONCE_NOWAIT: a row maximum published without waiting. The chunk (staged, masked and
// tempered; `b` its maximum) is cut at thr_c = b + ln(min_p) (`lp_chunk_cut`, `lp_chunk_end`
// with LIST), which is never above the row's threshold (rounding is monotonic and b <= the
// row maximum), so what it cuts is cut for good; what it keeps and is not -inf or NaN (a
// "survivor", `*surv_n` of them in `surv_s`) may still fall below the row's threshold. This
// step, once the chunk is stored, lists them for the row's last block (`surv`, LP_SURV_ROW
// ids a row; a chunk with more than LP_SURV_BLOCK, or a row that runs out, marks the row to
// be re-read whole) and publishes the chunk: a fence, the maximum, the arrival
// (acquire-release), whose old value tells the row's last block (`*last`). `slot`: the row's
// [max key, arrivals, survivors, overflow]. Ends with a barrier.
__device__ __forceinline__ void lp_nowait_publish(float b, u32* slot, u32 nchunks, u32* surv,
                                                  u32* surv_n, const u32* surv_s, u32* last) {
    const u32 tid = threadIdx.x;
    __syncthreads();
    const u32 n = *surv_n;
    if (tid == 0) {
        u32 base = LP_SURV_ROW;
        if (n > 0u && n <= LP_SURV_BLOCK) base = atomicAdd(&slot[2], n);
        if (n > LP_SURV_BLOCK || (n > 0u && base + n > LP_SURV_ROW)) {
            atomicOr(&slot[3], 1u);
            base = LP_SURV_ROW;
        }
        *surv_n = base; // reused: where this chunk's survivors go (LP_SURV_ROW: nowhere)
    }
    __syncthreads();
    const u32 base = *surv_n;
    if (base < LP_SURV_ROW) {
        for (u32 k = tid; k < n; k += LP_THREADS) surv[base + k] = surv_s[k];
    }
    __syncthreads();
    if (tid == 0) {
        // The block's stores (logits, survivors; ordered before this thread by the barrier)
        // before the arrival.
        __threadfence();
        u32 old;
        asm volatile("red.relaxed.gpu.global.max.u32 [%0], %1;" ::"l"(slot), "r"(lp_key(b)) : "memory");
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(slot + 1) : "memory");
        *last = old == nchunks - 1u;
    }
    __syncthreads();
}

// LP_ONCE_NOWAIT, by the row's last block to publish (every block of the row has stored its
// chunk and listed its survivors): the row threshold from the published maximum, then the
// listed survivors below it become -inf; a row whose list overflowed is re-read whole. Reads
// bypass L1 (other blocks wrote them). `slot`, `surv`: the row's. Ends with a barrier.
template <int K>
__device__ __forceinline__ void lp_finalize(char* p, float lnp, u32 vocab, const u32* slot,
                                            const u32* surv, u32* words, float* thr_s) {
    typedef Lp<K> E;
    const u32 tid = threadIdx.x;
    if (tid == 0) {
        *thr_s = __fadd_rn(lp_unkey(lp_load_relaxed(slot)), lnp);
        words[0] = lp_load_relaxed(slot + 2);
        words[1] = lp_load_relaxed(slot + 3);
    }
    __syncthreads();
    const float thr = *thr_s;
    const u32 n = words[1] != 0u ? vocab : words[0];
    for (u32 k = tid; k < n; k += LP_THREADS) {
        const u32 t = words[1] != 0u ? k : __ldcg(surv + k);
        const u32 raw = E::ES == 4u ? __ldcg(reinterpret_cast<const unsigned int*>(p) + t)
                                    : (u32)__ldcg(reinterpret_cast<const unsigned short*>(p) + t);
        if (E::from_raw(raw) < thr) E::put(p, t, LP_NEG_INF);
    }
    __syncthreads(); // `words`, `thr_s` are reused
}

// The one-launch form: every kept logit is read once. Persistent blocks take tickets
// (`sync[0]`); ticket k is chunk k % nchunks of row k / nchunks, so a row's chunks go to
// consecutive tickets. A block copies its chunk into its own slots of `stage` (shared memory;
// masked 16-byte groups are written -inf, never read), masks and tempers it there and, for a
// row with min-p, publishes the chunk's maximum into the row's slot (`sync[2 + 4 * row]`,
// atomicMax of `lp_key`; arrivals counted in `sync[3 + 4 * row]`) before it waits for the
// row's other chunks; then it cuts and stores. Rows whose keep set is a list never wait (see
// `lp_list_row`). A waiting block has published, and the row's other chunks are held by blocks
// that publish before they wait, or are taken next by a block that is not waiting (a block
// takes its next ticket only once its own row is complete): at most nchunks - 1 blocks wait at
// any time, so the launch finishes whenever the device can hold more than that many blocks
// (the host checks). The last block to exit zeroes the row slots and `sync[0..2]`, so the
// scratch is all zero between launches.
template <int K, bool FOLD>
__device__ __forceinline__ void lp_dense_once(
    char* logits, u32 batch, u32 vocab, u32 chunk,
    const u32* keep_t, u32 keep_w, const u32* gbits,
    const u32* smask, const u32* sactive,
    const u32* temps, const u32* minps,
    u32* sync, u32 nchunks, u32 flags, u32* surv,
    const u32* fold, u32 fold_stride, const u32* pen_params)
{
    const u32 AHEAD = LP_THREADS - 32u; // the thread that takes the next ticket
    __shared__ u32 keep[LP_ONCE_KEEP_WORDS];
    __shared__ float red[LP_THREADS / 32u];
    // With folded penalties, the ticket's `lp_fold_words`: read before its block maximum (a
    // barrier), written for the next ticket after it.
    __shared__ u32 fold_w[FOLD ? 5 : 1];
    __shared__ float thr_s;
    __shared__ u32 ticket_s[2];   // this ticket and the next (by parity)
    __shared__ u32 words_s[2][4]; // their rows' `lp_row_words`
    __shared__ u32 last_s;
    __shared__ u32 surv_n;                 // LP_ONCE_NOWAIT: the chunk's survivors
    __shared__ __align__(16) u32 surv_s[LP_SURV_BLOCK]; // also a chunk's folded penalties
    __shared__ LpVec stage[LP_THREADS * LP_VECS]; // the chunk; a thread uses its own slots only

    const u32 tid = threadIdx.x;
    const u32 total = batch * nchunks;
    if (tid == AHEAD) {
        const u32 t = atomicAdd(&sync[0], 1u);
        ticket_s[0] = t;
        if (t < total) lp_row_words(words_s[0], t / nchunks, keep_t, keep_w, smask, sactive, temps, minps);
    }
    __syncthreads();
    // Launched as the dependent of `lp_sparse` (src/kernels/cuda.rs `ONCE_PDL`), the prologue
    // above (tickets, row words: nothing `lp_sparse` writes) ran while it finished.
    lp_grid_wait();
    if (FOLD) { // the first ticket's fold words (`lp_sparse` wrote the offsets)
        if (tid == AHEAD && ticket_s[0] < total) {
            lp_fold_words(fold_w, ticket_s[0] / nchunks, ticket_s[0] % nchunks, pen_params, fold, fold_stride);
        }
        __syncthreads();
    }
    for (u32 it = 0;; ++it) {
        const u32 cur = it & 1u;
        const u32 ticket = ticket_s[cur];
        if (ticket >= total) break; // block-uniform
        const u32 row = ticket / nchunks;
        const u32 c0 = (ticket - row * nchunks) * chunk;
        const u32 c1 = min(c0 + chunk, vocab);
        const LpRow r = lp_row_of<K>(logits, row, vocab, keep_t, keep_w, gbits, smask, words_s[cur]);
        const bool list = r.head_word != 0u && r.head_word != LP_KEEP_BITMASK;
        // The next ticket: now for a row that does not wait, after the wait for one that does.
        u32 next = 0u;
        // LP_ONCE_NOWAIT*: this row's blocks publish their maxima without waiting.
        const bool nowait = r.has_min_p && !list &&
                            ((flags & LP_ONCE_NOWAIT) || ((flags & LP_ONCE_NOWAIT_MASKED) && r.masked));
        if ((!r.has_min_p || list || nowait) && tid == AHEAD) {
            next = atomicAdd(&sync[0], 1u);
        }
        if (list) {
            lp_list_row<K>(keep, red, r, gbits, c0, c1);
        } else if (r.masked || r.values) {
            const LpSpan s = lp_span<K>(r.p, c0, c1 - c0);
            // A row with a step mask (LP_ONCE_SPEC_CP) has every group loaded before its keep
            // mask is known, the mask's words read beside the logits instead of before them (a
            // grammar's mask keeps some token of nearly every group).
            const bool all = (flags & LP_ONCE_SPEC_CP) && r.srow;
            // The chunk's folded penalties (`lp_fold_row`), copied into `surv_s` (free until the
            // cut) beside the chunk where they fit, else read where they are.
            u32 fold_n = 0u;
            const u32* ents = surv_s;
            if (FOLD && r.has_min_p) { // block-uniform
                fold_n = fold_w[4] - fold_w[3];
                const u32* src = fold + (size_t)row * fold_stride + LP_FOLD_E0(nchunks) + 2u * fold_w[3];
                if (fold_n > LP_SURV_BLOCK / 2u) {
                    ents = src;
                } else if (tid < fold_n) {
                    const u32 d = (u32)__cvta_generic_to_shared(surv_s + 2u * tid);
                    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(d), "l"(src + 2u * tid) : "memory");
                }
            }
            if (all) lp_chunk_issue<K, LP_VECS>(r, keep, s, stage, true);
            // The step mask copied beside the chunk: every copy of the block lands before the
            // barrier that ends `lp_keep_copy`.
            const bool copied = all && r.head_word == 0u && !gbits;
            if (copied) {
                lp_keep_copy(keep, r.srow, c0, c1);
            } else if (r.masked) {
                lp_build_keep_once(keep, r, gbits, c0, c1);
            }
            if (!all) lp_chunk_issue<K, LP_VECS>(r, keep, s, stage, false);
            if (fold_n > 0u) { // block-uniform: penalise the staged chunk once it has landed
                if (!copied) {
                    asm volatile("cp.async.wait_all;" ::: "memory");
                    __syncthreads();
                }
                lp_fold_apply<K>(ents, fold_n, fold_w, r, keep, s, stage);
                __syncthreads();
            }
            float m;
            u32 mh;
            const LpEnd end = lp_chunk_finish<K, LP_VECS>(r, keep, s, stage, c0, m, mh, all);
            float thr = LP_NEG_INF;
            if (r.has_min_p) { // block-uniform
                if (nowait && tid == 0) surv_n = 0u;
                const float b = lp_block_max(lp_max_fold<K>(mh, m), red);
                u32* slot = sync + 2u + 4u * row;
                if (nowait) {
                    thr = __fadd_rn(b, r.lnp);
                    lp_chunk_cut<K, LP_VECS, true>(r, keep, s, stage, thr, c0, &surv_n, surv_s);
                    lp_chunk_end<K, true>(r, end, c0, thr, &surv_n, surv_s);
                    u32* row_surv = surv + (size_t)row * LP_SURV_ROW;
                    lp_nowait_publish(b, slot, nchunks, row_surv, &surv_n, surv_s, &last_s);
                    if (last_s) lp_finalize<K>(r.p, r.lnp, vocab, slot, row_surv, keep, &thr_s);
                } else {
                    if (tid == 0) {
                        // Publish (the maximum, then the arrival, released after it) and wait.
                        asm volatile("red.relaxed.gpu.global.max.u32 [%0], %1;" ::"l"(slot), "r"(lp_key(b)) : "memory");
                        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(slot + 1) : "memory");
                        while (lp_load_acquire(slot + 1) < nchunks) __nanosleep(64);
                        thr_s = __fadd_rn(lp_unkey(lp_load_relaxed(slot)), r.lnp);
                    }
                    __syncthreads();
                    thr = thr_s;
                    if (tid == AHEAD) next = atomicAdd(&sync[0], 1u);
                    lp_chunk_cut<K, LP_VECS, false>(r, keep, s, stage, thr, c0, (u32*)0, (u32*)0);
                }
            }
            if (!nowait) lp_chunk_end<K, false>(r, end, c0, thr, (u32*)0, (u32*)0);
        }
        if (tid == AHEAD) {
            ticket_s[cur ^ 1u] = next;
            if (next < total) {
                lp_row_words(words_s[cur ^ 1u], next / nchunks, keep_t, keep_w, smask, sactive, temps, minps);
                if (FOLD) lp_fold_words(fold_w, next / nchunks, next % nchunks, pen_params, fold, fold_stride);
            }
        }
        __syncthreads(); // `keep`, `red`, `thr_s` are reused by the next ticket
    }
    // The last block to exit zeroes the scratch (every other block is done with it).
    if (tid == 0) last_s = atomicAdd(&sync[1], 1u) == gridDim.x - 1u;
    __syncthreads();
    if (last_s) {
        __threadfence();
        for (u32 k = tid; k < 4u * batch; k += LP_THREADS) sync[2 + k] = 0u;
        if (tid == 0) {
            sync[0] = 0u;
            sync[1] = 0u;
        }
    }
}

