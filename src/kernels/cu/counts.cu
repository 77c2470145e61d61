// Penalty count tables on the device (the layout and the log: src/kernels/counts.rs).
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

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

