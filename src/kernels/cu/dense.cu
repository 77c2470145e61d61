// The dense phase's shared pieces (row description, keep mask, aligned span) and the
// two-pass `lp_dense`.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// ------------------------------------------------------------------------------------------
// Dense phase.

// Threads per block of `lp_dense_once` (the host launches it with as many).
#define LP_THREADS 256u
// 16-byte vectors a thread of `lp_dense_once` stages in shared memory: a chunk of at most
// LP_THREADS * LP_VECS * 16 bytes (32 KiB) per block. (Measured on the H100: registers
// instead, 3 blocks per SM, and 16 KiB chunks, with 128 or 256 threads, single or double
// buffered, were all slower.)
#define LP_VECS 8u
// Blocks of `lp_dense_once` an SM holds at once (registers capped to fit; shared memory
// allows six).
#define LP_ONCE_BLOCKS 6
// Keep-mask words of an `lp_dense_once` chunk (at most LP_THREADS * LP_VECS * 8 tokens of
// 16 bits), padded by two.
#define LP_ONCE_KEEP_WORDS (LP_THREADS * LP_VECS * 8u / 32u + 2u)

// Bits [off, off + n) of the shared keep mask (n <= 8, the mask padded by one word).
__device__ __forceinline__ u32 lp_keep_bits(const u32* keep, u32 off, u32 n) {
    u32 w = off >> 5;
    u64 win = (u64)keep[w] | ((u64)keep[w + 1] << 32);
    return (u32)(win >> (off & 31u)) & ((1u << n) - 1u);
}

template <int K>
__device__ __forceinline__ float lp_tempered(const char* rowp, u32 t, float temp) {
    typedef Lp<K> E;
    const float x = E::get(rowp, t);
    return temp != 1.0f ? E::round(__fdiv_rn(x, temp)) : x;
}

// What the dense phase does to one row.
struct LpRow {
    char* p;          // the row's logits
    const u32* entry; // its keep-table entry, or null
    const u32* srow;  // its step-mask words, or null
    u32 head_word;    // entry[0]: 0 = no keep set, LP_KEEP_BITMASK = bitmask, else list length
    float temp;
    float rcp;        // `lp_recip(temp)` with a temperature (0: `__fdiv_rn` only)
    float lnp;        // ln(min_p), -inf without min-p
    bool has_min_p;
    bool values;      // temperature or min-p: kept logits are read and rewritten
    bool masked;      // some mask applies
};

template <int K>
__device__ __forceinline__ LpRow lp_row(char* logits, u32 row, u32 vocab, const u32* keep_t,
                                        u32 keep_w, const u32* gbits, const u32* smask,
                                        const u32* sactive, const u32* temps, const u32* minps) {
    LpRow r;
    r.p = logits + (size_t)row * vocab * Lp<K>::ES;
    r.entry = keep_t ? keep_t + (size_t)row * keep_w : (const u32*)0;
    r.head_word = r.entry ? r.entry[0] : 0u;
    const bool stepped = smask && sactive[row] != 0u;
    r.srow = stepped ? smask + (size_t)row * ((vocab + 31u) >> 5) : (const u32*)0;
    r.temp = temps ? __uint_as_float(temps[row]) : 1.0f;
    r.rcp = r.temp != 1.0f ? lp_recip(r.temp) : 0.0f;
    r.lnp = minps ? __uint_as_float(minps[row]) : LP_NEG_INF;
    r.has_min_p = r.lnp != LP_NEG_INF;
    r.values = r.temp != 1.0f || r.has_min_p;
    r.masked = r.head_word != 0u || gbits || stepped;
    return r;
}

// Writes to `keep` the keep mask of tokens [c0, c1) of row `r` (per-row list or bitmask,
// global mask, step mask), padded with two zero words. Ends with a barrier.
__device__ __forceinline__ void lp_build_keep(u32* keep, const LpRow& r, const u32* gbits,
                                              u32 c0, u32 c1) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 nwords = (c1 - c0 + 31u) >> 5;
    const u32 w0 = c0 >> 5;
    const bool forced = r.head_word != 0u;
    const bool forced_bits = r.head_word == LP_KEEP_BITMASK;
    for (u32 w = tid; w < nwords + 2u; w += nt) {
        u32 k = 0u;
        if (w < nwords) {
            k = 0xffffffffu;
            if (forced) k = forced_bits ? r.entry[1 + w0 + w] : 0u;
            if (gbits) k &= gbits[w0 + w];
            if (r.srow) k &= r.srow[w0 + w];
        }
        keep[w] = k;
    }
    __syncthreads();
    if (forced && !forced_bits) {
        for (u32 k = tid; k < r.head_word; k += nt) {
            const u32 t = r.entry[1 + k];
            if (t >= c0 && t < c1 && (!gbits || ((gbits[t >> 5] >> (t & 31u)) & 1u)) &&
                (!r.srow || ((r.srow[t >> 5] >> (t & 31u)) & 1u))) {
                atomicOr(&keep[(t - c0) >> 5], 1u << ((t - c0) & 31u));
            }
        }
    }
    __syncthreads();
}

