// The fused masking kernel of logits-processors (see src/kernels/cpu.rs for the reference
// semantics). Compiled with NVRTC at first use; no headers needed. Half-precision logits are
// handled as raw 16-bit patterns.
//
// Two entry points per dtype (f32, f16, bf16):
//
// * `lp_mask_<dtype>`: grid (chunks, rows). Block (c, r) owns the tokens [c*chunk, (c+1)*chunk)
//   of rows r, r + gridDim.y, ... A row is a *fill* row when it is forced (ForceToken count > 0)
//   or when AllowedIds is in mask mode: every element outside the row's keep-set is overwritten
//   with -inf without being read, using 16-byte stores on the 16-byte aligned part of the chunk
//   and scalar stores on the unaligned head and tail. A row that is not filled but boosted
//   (AllowedIds boost mode) has only its listed ids read and written. Other rows are untouched.
// * `lp_boost_<dtype>`: AllowedIds boost mode alone: one thread per (row, id).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define LP_MAX_CHUNK 16384
#define LP_KEEP_WORDS (LP_MAX_CHUNK / 32 + 2)

#define LP_MODE_NONE 0
#define LP_MODE_BOOST 1
#define LP_MODE_MASK 2

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
    static __device__ __forceinline__ void store_neg_inf(char* row, u32 t) {
        reinterpret_cast<u32*>(row)[t] = 0xff800000u;
    }
    static __device__ __forceinline__ void add(char* row, u32 t, float boost) {
        float* p = reinterpret_cast<float*>(row) + t;
        *p = __fadd_rn(*p, boost);
    }
};

template <> struct Lp<1> {
    enum : u32 { ES = 2u, NEG_INF_WORD = 0xfc00fc00u };
    static __device__ __forceinline__ void store_neg_inf(char* row, u32 t) {
        reinterpret_cast<u16*>(row)[t] = (u16)0xfc00u;
    }
    static __device__ __forceinline__ void add(char* row, u32 t, float boost) {
        u16* p = reinterpret_cast<u16*>(row) + t;
        *p = lp_f32_to_f16(__fadd_rn(lp_f16_to_f32(*p), boost));
    }
};

template <> struct Lp<2> {
    enum : u32 { ES = 2u, NEG_INF_WORD = 0xff80ff80u };
    static __device__ __forceinline__ void store_neg_inf(char* row, u32 t) {
        reinterpret_cast<u16*>(row)[t] = (u16)0xff80u;
    }
    static __device__ __forceinline__ void add(char* row, u32 t, float boost) {
        u16* p = reinterpret_cast<u16*>(row) + t;
        *p = lp_f32_to_bf16(__fadd_rn(__uint_as_float(((u32)*p) << 16), boost));
    }
};

__device__ __forceinline__ void lp_store16(char* p, u32 w) {
    asm volatile("st.global.v4.u32 [%0], {%1, %1, %1, %1};" ::"l"(p), "r"(w) : "memory");
}

__device__ __forceinline__ bool lp_bit(const u32* bits, u32 t) {
    return (bits[t >> 5] >> (t & 31u)) & 1u;
}

// Bits [off, off + n) of the shared keep mask (n <= 8, the mask padded by one word).
__device__ __forceinline__ u32 lp_keep_bits(const u32* keep, u32 off, u32 n) {
    u32 w = off >> 5;
    u64 win = (u64)keep[w] | ((u64)keep[w + 1] << 32);
    return (u32)(win >> (off & 31u)) & ((1u << n) - 1u);
}

