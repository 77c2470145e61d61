// The fused op of logits-processors on CUDA (see src/kernels/mod.rs for the semantics and
// src/kernels/cpu.rs for the reference). Compiled with NVRTC at first use; no headers needed.
// The source is the files of this folder concatenated in order (src/kernels/cuda.rs `SOURCE`):
// common.cu (this overview, types, conversions, 16-byte vectors), counts.cu, sparse.cu,
// dense.cu, dense_once.cu, dense_cluster.cu, entries.cu.
// Half-precision logits are handled as raw 16-bit patterns; every result is computed in f32
// with IEEE round-to-nearest intrinsics and stored rounded, bit-identical to the CPU path.
//
// Entry points, per dtype (f32, f16, bf16):
// * `lp_sparse_<dtype>`: grid (batch). Block r applies, in order and separated by barriers,
//   the bans, the global boost, the bias and the penalties of row r to the listed tokens only;
//   with folded penalties (a fold list given), a row that `lp_dense_once_fold` stages whole has
//   its penalty entries sorted by chunk into its fold list instead (`lp_fold_row`).
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
//   tokens alone. Its `flags` (LP_ONCE_*): a row's step mask copied beside its logits
//   (cp.async), and rows that publish without waiting (`lp_nowait_publish`, `lp_finalize`).
//   `lp_dense_once_fold_<dtype>` is the same kernel applying each chunk's folded penalties to
//   the staged chunk (`lp_fold_apply`) before it masks, tempers and cuts.
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

// Bit-exact with half::bf16::from_f32 (round to nearest even, NaN kept quiet with its sign and
// high payload bits). On sm_80 and later the conversion instruction rounds (it also rounds to
// nearest even, subnormals included); only a NaN's bits are made by hand, as the instruction
// returns the canonical NaN.
__device__ __forceinline__ u16 lp_f32_to_bf16(float f) {
    const u32 x = __float_as_uint(f);
    const u16 nan = (u16)((x >> 16) | 0x40u);
#if __CUDA_ARCH__ >= 800
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return (x & 0x7fffffffu) > 0x7f800000u ? nan : h;
#else
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return nan;
    }
    if ((x & 0x8000u) != 0u && (x & 0x17fffu) != 0u) {
        return (u16)((x >> 16) + 1u);
    }
    return (u16)(x >> 16);
#endif
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

// Programmatic dependent launch (sm_90 and later; no-ops elsewhere, and where the launch did
// not ask for it). `lp_grid_release`: the next kernel of the stream may start now (it waits in
// `lp_grid_wait` for this one to complete and its writes to be visible).
__device__ __forceinline__ void lp_grid_release() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void lp_grid_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

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

// Temperature: x / t correctly rounded (`__fdiv_rn`), then rounded to the logits' type. The
// division is the one `__fdiv_rn` performs on its fast path (a reciprocal refined once, a
// product and one correction), with the reciprocal's part hoisted out of the row: `lp_recip`
// per row, `lp_div` per element. That path is exact where neither operand nor any
// intermediate leaves the normal range, which holds for 2^-20 <= t < 2^20 (else `lp_recip`
// returns 0: the row takes `__fdiv_rn`) and 2^-100 <= |x| < 2^100; ±0 and ±inf are their own
// quotient (`lp_div_ok`: other elements, NaNs included, take `__fdiv_rn`).
__device__ __forceinline__ float lp_recip(float t) {
    const u32 e = (__float_as_uint(t) >> 23) & 0xffu; // t > 0: the sign bit is clear
    if (!(t > 0.0f) || e < 127u - 20u || e >= 127u + 20u) return 0.0f;
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(t));
    return __fmaf_rn(r, __fmaf_rn(r, -t, 1.0f), r);
}

// x / t for t > 0 (±0 and ±inf stay themselves).
__device__ __forceinline__ float lp_div(float x, float t, float r) {
    const float q = __fmul_rn(x, r);
    const float y = __fmaf_rn(r, __fmaf_rn(-q, t, x), q);
    return x == 0.0f || fabsf(x) == __int_as_float(0x7f800000) ? x : y;
}

// Whether f32 bits `b` are a number `lp_div` handles (2^-100 <= |x| < 2^100, ±0, ±inf).
__device__ __forceinline__ bool lp_div_ok(u32 b) {
    const u32 a = b & 0x7fffffffu;
    return ((b >> 23) & 0xffu) - (127u - 100u) < 200u || a == 0u || a == 0x7f800000u;
}

// Two f32 rounded to the logits' 16-bit type, packed (`hi` in the upper half); not for NaNs
// (their bits are not kept).
template <int K> __device__ __forceinline__ u32 lp_pack2(float hi, float lo) {
    u32 w;
#if __CUDA_ARCH__ >= 800
    if (K == 1) asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
    else asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
#else
    w = (u32)Lp<K>::to_raw(lo) | ((u32)Lp<K>::to_raw(hi) << 16);
#endif
    return w;
}

// Tempers every element of `q` (raw bits in, rounded raw bits out) by `lp_div`, two 16-bit
// elements rounded by one packing conversion; false, with `q` unchanged, where some element
// (or the row: `r` == 0) needs `__fdiv_rn`.
template <int K>
__device__ __forceinline__ bool lp_vec_temper(LpVec& q, float t, float r) {
    if (r == 0.0f) return false;
    if (K == 0) {
        bool ok = true;
#pragma unroll
        for (u32 i = 0; i < 4u; ++i) ok &= lp_div_ok(q.w[i]);
        if (!ok) return false;
#pragma unroll
        for (u32 i = 0; i < 4u; ++i) q.w[i] = __float_as_uint(lp_div(__uint_as_float(q.w[i]), t, r));
        return true;
    }
    float lo[4], hi[4];
    bool ok = true;
#pragma unroll
    for (u32 i = 0; i < 4u; ++i) {
        const u32 w = q.w[i];
        if (K == 1) {
            // Every f16 but NaN is in range (subnormals and infinities included).
            ok &= (w & 0x7fffu) <= 0x7c00u && ((w >> 16) & 0x7fffu) <= 0x7c00u;
            lo[i] = lp_f16_to_f32((u16)(w & 0xffffu));
            hi[i] = lp_f16_to_f32((u16)(w >> 16));
        } else {
            ok &= lp_div_ok(w << 16) && lp_div_ok(w & 0xffff0000u);
            lo[i] = __uint_as_float(w << 16);
            hi[i] = __uint_as_float(w & 0xffff0000u);
        }
    }
    if (!ok) return false;
#pragma unroll
    for (u32 i = 0; i < 4u; ++i) q.w[i] = lp_pack2<K>(lp_div(hi[i], t, r), lp_div(lo[i], t, r));
    return true;
}