// A chunk's 16-byte aligned body [c0 + head, c0 + body_end), body_end = head + nvec * VEC,
// and its unaligned ends (head elements before, tail after).
struct LpSpan {
    char* body;
    u32 head, nvec, body_end, tail;
};

template <int K> __device__ __forceinline__ LpSpan lp_span(char* rowp, u32 c0, u32 span) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    LpSpan s;
    const u64 a = (u64)(rowp + (size_t)c0 * E::ES);
    s.head = (u32)(((16u - (u32)(a & 15u)) & 15u) / E::ES);
    if (s.head > span) s.head = span;
    s.nvec = (span - s.head) / VEC;
    s.body_end = s.head + s.nvec * VEC;
    s.tail = span - s.body_end;
    s.body = rowp + (size_t)(c0 + s.head) * E::ES;
    return s;
}

// The two-launch form, for devices that cannot hold a row's blocks at once (see
// `lp_dense_once`): `pass` 0 writes the maxima of rows with min-p to `partial`, `pass` 1
// writes the row. Grid (chunks, rows).
template <int K>
__device__ __forceinline__ void lp_dense(
    char* logits, u32 batch, u32 vocab, u32 chunk,
    const u32* keep_t, u32 keep_w, const u32* gbits,
    const u32* smask, const u32* sactive,
    const u32* temps, const u32* minps,
    float* partial, u32 nchunks, int pass)
{
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    __shared__ u32 keep[LP_KEEP_WORDS];
    __shared__ float red[32];
    __shared__ float thr_s;

    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 c0 = blockIdx.x * chunk;
    if (c0 >= vocab) return;
    const u32 c1 = min(c0 + chunk, vocab);

    for (u32 row = blockIdx.y; row < batch; row += gridDim.y) {
        const LpRow r = lp_row<K>(logits, row, vocab, keep_t, keep_w, gbits, smask, sactive,
                                  temps, minps);
        char* rowp = r.p;
        const float temp = r.temp;
        const bool values = r.values;
        if (pass == 0 && !r.has_min_p) continue; // row-uniform branches
        if (!r.masked && !values) continue;
        lp_build_keep(keep, r, gbits, c0, c1);
        const LpSpan s = lp_span<K>(rowp, c0, c1 - c0);
        const u32 full = (1u << VEC) - 1u;

        if (pass == 0) {
            float m = LP_NEG_INF;
            for (u32 v = tid; v < s.nvec; v += nt) {
                const u32 off = s.head + v * VEC;
                const u32 bits = lp_keep_bits(keep, off, VEC);
                if (bits == 0u) continue;
                const LpVec q = lp_load_vec(s.body + (size_t)v * 16u);
#pragma unroll
                for (u32 e = 0; e < VEC; ++e) {
                    if ((bits >> e) & 1u) {
                        const float x = E::from_raw(lp_vec_get<E::ES>(q, e));
                        m = fmaxf(m, temp != 1.0f ? E::round(__fdiv_rn(x, temp)) : x);
                    }
                }
            }
            for (u32 i = tid; i < s.head + s.tail; i += nt) {
                const u32 off = i < s.head ? i : s.body_end + (i - s.head);
                if ((keep[off >> 5] >> (off & 31u)) & 1u) m = fmaxf(m, lp_tempered<K>(rowp, c0 + off, temp));
            }
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if ((tid & 31u) == 0u) red[tid >> 5] = m;
            __syncthreads();
            if (tid == 0) {
                float b = LP_NEG_INF;
                for (u32 w = 0; w < (nt + 31u) / 32u; ++w) b = fmaxf(b, red[w]);
                partial[(size_t)row * nchunks + blockIdx.x] = b;
            }
            __syncthreads();
            continue;
        }

        if (r.has_min_p) {
            if (tid == 0) {
                float b = LP_NEG_INF;
                for (u32 c = 0; c < nchunks; ++c) b = fmaxf(b, partial[(size_t)row * nchunks + c]);
                thr_s = __fadd_rn(b, r.lnp);
            }
            __syncthreads();
        }
        const float thr = r.has_min_p ? thr_s : LP_NEG_INF;
        const u32 neg_raw = E::to_raw(LP_NEG_INF);

        for (u32 v = tid; v < s.nvec; v += nt) {
            const u32 off = s.head + v * VEC;
            const u32 bits = lp_keep_bits(keep, off, VEC);
            char* p = s.body + (size_t)v * 16u;
            if (bits == 0u) {
                lp_store16(p, E::NEG_INF_WORD);
            } else if (bits != full || values) {
                LpVec q = lp_load_vec(p);
                if (temp != 1.0f && lp_vec_temper<K>(q, temp, r.rcp)) { // row-uniform test first
                    if (bits != full) lp_vec_mask<K>(q, bits);
                    if (r.has_min_p) lp_vec_cut<K>(q, thr);
                    lp_store_vec(p, q);
                    continue;
                }
#pragma unroll
                for (u32 e = 0; e < VEC; ++e) {
                    if (!((bits >> e) & 1u)) {
                        lp_vec_set<E::ES>(q, e, neg_raw);
                    } else if (values) {
                        const float x = E::from_raw(lp_vec_get<E::ES>(q, e));
                        const float y = temp != 1.0f ? E::round(__fdiv_rn(x, temp)) : x;
                        if (y < thr) lp_vec_set<E::ES>(q, e, neg_raw);
                        else if (temp != 1.0f) lp_vec_set<E::ES>(q, e, E::to_raw(y));
                    }
                }
                lp_store_vec(p, q);
            }
        }
        for (u32 i = tid; i < s.head + s.tail; i += nt) {
            const u32 off = i < s.head ? i : s.body_end + (i - s.head);
            const u32 t = c0 + off;
            if ((keep[off >> 5] >> (off & 31u)) & 1u) {
                if (values) {
                    const float y = lp_tempered<K>(rowp, t, temp);
                    if (y < thr) E::put(rowp, t, LP_NEG_INF);
                    else if (temp != 1.0f) E::put(rowp, t, y);
                }
            } else {
                E::put(rowp, t, LP_NEG_INF);
            }
        }
        __syncthreads(); // `keep` is rebuilt for the next row
    }
}

