// The fused op of logits-processors on CUDA (see src/kernels/mod.rs for the semantics and
// src/kernels/cpu.rs for the reference). Compiled with NVRTC at first use; no headers needed.
// Half-precision logits are handled as raw 16-bit patterns; every result is computed in f32
// with IEEE round-to-nearest intrinsics and stored rounded, bit-identical to the CPU path.
//
// Entry points, per dtype (f32, f16, bf16):
// * `lp_sparse_<dtype>`: grid (batch). Block r applies, in order and separated by barriers,
//   the bans, the global boost, the bias and the penalties of row r to the listed tokens only.
// * `lp_dense_<dtype>`: grid (chunks, rows). Block (c, r) owns the tokens [c*chunk,
//   (c+1)*chunk) of rows r, r + gridDim.y, ... It builds the chunk's keep mask (per-row list
//   or bitmask, global mask, step mask) in shared memory; `pass` 0 writes the maximum of the
//   kept, tempered logits of its chunk to `partial` (rows with min-p only); `pass` 1 writes
//   -inf over masked tokens without reading them (16-byte stores on the aligned body), and
//   tempers and cuts the kept ones where the row has a temperature or min-p.
// * `lp_scatter`: the deferred single-word writes of every host table of a device, one launch.
// * `lp_counts`, `lp_count_rehash`: the penalty count tables (see src/kernels/counts.rs),
//   processed or rehashed outside the sparse phase.
// The sparse phase first brings the row's penalty counts up to date from the step's log.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define LP_MAX_CHUNK 16384
#define LP_KEEP_WORDS (LP_MAX_CHUNK / 32 + 2)
#define LP_KEEP_BITMASK 0xffffffffu
#define LP_IN_PROMPT 0x80000000u
#define LP_NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float lp_f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 lp_f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Bit-exact with half::bf16::from_f32 (round to nearest even, NaN kept quiet).
__device__ __forceinline__ u16 lp_f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((x >> 16) | 0x40u);
    }
    if ((x & 0x8000u) != 0u && (x & 0x17fffu) != 0u) {
        return (u16)((x >> 16) + 1u);
    }
    return (u16)(x >> 16);
}

// K: 0 = f32, 1 = f16, 2 = bf16.
template <int K> struct Lp;

template <> struct Lp<0> {
    enum : u32 { ES = 4u, NEG_INF_WORD = 0xff800000u };
    static __device__ __forceinline__ float get(const char* row, u32 t) {
        return reinterpret_cast<const float*>(row)[t];
    }
    static __device__ __forceinline__ void put(char* row, u32 t, float x) {
        reinterpret_cast<float*>(row)[t] = x;
    }
    static __device__ __forceinline__ float round(float x) { return x; }
    static __device__ __forceinline__ float from_raw(u32 r) { return __uint_as_float(r); }
    static __device__ __forceinline__ u32 to_raw(float x) { return __float_as_uint(x); }
};

template <> struct Lp<1> {
    enum : u32 { ES = 2u, NEG_INF_WORD = 0xfc00fc00u };
    static __device__ __forceinline__ float get(const char* row, u32 t) {
        return lp_f16_to_f32(reinterpret_cast<const u16*>(row)[t]);
    }
    static __device__ __forceinline__ void put(char* row, u32 t, float x) {
        reinterpret_cast<u16*>(row)[t] = lp_f32_to_f16(x);
    }
    static __device__ __forceinline__ float round(float x) { return lp_f16_to_f32(lp_f32_to_f16(x)); }
    static __device__ __forceinline__ float from_raw(u32 r) { return lp_f16_to_f32((u16)r); }
    static __device__ __forceinline__ u32 to_raw(float x) { return (u32)lp_f32_to_f16(x); }
};

template <> struct Lp<2> {
    enum : u32 { ES = 2u, NEG_INF_WORD = 0xff80ff80u };
    static __device__ __forceinline__ float get(const char* row, u32 t) {
        return __uint_as_float(((u32) reinterpret_cast<const u16*>(row)[t]) << 16);
    }
    static __device__ __forceinline__ void put(char* row, u32 t, float x) {
        reinterpret_cast<u16*>(row)[t] = lp_f32_to_bf16(x);
    }
    static __device__ __forceinline__ float round(float x) {
        return __uint_as_float(((u32)lp_f32_to_bf16(x)) << 16);
    }
    static __device__ __forceinline__ float from_raw(u32 r) { return __uint_as_float(r << 16); }
    static __device__ __forceinline__ u32 to_raw(float x) { return (u32)lp_f32_to_bf16(x); }
};

__device__ __forceinline__ void lp_store16(char* p, u32 w) {
    asm volatile("st.global.v4.u32 [%0], {%1, %1, %1, %1};" ::"l"(p), "r"(w) : "memory");
}

// 16 bytes of logits in registers: element e of VEC = 16 / ES.
struct LpVec {
    u32 w[4];
};

__device__ __forceinline__ LpVec lp_load_vec(const char* p) {
    LpVec v;
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3])
                 : "l"(p));
    return v;
}

