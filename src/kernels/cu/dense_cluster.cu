// `lp_dense_cluster`: the one-pass dense phase with one thread-block cluster per row.
// Part of the CUDA source of the fused op: src/kernels/cuda.rs concatenates the files of
// this folder in a fixed order (common, counts, sparse, dense, dense_once, dense_cluster,
// entries) and compiles them with NVRTC as one unit.

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
    __shared__ float red[LP_THREADS / 32u];
    __shared__ float cmax[2];
    LpVec* stage = reinterpret_cast<LpVec*>(lp_dyn);
    u32* keep = reinterpret_cast<u32*>(lp_dyn + (size_t)slice * E::ES);

    const u32 tid = threadIdx.x, lane = tid & 31u;
    const u32 rank = lp_cluster_rank();
    const u32 csize = gridDim.x;
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
            float m;
            u32 mh;
            const LpEnd end = lp_chunk_stage<K, LP_ANY_VECS>(r, keep, s, stage, c0, m, mh);
            float thr = LP_NEG_INF;
            if (r.has_min_p) { // row-uniform
                const float mine = lp_block_max(lp_max_fold<K>(mh, m), red);
                if (tid == 0u) cmax[parity] = mine;
                lp_cluster_sync();
                float b = lane < csize ? lp_cluster_load(&cmax[parity], lane) : LP_NEG_INF;
                for (int o = 16; o > 0; o >>= 1) b = fmaxf(b, __shfl_xor_sync(0xffffffffu, b, o));
                thr = __fadd_rn(b, r.lnp);
                parity ^= 1u;
                lp_chunk_cut<K, LP_ANY_VECS, false>(r, keep, s, stage, thr, c0, (u32*)0, (u32*)0);
            }
            lp_chunk_end<K, false>(r, end, c0, thr, (u32*)0, (u32*)0);
        }
        __syncthreads(); // `keep` and `red` are reused by the next row
    }
    lp_cluster_sync(); // the other blocks may still read this block's `cmax`
#endif
}