// One staged 16-byte group `q` of a one-pass dense kernel (`lp_dense_once`,
// `lp_dense_cluster`) whose keep bits are `bits` (not all clear): masked elements become
// -inf, kept ones are tempered where the row has a temperature, and the kept (tempered)
// values are folded into the chunk maximum (`m`, or `mh` on the packed 16-bit path). Returns
// whether `q` changed and must be written back (to the stage with min-p, else to the logits).
template <int K>
__device__ __forceinline__ bool lp_stage_group(LpVec& q, u32 bits, const LpRow& r, float& m,
                                               u32& mh) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
#if LP_PACKED
    if (r.temp == 1.0f) { // row-uniform
        if (bits != full) lp_vec_mask<K>(q, bits);
        if (r.has_min_p) lp_vec_max<K>(mh, m, q);
        return bits != full;
    }
#endif
    if (lp_vec_temper<K>(q, r.temp, r.rcp)) { // a temperature: r.rcp != 0
        if (bits != full) lp_vec_mask<K>(q, bits);
        if (r.has_min_p) lp_vec_max<K>(mh, m, q);
        return true;
    }
    if (bits != full || r.temp != 1.0f) {
        const u32 neg_raw = E::to_raw(LP_NEG_INF);
#pragma unroll
        for (u32 e = 0; e < VEC; ++e) {
            if (!((bits >> e) & 1u)) {
                lp_vec_set<E::ES>(q, e, neg_raw);
            } else if (r.values) {
                const float x = E::from_raw(lp_vec_get<E::ES>(q, e));
                const float y = r.temp != 1.0f ? E::round(__fdiv_rn(x, r.temp)) : x;
                m = fmaxf(m, y);
                if (r.temp != 1.0f) lp_vec_set<E::ES>(q, e, E::to_raw(y));
            }
        }
        return true;
    }
    // A full group, min-p only: the maximum alone.
#pragma unroll
    for (u32 e = 0; e < VEC; ++e) m = fmaxf(m, E::from_raw(lp_vec_get<E::ES>(q, e)));
    return false;
}

// The staged chunk of a one-pass dense kernel, in three steps shared by `lp_dense_once` and
// `lp_dense_cluster` (between the second and third, each publishes and exchanges the chunk
// maxima its own way). MAXV bounds the 16-byte groups a thread stages: LP_VECS for the
// fixed-size chunks of `lp_dense_once` (a loop the compiler unrolls), LP_ANY_VECS for a
// cluster block's slice.
#define LP_ANY_VECS (0xffffffffu / LP_THREADS)

