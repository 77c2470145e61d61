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
//   or bitmask, global mask, step mask) in shared memory; `pass` 1 writes -inf over masked
//   tokens without reading them (16-byte stores on the aligned body), and tempers and cuts
//   the kept ones where the row has a temperature or min-p. Launches without min-p use pass 1
//   alone; with min-p, only where `lp_dense_once` cannot run (a device holding too few blocks
//   at once), pass 0 first writes the maximum of the kept, tempered logits of each chunk to
//   `partial`.
// * `lp_dense_once_<dtype>`: the dense phase of a launch with min-p in one pass: persistent
//   blocks take (row, chunk) tickets, stage their chunk in shared memory (kept 16-byte groups
//   read once, masked ones written -inf unread), publish the chunk's maximum, wait for the
//   row's other chunks, then cut and store (see its comment for why it cannot deadlock). A
//   row whose keep set is a short list never waits: its first chunk's block handles the kept
//   tokens alone.
// * `lp_dense_cluster_<dtype>` (sm_90 and later; an empty kernel below): the same one-pass dense
//   phase with one thread-block cluster per row (8 or 16 blocks, the row split between them
//   in shared memory, the row maximum exchanged through distributed shared memory after a
//   cluster barrier). The host uses it for launches with min-p and a temperature on devices
//   with clusters, `lp_dense_once` for the other launches with min-p (run 9 of
//   docs/benchmarks.md: clusters measured faster there only).
// On rows without a temperature, both one-pass kernels mask, take the maximum and cut whole
// 32-bit words at a time (`LP_PACKED`: packed f16x2/bf16x2 maxima on sm_80 and later).
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
struct __align__(16) LpVec {
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

// Whole-word forms of the per-element work of the one-read kernels on rows without a
// temperature (LP_PACKED; 0 keeps the per-element loops, for comparison).
#ifndef LP_PACKED
#define LP_PACKED 1
#endif

// -inf over the elements of `q` whose bit in `bits` is clear.
template <int K> __device__ __forceinline__ void lp_vec_mask(LpVec& q, u32 bits) {
    typedef Lp<K> E;
    if (E::ES == 4u) {
#pragma unroll
        for (u32 e = 0; e < 4u; ++e) q.w[e] = ((bits >> e) & 1u) ? q.w[e] : (u32)E::NEG_INF_WORD;
    } else {
#pragma unroll
        for (u32 i = 0; i < 4u; ++i) {
            const u32 b = (bits >> (2u * i)) & 3u;
            const u32 k = ((b & 1u) * 0xffffu) | ((b >> 1) * 0xffff0000u);
            q.w[i] = (q.w[i] & k) | ((u32)E::NEG_INF_WORD & ~k);
        }
    }
}

// The running maximum of every element of `q`: in `m` for f32; for 16-bit logits in `mh`, one
// maximum per half (NEG_INF_WORD to start; NaN never wins, as with fmaxf), folded by
// `lp_max_fold`.
template <int K> __device__ __forceinline__ void lp_vec_max(u32& mh, float& m, const LpVec& q) {
    typedef Lp<K> E;
#pragma unroll
    for (u32 i = 0; i < 4u; ++i) {
        if (E::ES == 4u) {
            m = fmaxf(m, __uint_as_float(q.w[i]));
        } else {
#if __CUDA_ARCH__ >= 800
            if (K == 1) asm("max.f16x2 %0, %0, %1;" : "+r"(mh) : "r"(q.w[i]));
            else asm("max.bf16x2 %0, %0, %1;" : "+r"(mh) : "r"(q.w[i]));
#else
            m = fmaxf(m, fmaxf(E::from_raw(q.w[i] & 0xffffu), E::from_raw(q.w[i] >> 16)));
#endif
        }
    }
}

template <int K> __device__ __forceinline__ float lp_max_fold(u32 mh, float m) {
    typedef Lp<K> E;
    if (E::ES == 4u) return m;
    return fmaxf(m, fmaxf(E::from_raw(mh & 0xffffu), E::from_raw(mh >> 16)));
}

// -inf over the elements of `q` below `thr`.
template <int K> __device__ __forceinline__ void lp_vec_cut(LpVec& q, float thr) {
    typedef Lp<K> E;
#pragma unroll
    for (u32 i = 0; i < 4u; ++i) {
        const u32 w = q.w[i];
        if (E::ES == 4u) {
            q.w[i] = __uint_as_float(w) < thr ? (u32)E::NEG_INF_WORD : w;
        } else {
            const u32 k = (E::from_raw(w & 0xffffu) < thr ? 0u : 0xffffu) |
                          (E::from_raw(w >> 16) < thr ? 0u : 0xffff0000u);
            q.w[i] = (w & k) | ((u32)E::NEG_INF_WORD & ~k);
        }
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
    if (r.has_min_p) {
        float m = y;
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if ((tid & 31u) == 0u) red[tid >> 5] = m;
        __syncthreads();
        float b = red[0];
        for (u32 w = 1; w < LP_THREADS / 32u; ++w) b = fmaxf(b, red[w]);
        thr = __fadd_rn(b, r.lnp);
    }
    if (kept) {
        if (y < thr) E::put(r.p, t, LP_NEG_INF);
        else if (r.temp != 1.0f) E::put(r.p, t, y);
    }
}

// The one-launch form: every kept logit is read once. Persistent blocks take tickets
// (`sync[0]`); ticket k is chunk k % nchunks of row k / nchunks, so a row's chunks go to
// consecutive tickets. A block copies its chunk into its own slots of `stage` (shared memory;
// masked 16-byte groups are written -inf, never read), masks and tempers it there and, for a
// row with min-p, publishes the chunk's maximum into the row's slot (`sync[2 + 2 * row]`,
// atomicMax of `lp_key`; arrivals counted in `sync[3 + 2 * row]`) before it waits for the
// row's other chunks; then it cuts and stores. Rows whose keep set is a list never wait (see
// `lp_list_row`). A waiting block has published, and the row's other chunks are held by blocks
// that publish before they wait, or are taken next by a block that is not waiting (a block
// takes its next ticket only once its own row is complete): at most nchunks - 1 blocks wait at
// any time, so the launch finishes whenever the device can hold more than that many blocks
// (the host checks). The last block to exit zeroes the row slots and `sync[0..2]`, so the
// scratch is all zero between launches.
template <int K>
__device__ __forceinline__ void lp_dense_once(
    char* logits, u32 batch, u32 vocab, u32 chunk,
    const u32* keep_t, u32 keep_w, const u32* gbits,
    const u32* smask, const u32* sactive,
    const u32* temps, const u32* minps,
    u32* sync, u32 nchunks)
{
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
    const u32 AHEAD = LP_THREADS - 32u; // the thread that takes the next ticket
    __shared__ u32 keep[LP_ONCE_KEEP_WORDS];
    __shared__ float red[LP_THREADS / 32u];
    __shared__ float thr_s;
    __shared__ u32 ticket_s[2];   // this ticket and the next (by parity)
    __shared__ u32 words_s[2][4]; // their rows' `lp_row_words`
    __shared__ u32 last_s;
    __shared__ LpVec stage[LP_THREADS * LP_VECS]; // the chunk; a thread uses its own slots only

    const u32 tid = threadIdx.x;
    const u32 total = batch * nchunks;
    const u32 neg_raw = E::to_raw(LP_NEG_INF);
    if (tid == AHEAD) {
        const u32 t = atomicAdd(&sync[0], 1u);
        ticket_s[0] = t;
        if (t < total) lp_row_words(words_s[0], t / nchunks, keep_t, keep_w, smask, sactive, temps, minps);
    }
    __syncthreads();
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
        if ((!r.has_min_p || list) && tid == AHEAD) next = atomicAdd(&sync[0], 1u);
        if (list) {
            lp_list_row<K>(keep, red, r, gbits, c0, c1);
        } else if (r.masked || r.values) {
            if (r.masked) lp_build_keep_once(keep, r, gbits, c0, c1);
            const LpSpan s = lp_span<K>(r.p, c0, c1 - c0);

            // Loads first, straight to this thread's slots of `stage` (all in flight at once);
            // fully masked groups are written now, never read.
            const u32 sbase = (u32)__cvta_generic_to_shared(stage);
            for (u32 j = 0; j < LP_VECS; ++j) {
                const u32 v = tid + j * LP_THREADS;
                if (v >= s.nvec) break;
                const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                char* p = s.body + (size_t)v * 16u;
                if (bits == 0u) {
                    lp_store16(p, E::NEG_INF_WORD);
                } else if (bits != full || r.values) {
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sbase + 16u * v), "l"(p) : "memory");
                }
            }
            // The unaligned ends: one element per thread (head + tail < 2 * VEC <= LP_THREADS).
            const u32 nscal = s.head + s.tail;
            u32 soff = 0u;
            bool skept = false;
            float ys = LP_NEG_INF;
            if (tid < nscal) {
                soff = tid < s.head ? tid : s.body_end + (tid - s.head);
                skept = !r.masked || ((keep[soff >> 5] >> (soff & 31u)) & 1u);
                if (!skept) E::put(r.p, c0 + soff, LP_NEG_INF);
                else if (r.values) ys = lp_tempered<K>(r.p, c0 + soff, r.temp);
            }
            asm volatile("cp.async.wait_all;" ::: "memory");

            // Mask and temper; the chunk's maximum of kept, tempered logits. Without min-p the
            // result is final and stored now; with it, it goes back to `stage` until the cut.
            float m = skept ? ys : LP_NEG_INF;
            u32 mh = E::NEG_INF_WORD;
            for (u32 j = 0; j < LP_VECS; ++j) {
                const u32 v = tid + j * LP_THREADS;
                if (v >= s.nvec) break;
                const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                if (bits == 0u || (bits == full && !r.values)) continue;
                LpVec q = stage[v];
#if LP_PACKED
                if (r.temp == 1.0f) { // row-uniform
                    if (bits != full) lp_vec_mask<K>(q, bits);
                    if (r.has_min_p) lp_vec_max<K>(mh, m, q);
                    if (bits != full) {
                        if (r.has_min_p) stage[v] = q;
                        else lp_store_vec(s.body + (size_t)v * 16u, q);
                    }
                    continue;
                }
#endif
                if (bits != full || r.temp != 1.0f) {
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
                    if (r.has_min_p) stage[v] = q;
                    else lp_store_vec(s.body + (size_t)v * 16u, q);
                } else { // a full group, min-p only: the maximum alone
#pragma unroll
                    for (u32 e = 0; e < VEC; ++e) m = fmaxf(m, E::from_raw(lp_vec_get<E::ES>(q, e)));
                }
            }

            float thr = LP_NEG_INF;
            if (r.has_min_p) { // block-uniform
                m = lp_max_fold<K>(mh, m);
                for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                if ((tid & 31u) == 0u) red[tid >> 5] = m;
                __syncthreads();
                if (tid == 0) {
                    float b = red[0];
                    for (u32 w = 1; w < LP_THREADS / 32u; ++w) b = fmaxf(b, red[w]);
                    u32* slot = sync + 2u + 2u * row;
                    // Publish (the maximum, then the arrival, released after it) and wait.
                    asm volatile("red.relaxed.gpu.global.max.u32 [%0], %1;" ::"l"(slot), "r"(lp_key(b)) : "memory");
                    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(slot + 1) : "memory");
                    while (lp_load_acquire(slot + 1) < nchunks) __nanosleep(64);
                    thr_s = __fadd_rn(lp_unkey(lp_load_relaxed(slot)), r.lnp);
                }
                __syncthreads();
                thr = thr_s;
                if (tid == AHEAD) next = atomicAdd(&sync[0], 1u);

                // Cut and store. Masked elements hold -inf already (cutting them again is a
                // no-op); a kept element's slot holds its tempered, rounded value y, and
                // from_raw(to_raw(y)) == y for every non-NaN y.
                for (u32 j = 0; j < LP_VECS; ++j) {
                    const u32 v = tid + j * LP_THREADS;
                    if (v >= s.nvec) break;
                    const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                    if (bits == 0u) continue;
                    LpVec q = stage[v];
#if LP_PACKED
                    lp_vec_cut<K>(q, thr);
#else
#pragma unroll
                    for (u32 e = 0; e < VEC; ++e) {
                        if (E::from_raw(lp_vec_get<E::ES>(q, e)) < thr) lp_vec_set<E::ES>(q, e, neg_raw);
                    }
#endif
                    lp_store_vec(s.body + (size_t)v * 16u, q);
                }
            }
            if (skept && r.values) {
                if (ys < thr) E::put(r.p, c0 + soff, LP_NEG_INF);
                else if (r.temp != 1.0f) E::put(r.p, c0 + soff, ys);
            }
        }
        if (tid == AHEAD) {
            ticket_s[cur ^ 1u] = next;
            if (next < total) lp_row_words(words_s[cur ^ 1u], next / nchunks, keep_t, keep_w, smask, sactive, temps, minps);
        }
        __syncthreads(); // `keep`, `red`, `thr_s` are reused by the next ticket
    }
    // The last block to exit zeroes the scratch (every other block is done with it).
    if (tid == 0) last_s = atomicAdd(&sync[1], 1u) == gridDim.x - 1u;
    __syncthreads();
    if (last_s) {
        __threadfence();
        for (u32 k = tid; k < 2u * batch; k += LP_THREADS) sync[2 + k] = 0u;
        if (tid == 0) {
            sync[0] = 0u;
            sync[1] = 0u;
        }
    }
}