template <int K>
__device__ __forceinline__ void lp_mask(
    char* logits, u32 batch, u32 vocab, u32 chunk,
    const u32* force, u32 force_width,
    const u32* bits, int mode, float boost)
{
    typedef Lp<K> E;
    const u32 VEC = 16 / E::ES;
    __shared__ u32 keep[LP_KEEP_WORDS];

    const u32 tid = threadIdx.x;
    const u32 nthreads = blockDim.x;
    const u32 c0 = blockIdx.x * chunk;
    if (c0 >= vocab) return;
    const u32 c1 = min(c0 + chunk, vocab);
    const u32 span = c1 - c0;
    const u32 nwords = (span + 31u) >> 5;

    for (u32 row = blockIdx.y; row < batch; row += gridDim.y) {
        char* rowp = logits + (size_t)row * vocab * E::ES;
        const u32* entry = force ? force + (size_t)row * force_width : (const u32*)0;
        const u32 count = entry ? entry[0] : 0u;
        const bool forced = count > 0u;

        if (!forced && mode != LP_MODE_MASK) {
            if (mode == LP_MODE_BOOST) {
                // Boost only: the listed ids of this chunk, read off the vocabulary bitmask.
                for (u32 w = tid; w < nwords; w += nthreads) {
                    u32 word = bits[(c0 >> 5) + w];
                    while (word) {
                        u32 b = __ffs(word) - 1u;
                        word &= word - 1u;
                        E::add(rowp, c0 + w * 32u + b, boost);
                    }
                }
            }
            continue; // row-uniform: every thread of the block takes this branch together
        }

        // The keep-set of this chunk, as a bitmask over [c0, c1) (padded with zero words).
        if (forced) {
            for (u32 w = tid; w < nwords + 2u; w += nthreads) keep[w] = 0u;
            __syncthreads();
            for (u32 k = tid; k < count; k += nthreads) {
                u32 t = entry[1 + k];
                if (t >= c0 && t < c1 && (mode != LP_MODE_MASK || lp_bit(bits, t))) {
                    atomicOr(&keep[(t - c0) >> 5], 1u << ((t - c0) & 31u));
                }
            }
        } else {
            // AllowedIds mask mode: the chunk's slice of the vocabulary bitmask (c0 % 32 == 0).
            for (u32 w = tid; w < nwords + 2u; w += nthreads) {
                keep[w] = w < nwords ? bits[(c0 >> 5) + w] : 0u;
            }
        }
        __syncthreads();
        u32 mine = 0u;
        for (u32 w = tid; w < nwords; w += nthreads) mine |= keep[w];
        const bool any = __syncthreads_or(mine != 0u) != 0;
        const bool boost_kept = forced && mode == LP_MODE_BOOST;

        // The 16-byte aligned part of the chunk: [c0 + head, c0 + head + nvec * VEC).
        const u64 a = (u64)(rowp + (size_t)c0 * E::ES);
        u32 head = (u32)(((16u - (u32)(a & 15u)) & 15u) / E::ES);
        if (head > span) head = span;
        const u32 nvec = (span - head) / VEC;
        const u32 body_end = head + nvec * VEC; // relative to c0
        const u32 tail = span - body_end;
        char* body = rowp + (size_t)(c0 + head) * E::ES;

        if (!any) {
#pragma unroll 4
            for (u32 v = tid; v < nvec; v += nthreads) {
                lp_store16(body + (size_t)v * 16u, E::NEG_INF_WORD);
            }
        } else {
            for (u32 v = tid; v < nvec; v += nthreads) {
                const u32 off = head + v * VEC;
                const u32 m = lp_keep_bits(keep, off, VEC);
                if (m == 0u) {
                    lp_store16(body + (size_t)v * 16u, E::NEG_INF_WORD);
                } else {
                    for (u32 e = 0; e < VEC; ++e) {
                        const u32 t = c0 + off + e;
                        if ((m >> e) & 1u) {
                            if (boost_kept && lp_bit(bits, t)) E::add(rowp, t, boost);
                        } else {
                            E::store_neg_inf(rowp, t);
                        }
                    }
                }
            }
        }
        // The unaligned head and tail, element by element.
        for (u32 i = tid; i < head + tail; i += nthreads) {
            const u32 off = i < head ? i : body_end + (i - head);
            const u32 t = c0 + off;
            if ((keep[off >> 5] >> (off & 31u)) & 1u) {
                if (boost_kept && lp_bit(bits, t)) E::add(rowp, t, boost);
            } else {
                E::store_neg_inf(rowp, t);
            }
        }
        __syncthreads(); // `keep` is rebuilt for the next row
    }
}

template <int K>
__device__ __forceinline__ void lp_boost(
    char* logits, u32 batch, u32 vocab, const u32* ids, u32 n_ids, float boost)
{
    const u64 total = (u64)batch * n_ids;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)gridDim.x * blockDim.x) {
        const u64 row = i / n_ids;
        const u32 t = ids[i - row * n_ids];
        Lp<K>::add(logits + (size_t)row * vocab * Lp<K>::ES, t, boost);
    }
}

#define LP_ENTRY(NAME, K)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) lp_mask_##NAME(                         \
        char* logits, u32 batch, u32 vocab, u32 chunk, const u32* force, u32 force_width,     \
        const u32* bits, int mode, float boost) {                                             \
        lp_mask<K>(logits, batch, vocab, chunk, force, force_width, bits, mode, boost);       \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) lp_boost_##NAME(                        \
        char* logits, u32 batch, u32 vocab, const u32* ids, u32 n_ids, float boost) {         \
        lp_boost<K>(logits, batch, vocab, ids, n_ids, boost);                                 \
    }

LP_ENTRY(f32, 0)
LP_ENTRY(f16, 1)
LP_ENTRY(bf16, 2)