// The chunk's unaligned ends, one element per thread (head + tail < 2 * VEC <= LP_THREADS):
// where the element is, whether it is kept, and its tempered value.
struct LpEnd {
    u32 off;
    bool kept;
    float y;
};

// Step 1a: issues the loads of the chunk's 16-byte groups into this thread's slots of
// `stage` (all in flight at once). `all` (block-uniform): every group, before the keep mask is
// known (step 1b writes the fully masked ones -inf); else the kept groups only, and fully
// masked ones are written -inf now, never read.
template <int K, u32 MAXV>
__device__ __forceinline__ void lp_chunk_issue(const LpRow& r, const u32* keep, const LpSpan& s,
                                               LpVec* stage, bool all) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
    const u32 tid = threadIdx.x;
    const u32 sbase = (u32)__cvta_generic_to_shared(stage);
    for (u32 j = 0; j < MAXV; ++j) {
        const u32 v = tid + j * LP_THREADS;
        if (v >= s.nvec) break;
        char* p = s.body + (size_t)v * 16u;
        if (!all) {
            const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
            if (bits == 0u) {
                lp_store16(p, E::NEG_INF_WORD);
                continue;
            }
            if (bits == full && !r.values) continue;
        }
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sbase + 16u * v), "l"(p) : "memory");
    }
}

// Penalises the staged, kept elements of a chunk listed in its fold list (see `lp_fold_row`
// in sparse.cu): `n` entries (offset in the chunk, count << 1 | in_prompt) at `ents`, the row's
// repetition, frequency and presence penalties' bits in `pw`. Every thread, between barriers
// (an entry's element may be in any thread's slots).
template <int K>
__device__ __forceinline__ void lp_fold_apply(const u32* ents, u32 n, const u32* pw,
                                              const LpRow& r, const u32* keep, const LpSpan& s,
                                              LpVec* stage) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    for (u32 k = threadIdx.x; k < n; k += LP_THREADS) {
        const u32 o = ents[2 * k], v = ents[2 * k + 1];
        if (r.masked && !((keep[o >> 5] >> (o & 31u)) & 1u)) continue; // -inf anyway
        const u32 b = o - s.head;
        char* slot = reinterpret_cast<char*>(&stage[b / VEC]) + (b % VEC) * E::ES;
        const u32 raw = E::ES == 4u ? *reinterpret_cast<u32*>(slot) : (u32)*reinterpret_cast<u16*>(slot);
        const float y = lp_penalised(E::from_raw(raw), v >> 1, __uint_as_float(pw[0]),
                                     __uint_as_float(pw[1]), __uint_as_float(pw[2]));
        if (E::ES == 4u) *reinterpret_cast<u32*>(slot) = E::to_raw(y);
        else *reinterpret_cast<u16*>(slot) = (u16)E::to_raw(y);
    }
}

// Step 1b: handles the ends, waits for the loads of step 1a, then masks and tempers the groups,
// folding kept values into the chunk maximum (`m`, `mh`). Without min-p every group is final
// and stored; with it, groups go back to `stage` until the cut. `all` as in step 1a.
template <int K, u32 MAXV>
__device__ __forceinline__ LpEnd lp_chunk_finish(const LpRow& r, const u32* keep, const LpSpan& s,
                                                 LpVec* stage, u32 c0, float& m, u32& mh,
                                                 bool all) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
    const u32 tid = threadIdx.x;
    LpEnd end;
    end.off = 0u;
    end.kept = false;
    end.y = LP_NEG_INF;
    if (tid < s.head + s.tail) {
        end.off = tid < s.head ? tid : s.body_end + (tid - s.head);
        end.kept = !r.masked || ((keep[end.off >> 5] >> (end.off & 31u)) & 1u);
        if (!end.kept) E::put(r.p, c0 + end.off, LP_NEG_INF);
        else if (r.values) end.y = lp_tempered<K>(r.p, c0 + end.off, r.temp);
    }
    asm volatile("cp.async.wait_all;" ::: "memory");

    m = end.kept ? end.y : LP_NEG_INF;
    mh = E::NEG_INF_WORD;
    for (u32 j = 0; j < MAXV; ++j) {
        const u32 v = tid + j * LP_THREADS;
        if (v >= s.nvec) break;
        const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
        if (bits == 0u) {
            if (all) lp_store16(s.body + (size_t)v * 16u, E::NEG_INF_WORD);
            continue;
        }
        if (bits == full && !r.values) continue;
        LpVec q = stage[v];
        if (lp_stage_group<K>(q, bits, r, m, mh)) {
            if (r.has_min_p) stage[v] = q;
            else lp_store_vec(s.body + (size_t)v * 16u, q);
        }
    }
    return end;
}