__device__ __forceinline__ void lp_store_vec(char* p, const LpVec& v) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.w[0]), "r"(v.w[1]),
                 "r"(v.w[2]), "r"(v.w[3])
                 : "memory");
}

template <u32 ES> __device__ __forceinline__ u32 lp_vec_get(const LpVec& v, u32 e) {
    if (ES == 4u) return v.w[e];
    return (v.w[e >> 1] >> ((e & 1u) * 16u)) & 0xffffu;
}

template <u32 ES> __device__ __forceinline__ void lp_vec_set(LpVec& v, u32 e, u32 raw) {
    if (ES == 4u) {
        v.w[e] = raw;
    } else {
        const u32 sh = (e & 1u) * 16u;
        v.w[e >> 1] = (v.w[e >> 1] & ~(0xffffu << sh)) | ((raw & 0xffffu) << sh);
    }
}

// ------------------------------------------------------------------------------------------
// Penalty counts (see src/kernels/counts.rs for the layout and the log). A slot row is
// [used, key_0, value_0, ..., key_{W-1}, value_{W-1}, list_0, ..., list_{W/2-1}];
// key = token + 1 (0 empty), value = count << 1 | in_prompt.

#define LP_NO_SLOT 0xffffffffu
#define LP_RESET 0x80000000u
#define LP_SLOT_MASK 0x3fffffffu

__device__ __forceinline__ u32 lp_home(u32 token, u32 w) {
    const u32 shift = 64u - (31u - __clz(w));
    return (u32)(((u64)(token + 1u) * 0x9E3779B97F4A7C15ull) >> shift);
}

// The position of `token` in the slot row `tab` (W positions), claimed and listed if absent.
// Safe for concurrent callers of one block or grid.
__device__ __forceinline__ u32 lp_claim(u32* tab, u32 w, u32 token) {
    const u32 key = token + 1u;
    u32 i = lp_home(token, w);
    for (;;) {
        u32 k = *reinterpret_cast<volatile u32*>(&tab[1 + 2 * i]);
        if (k == 0u) {
            k = atomicCAS(&tab[1 + 2 * i], 0u, key);
            if (k == 0u) {
                const u32 pos = atomicAdd(&tab[0], 1u);
                if (pos < w / 2u) tab[1 + 2 * w + pos] = i;
                return i;
            }
        }
        if (k == key) return i;
        i = (i + 1u) & (w - 1u);
    }
}

// Processes the log's changes of one slot (called by every thread of a block; ends with a
// barrier): the reset first, then its entries, in parallel (the updates commute).
__device__ void lp_count_slot(u32* tab, u32 w, const u32* log, u32 slots, u32 slot) {
    const u32 tid = threadIdx.x, nt = blockDim.x;
    const u32 h = log[slot];
    u32 first = 0u;
    if (h & LP_RESET) {
        first = h & ~LP_RESET;
        for (u32 k = tid; k < 1u + 2u * w; k += nt) tab[k] = 0u;
    }
    __syncthreads();
    const u32 n = log[slots];
    const u32* e = log + slots + 1;
    for (u32 k = first + tid; k < n; k += nt) {
        const u32 a = e[2 * k];
        if ((a & LP_SLOT_MASK) != slot) continue;
        const u32 i = lp_claim(tab, w, e[2 * k + 1]);
        u32* v = &tab[2 + 2 * i];
        switch (a >> 30) {
            case 0u: atomicAdd(v, 2u); break;
            case 1u: atomicSub(v, 2u); break;
            default: atomicOr(v, 1u); break;
        }
    }
    __syncthreads();
}

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