// ------------------------------------------------------------------------------------------
// Thread-block clusters (sm_90 and later).

#if __CUDA_ARCH__ >= 900
// The block's rank in its cluster.
__device__ __forceinline__ u32 lp_cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Every thread of every block of the cluster arrives (its shared-memory writes released),
// then waits (acquiring the others').
__device__ __forceinline__ void lp_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// The float at `p` (this block's shared memory) in the shared memory of block `rank` of the
// cluster.
__device__ __forceinline__ float lp_cluster_load(const float* p, u32 rank) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(a), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

#endif

extern __shared__ __align__(16) unsigned char lp_dyn[];

// The dense phase of a launch with min-p in one pass, on a device with clusters: grid
// (cluster size, rows), one cluster (blockDim 256, all of grid.x) per row at a time. Block
// `rank` owns tokens [rank * slice, (rank + 1) * slice) of its rows (`slice` a multiple of 32)
// and holds them in dynamic shared memory (`slice * ES` bytes of logits, then `slice / 32 + 2`
// keep words): kept 16-byte groups are read once (cp.async), masked ones written -inf unread;
// it masks and tempers them there, puts its maximum in `cmax` and, after a cluster barrier,
// reads every block's `cmax` through distributed shared memory, cuts and stores. The blocks of
// a cluster run at once, so the wait is short and cannot deadlock. `cmax` alternates by row
// parity (a block reaches the next row's slot only after every block has passed this row's
// barrier, that is, has read this row's slots), and a last barrier keeps every block alive
// until the others have read its slots. Rows whose keep set is a list: `lp_list_row`.
template <int K>
__device__ __forceinline__ void lp_dense_cluster(
    char* logits, u32 batch, u32 vocab, u32 slice,
    const u32* keep_t, u32 keep_w, const u32* gbits,
    const u32* smask, const u32* sactive,
    const u32* temps, const u32* minps)
{
#if __CUDA_ARCH__ >= 900
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    const u32 full = (1u << VEC) - 1u;
    __shared__ float red[LP_THREADS / 32u];
    __shared__ float cmax[2];
    LpVec* stage = reinterpret_cast<LpVec*>(lp_dyn);
    u32* keep = reinterpret_cast<u32*>(lp_dyn + (size_t)slice * E::ES);

    const u32 tid = threadIdx.x, lane = tid & 31u;
    const u32 rank = lp_cluster_rank();
    const u32 csize = gridDim.x;
    const u32 neg_raw = E::to_raw(LP_NEG_INF);
    const u32 sbase = (u32)__cvta_generic_to_shared(stage);
    u32 parity = 0u;
    for (u32 row = blockIdx.y; row < batch; row += gridDim.y) {
        const LpRow r = lp_row<K>(logits, row, vocab, keep_t, keep_w, gbits, smask, sactive,
                                  temps, minps);
        const u32 c0 = min(rank * slice, vocab);
        const u32 c1 = min(c0 + slice, vocab);
        const bool list = r.head_word != 0u && r.head_word != LP_KEEP_BITMASK;
        if (list) {
            lp_list_row<K>(keep, red, r, gbits, c0, c1);
        } else if (r.masked || r.values) { // row-uniform: the whole cluster takes it
            if (r.masked) lp_build_keep_once(keep, r, gbits, c0, c1);
            const LpSpan s = lp_span<K>(r.p, c0, c1 - c0);
            for (u32 v = tid; v < s.nvec; v += LP_THREADS) {
                const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                char* p = s.body + (size_t)v * 16u;
                if (bits == 0u) {
                    lp_store16(p, E::NEG_INF_WORD);
                } else if (bits != full || r.values) {
                    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sbase + 16u * v), "l"(p) : "memory");
                }
            }
            const u32 nscal = s.head + s.tail;
            u32 soff = 0u;
            bool skept = false;
            float ys = LP_NEG_INF;
            if (tid < nscal) {
                soff = tid < s.head ? tid : s.body_end + (tid - s.head);
                skept = !r.masked || ((keep[soff >> 5] >> (soff & 31u)) & 1u);
                if (!skept) E::put(r.p, c0 + soff, LP_NEG_INF);
                else if (r.values) ys = lp_tempered<K>(r.p, c0 + soff, r.temp);
            }
            asm volatile("cp.async.wait_all;" ::: "memory");

            float m = skept ? ys : LP_NEG_INF;
            u32 mh = E::NEG_INF_WORD;
            for (u32 v = tid; v < s.nvec; v += LP_THREADS) {
                const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                if (bits == 0u || (bits == full && !r.values)) continue;
                LpVec q = stage[v];
#if LP_PACKED
                if (r.temp == 1.0f) { // row-uniform
                    if (bits != full) lp_vec_mask<K>(q, bits);
                    if (r.has_min_p) lp_vec_max<K>(mh, m, q);
                    if (bits != full) {
                        if (r.has_min_p) stage[v] = q;
                        else lp_store_vec(s.body + (size_t)v * 16u, q);
                    }
                    continue;
                }
#endif
                if (bits != full || r.temp != 1.0f) {
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
                    if (r.has_min_p) stage[v] = q;
                    else lp_store_vec(s.body + (size_t)v * 16u, q);
                } else {
#pragma unroll
                    for (u32 e = 0; e < VEC; ++e) m = fmaxf(m, E::from_raw(lp_vec_get<E::ES>(q, e)));
                }
            }

            float thr = LP_NEG_INF;
            if (r.has_min_p) { // row-uniform
                m = lp_max_fold<K>(mh, m);
                for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                if (lane == 0u) red[tid >> 5] = m;
                __syncthreads();
                if (tid == 0u) {
                    float b = red[0];
                    for (u32 w = 1; w < LP_THREADS / 32u; ++w) b = fmaxf(b, red[w]);
                    cmax[parity] = b;
                }
                lp_cluster_sync();
                float b = lane < csize ? lp_cluster_load(&cmax[parity], lane) : LP_NEG_INF;
                for (int o = 16; o > 0; o >>= 1) b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
                thr = __fadd_rn(b, r.lnp);
                parity ^= 1u;
                // Cut and store (as in `lp_dense_once`).
                for (u32 v = tid; v < s.nvec; v += LP_THREADS) {
                    const u32 bits = r.masked ? lp_keep_bits(keep, s.head + v * VEC, VEC) : full;
                    if (bits == 0u) continue;
                    LpVec q = stage[v];
#if LP_PACKED
                    lp_vec_cut<K>(q, thr);
#else
#pragma unroll
                    for (u32 e = 0; e < VEC; ++e) {
                        if (E::from_raw(lp_vec_get<E::ES>(q, e)) < thr) lp_vec_set<E::ES>(q, e, neg_raw);
                    }
#endif
                    lp_store_vec(s.body + (size_t)v * 16u, q);
                }
            }
            if (skept && r.values) {
                if (ys < thr) E::put(r.p, c0 + soff, LP_NEG_INF);
                else if (r.temp != 1.0f) E::put(r.p, c0 + soff, ys);
            }
        }
        __syncthreads(); // `keep` and `red` are reused by the next row
    }
    lp_cluster_sync(); // the other blocks may still read this block's `cmax`
#endif
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
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(LP_THREADS, LP_ONCE_BLOCKS) lp_dense_once_##NAME(                    \
        char* logits, u32 batch, u32 vocab, u32 chunk, const u32* keep_t, u32 keep_w,          \
        const u32* gbits, const u32* smask, const u32* sactive, const u32* temps,              \
        const u32* minps, u32* sync, u32 nchunks) {                                            \
        lp_dense_once<K>(logits, batch, vocab, chunk, keep_t, keep_w, gbits, smask, sactive,   \
                         temps, minps, sync, nchunks);                                         \
    }                                                                                          \
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
        const u32 i = o[1 + 2 * old_w + k];
        const u32 v = o[2 + 2 * i];
        if (v == 0u) continue;
        const u32 j = lp_claim(t, w, o[1 + 2 * i] - 1u);
        t[2 + 2 * j] = v;
    }
}