// Steps 1a and 1b of a chunk whose kept groups alone are read.
template <int K, u32 MAXV>
__device__ __forceinline__ LpEnd lp_chunk_stage(const LpRow& r, const u32* keep, const LpSpan& s,
                                                LpVec* stage, u32 c0, float& m, u32& mh) {
    lp_chunk_issue<K, MAXV>(r, keep, s, stage, false);
    return lp_chunk_finish<K, MAXV>(r, keep, s, stage, c0, m, mh, false);
}

// The largest of every thread's `m` in the block, returned to every thread (`red`: a word per
// warp). Ends with a barrier.
__device__ __forceinline__ float lp_block_max(float m, float* red) {
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31u) == 0u) red[threadIdx.x >> 5] = m;
    __syncthreads();
    float b = red[0];
    for (u32 w = 1; w < LP_THREADS / 32u; ++w) b = fmaxf(b, red[w]);
    return b;
}

// A kept element that survives a cut (not -inf, not NaN), listed in `list` (`*n` of them; at
// most LP_SURV_BLOCK stored, the count goes on) for a later, higher cut (`lp_dense_once`'s
// rows that do not wait).
#define LP_SURV_BLOCK 256u

__device__ __forceinline__ void lp_list_survivor(u32* n, u32* list, u32 t) {
    const u32 k = atomicAdd(n, 1u);
    if (k < LP_SURV_BLOCK) list[k] = t;
}

// Step 3 (rows with min-p): cuts the staged groups at `thr` and stores them. Masked elements
// hold -inf already (cutting them again is a no-op); a kept element's slot holds its tempered,
// rounded value y, and from_raw(to_raw(y)) == y for every non-NaN y. With LIST, the elements
// left above -inf are listed (`lp_list_survivor`; `c0` the chunk's first token).
template <int K, u32 MAXV, bool LIST>
__device__ __forceinline__ void lp_chunk_cut(const LpRow& r, const u32* keep, const LpSpan& s,
                                             LpVec* stage, float thr, u32 c0, u32* surv_n,
                                             u32* surv_s) {
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
    const u32 tid = threadIdx.x;
    for (u32 j = 0; j < MAXV; ++j) {
        const u32 v = tid + j * LP_THREADS;
        if (v >= s.nvec) break;
        const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
        if (bits == 0u) continue;
        LpVec q = stage[v];
#if LP_PACKED
        lp_vec_cut<K>(q, thr);
#else
        const u32 neg_raw = E::to_raw(LP_NEG_INF);
#pragma unroll
        for (u32 e = 0; e < VEC; ++e) {
            if (E::from_raw(lp_vec_get<E::ES>(q, e)) < thr) lp_vec_set<E::ES>(q, e, neg_raw);
        }
#endif
        // Most groups hold -inf only once cut (masked or below the threshold).
        if (LIST && !(q.w[0] == (u32)E::NEG_INF_WORD && q.w[1] == (u32)E::NEG_INF_WORD &&
                      q.w[2] == (u32)E::NEG_INF_WORD && q.w[3] == (u32)E::NEG_INF_WORD)) {
#pragma unroll
            for (u32 e = 0; e < VEC; ++e) {
                if (E::from_raw(lp_vec_get<E::ES>(q, e)) > LP_NEG_INF) {
                    lp_list_survivor(surv_n, surv_s, c0 + s.head + v * VEC + e);
                }
            }
        }
        lp_store_vec(s.body + (size_t)v * 16u, q);
    }
}

// The thread's end element, cut at `thr` (-inf without min-p) and tempered; with LIST, listed
// if it survives (as in `lp_chunk_cut`).
template <int K, bool LIST>
__device__ __forceinline__ void lp_chunk_end(const LpRow& r, const LpEnd& end, u32 c0, float thr,
                                             u32* surv_n, u32* surv_s) {
    typedef Lp<K> E;
    if (end.kept && r.values) {
        if (end.y < thr) {
            E::put(r.p, c0 + end.off, LP_NEG_INF);
        } else {
            if (r.temp != 1.0f) E::put(r.p, c0 + end.off, end.y);
            if (LIST && end.y > LP_NEG_INF) lp_list_survivor(surv_n, surv_s, c0 + end.off);
        }
    }
}