// ------------------------------------------------------------------------------------------
// Dense phase.

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
    const u32 span = c1 - c0;
    const u32 nwords = (span + 31u) >> 5;
    const u32 w0 = c0 >> 5;
    const u32 vwords = (vocab + 31u) >> 5;

    for (u32 row = blockIdx.y; row < batch; row += gridDim.y) {
        char* rowp = logits + (size_t)row * vocab * E::ES;
        const u32* entry = keep_t ? keep_t + (size_t)row * keep_w : (const u32*)0;
        const u32 head_word = entry ? entry[0] : 0u;
        const bool forced = head_word != 0u;
        const bool forced_bits = head_word == LP_KEEP_BITMASK;
        const bool stepped = smask && sactive[row] != 0u;
        const u32* srow = stepped ? smask + (size_t)row * vwords : (const u32*)0;
        const float temp = temps ? __uint_as_float(temps[row]) : 1.0f;
        const float lnp = minps ? __uint_as_float(minps[row]) : LP_NEG_INF;
        const bool has_min_p = lnp != LP_NEG_INF;
        const bool values = temp != 1.0f || has_min_p;
        const bool masked = forced || gbits || stepped;
        if (pass == 0 && !has_min_p) continue; // row-uniform branches
        if (!masked && !values) continue;

        // The chunk's keep mask (padded with zero words).
        for (u32 w = tid; w < nwords + 2u; w += nt) {
            u32 k = 0u;
            if (w < nwords) {
                k = 0xffffffffu;
                if (forced) k = forced_bits ? entry[1 + w0 + w] : 0u;
                if (gbits) k &= gbits[w0 + w];
                if (srow) k &= srow[w0 + w];
            }
            keep[w] = k;
        }
        __syncthreads();
        if (forced && !forced_bits) {
            for (u32 k = tid; k < head_word; k += nt) {
                const u32 t = entry[1 + k];
                if (t >= c0 && t < c1 && (!gbits || ((gbits[t >> 5] >> (t & 31u)) & 1u)) &&
                    (!srow || ((srow[t >> 5] >> (t & 31u)) & 1u))) {
                    atomicOr(&keep[(t - c0) >> 5], 1u << ((t - c0) & 31u));
                }
            }
        }
        __syncthreads();

        // The 16-byte aligned part of the chunk: [c0 + head, c0 + head + nvec * VEC).
        const u64 a = (u64)(rowp + (size_t)c0 * E::ES);
        u32 head = (u32)(((16u - (u32)(a & 15u)) & 15u) / E::ES);
        if (head > span) head = span;
        const u32 nvec = (span - head) / VEC;
        const u32 body_end = head + nvec * VEC;
        const u32 tail = span - body_end;
        char* body = rowp + (size_t)(c0 + head) * E::ES;
        const u32 full = (1u << VEC) - 1u;

        if (pass == 0) {
            float m = LP_NEG_INF;
            for (u32 v = tid; v < nvec; v += nt) {
                const u32 off = head + v * VEC;
                const u32 bits = lp_keep_bits(keep, off, VEC);
                if (bits == 0u) continue;
                const LpVec q = lp_load_vec(body + (size_t)v * 16u);
#pragma unroll
                for (u32 e = 0; e < VEC; ++e) {
                    if ((bits >> e) & 1u) {
                        const float x = E::from_raw(lp_vec_get<E::ES>(q, e));
                        m = fmaxf(m, temp != 1.0f ? E::round(__fdiv_rn(x, temp)) : x);
                    }
                }
            }
            for (u32 i = tid; i < head + tail; i += nt) {
                const u32 off = i < head ? i : body_end + (i - head);
                if ((keep[off >> 5] >> (off & 31u)) & 1u) m = fmaxf(m, lp_tempered<K>(rowp, c0 + off, temp));
            }
            for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
            if ((tid & 31u) == 0u) red[tid >> 5] = m;
            __syncthreads();
            if (tid == 0) {
                float r = LP_NEG_INF;
                for (u32 w = 0; w < (nt + 31u) / 32u; ++w) r = fmaxf(r, red[w]);
                partial[(size_t)row * nchunks + blockIdx.x] = r;
            }
            __syncthreads();
            continue;
        }

        if (has_min_p) {
            if (tid == 0) {
                float r = LP_NEG_INF;
                for (u32 c = 0; c < nchunks; ++c) r = fmaxf(r, partial[(size_t)row * nchunks + c]);
                thr_s = __fadd_rn(r, lnp);
            }
            __syncthreads();
        }
        const float thr = has_min_p ? thr_s : LP_NEG_INF;
        const u32 neg_raw = E::to_raw(LP_NEG_INF);

        for (u32 v = tid; v < nvec; v += nt) {
            const u32 off = head + v * VEC;
            const u32 bits = lp_keep_bits(keep, off, VEC);
            char* p = body + (size_t)v * 16u;
            if (bits == 0u) {
                lp_store16(p, E::NEG_INF_WORD);
            } else if (bits != full || values) {
                LpVec q = lp_load_vec(p);
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
        for (u32 i = tid; i < head + tail; i += nt) {
            const u32 off = i < head ? i : body_end + (i - head);
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

#define LP_ENTRY(NAME, K)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) lp_sparse_##NAME(                        \
        char* logits, u32 vocab, const u32* bans0, u32 bans0_w, const u32* bans1, u32 bans1_w, \
        const u32* ids, u32 n_ids, float boost, const u32* bias, u32 bias_w, u32* pen,         \
        u32 pen_w, u32 pen_hw, const u32* pen_params, const u32* pen_log, u32 pen_slots) {      \
        lp_sparse<K>(logits, vocab, bans0, bans0_w, bans1, bans1_w, ids, n_ids, boost, bias,   \
                     bias_w, pen, pen_w, pen_hw, pen_params, pen_log, pen_slots);              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256) lp_dense_##NAME(                         \
        char* logits, u32 batch, u32 vocab, u32 chunk, const u32* keep_t, u32 keep_w,          \
        const u32* gbits, const u32* smask, const u32* sactive, const u32* temps,              \
        const u32* minps, float* partial, u32 nchunks, int pass) {                             \
        lp_dense<K>(logits, batch, vocab, chunk, keep_t, keep_w, gbits, smask, sactive, temps, \
                    minps, partial, nchunks, pass);                                            \
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
        const u32 i = o[1 + 2 * old_w + k];
        const u32 v = o[2 + 2 * i];
        if (v == 0u) continue;
        const u32 j = lp_claim(t, w, o[1 + 2 * i] - 1u);
        t[2 + 2 * j] = v;
    }
}
