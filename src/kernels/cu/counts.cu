// Penalty count tables on the device (the layout and the log: src/kernels/counts.rs).
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

// ------------------------------------------------------------------------------------------
// Penalty counts (see src/kernels/counts.rs for the layout and the log). A slot row is
// [used, key_0, ref_0, ..., key_{W-1}, ref_{W-1}, lkey_0, value_0, ..., lkey_{W/2-1},
// value_{W/2-1}]: a hash of key = token + 1 (0 empty) to ref = list index + 1 (0 while the
// claim is being written, LP_NO_REF past the list), and the list of entries in claim order,
// key and value = count << 1 | in_prompt, read in order by the sparse phase.

#define LP_NO_SLOT 0xffffffffu
#define LP_RESET 0x80000000u
#define LP_SLOT_MASK 0x3fffffffu
#define LP_NO_REF 0xffffffffu
#define LP_NO_ENTRY 0xffffffffu

__device__ __forceinline__ u32 lp_home(u32 token, u32 w) {
    const u32 shift = 64u - (31u - __clz(w));
    return (u32)(((u64)(token + 1u) * 0x9E3779B97F4A7C15ull) >> shift);
}

// The list index of `token` in the slot row `tab` (W positions), claimed and listed (value 0)
// if absent; LP_NO_ENTRY past the list (never while the host keeps tables half full). Safe for
// concurrent callers: a claimer writes the list entry, then publishes its ref; a caller that
// finds the key waits for the ref.
__device__ __forceinline__ u32 lp_claim(u32* tab, u32 w, u32 token) {
    const u32 key = token + 1u;
    u32 i = lp_home(token, w);
    for (;;) {
        u32 k = *reinterpret_cast<volatile u32*>(&tab[1 + 2 * i]);
        if (k == 0u) {
            k = atomicCAS(&tab[1 + 2 * i], 0u, key);
            if (k == 0u) {
                const u32 pos = atomicAdd(&tab[0], 1u);
                u32 ref = LP_NO_REF;
                if (pos < w / 2u) {
                    tab[1 + 2 * w + 2 * pos] = key;
                    tab[2 + 2 * w + 2 * pos] = 0u;
                    ref = pos + 1u;
                }
                __threadfence(); // the entry before its ref
                atomicExch(&tab[2 + 2 * i], ref);
                return ref == LP_NO_REF ? LP_NO_ENTRY : pos;
            }
        }
        if (k == key) {
            u32 ref;
            while ((ref = *reinterpret_cast<volatile u32*>(&tab[2 + 2 * i])) == 0u) {
            }
            __threadfence();
            return ref == LP_NO_REF ? LP_NO_ENTRY : ref - 1u;
        }
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
        if (i == LP_NO_ENTRY) continue;
        u32* v = &tab[2 + 2 * w + 2 * i];
        switch (a >> 30) {
            case 0u: atomicAdd(v, 2u); break;
            case 1u: atomicSub(v, 2u); break;
            default: atomicOr(v, 1u); break;
        }
    }
    __syncthreads();
}

