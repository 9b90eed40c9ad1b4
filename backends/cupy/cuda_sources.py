"""CUDA C sources of the CuPy backend's raw kernels (compiled by cupy.RawModule with NVRTC on first use).

No headers are included, so NVRTC compiles them anywhere (CI compiles them for sm_80 and sm_90 without a GPU).
Block dequantization is written per element, as backends/cupy/quants.py does it with array functions (and
ggml's dequantize_row_*): element i of a block is an integer read at a byte position, times its group's scale,
plus or minus an offset. Matrix-vector products give one warp per output row and reduce with shuffles.
"""
from __future__ import annotations

from pyggml.graph.block_layouts import BLOCKS
from pyggml.graph.dtypes import DType, block_layout

DEVICE_TYPES = (DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0, DType.Q4_K, DType.Q5_K, DType.Q6_K,
                DType.F16)
# kernel name suffix -> (block size, bytes per block) of every block type with a device dequantizer
BLOCK_TYPES = {t.name.lower(): block_layout(t) for t in DEVICE_TYPES}


def layout_defines() -> str:
    """`#define Q6_K_D 208`, ...: every field offset of the device types, from the block-layout table."""
    return "\n".join(f"#define {t.name}_{f.name.upper()} {f.offset}"
                     for t in DEVICE_TYPES if t in BLOCKS for f in BLOCKS[t].fields)

COMMON = r"""
typedef unsigned char u8;
typedef unsigned short u16;
#define WARP 32
#define INF __int_as_float(0x7f800000)

#ifndef PYGGML_CPU_EMULATION  // the tests' CPU emulation (tests/cuda_emulation.py) defines these two itself
__device__ __forceinline__ float h2f(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f2h(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
#endif
__device__ __forceinline__ float bf2f(u16 h) { return __int_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ float f16_at(const u8* b, int at) { return h2f(b[at] | (b[at + 1] << 8)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// sum (or max) over a block of blockDim.x threads, a multiple of 32; every thread gets the result
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float part[32];
    v = is_max ? warp_max(v) : warp_sum(v);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : (is_max ? -INF : 0.0f);
    return is_max ? warp_max(v) : warp_sum(v);
}
__device__ __forceinline__ long long index_at(const void* idx, int idx64, long long i) {
    return idx64 ? ((const long long*)idx)[i] : (long long)((const int*)idx)[i];
}
"""

DEQUANT = r"""
// element i of one block
__device__ __forceinline__ float dq_q4_0(const u8* b, int i) {
    return (float)(((b[Q4_0_QS + i % 16] >> (4 * (i / 16))) & 15) - 8) * f16_at(b, Q4_0_D);
}
__device__ __forceinline__ float dq_q4_1(const u8* b, int i) {
    return (float)((b[Q4_1_QS + i % 16] >> (4 * (i / 16))) & 15) * f16_at(b, Q4_1_D) + f16_at(b, Q4_1_M);
}
__device__ __forceinline__ int q5_value(const u8* b, int qh_at, int qs_at, int i) {
    const int low = (b[qs_at + i % 16] >> (4 * (i / 16))) & 15;
    return low | (((b[qh_at + i / 8] >> (i % 8)) & 1) << 4);
}
__device__ __forceinline__ float dq_q5_0(const u8* b, int i) {
    return (float)(q5_value(b, Q5_0_QH, Q5_0_QS, i) - 16) * f16_at(b, Q5_0_D);
}
__device__ __forceinline__ float dq_q5_1(const u8* b, int i) {
    return (float)q5_value(b, Q5_1_QH, Q5_1_QS, i) * f16_at(b, Q5_1_D) + f16_at(b, Q5_1_M);
}
__device__ __forceinline__ float dq_q8_0(const u8* b, int i) {
    return (float)(signed char)b[Q8_0_QS + i] * f16_at(b, Q8_0_D);
}
// Q4_K/Q5_K (whose first three fields are the same): the 6-bit scale and min of group g (ggml's
// get_scale_min_k4), from the 12 scale bytes
__device__ __forceinline__ void k_scale_min(const u8* b, int g, float* sc, float* m) {
    const u8* s = b + Q4_K_SCALES;
    if (g < 4) { *sc = s[g] & 63; *m = s[g + 4] & 63; }
    else { *sc = (s[g + 4] & 15) | ((s[g - 4] >> 6) << 4); *m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4); }
}
__device__ __forceinline__ float dq_q4_k(const u8* b, int i) {
    float sc, m;
    k_scale_min(b, i / 32, &sc, &m);
    const int q = (b[Q4_K_QS + i / 64 * 32 + i % 32] >> (4 * (i % 64 / 32))) & 15;
    return f16_at(b, Q4_K_D) * sc * (float)q - f16_at(b, Q4_K_DMIN) * m;
}
__device__ __forceinline__ float dq_q5_k(const u8* b, int i) {
    float sc, m;
    k_scale_min(b, i / 32, &sc, &m);
    const int low = (b[Q5_K_QS + i / 64 * 32 + i % 32] >> (4 * (i % 64 / 32))) & 15;
    const int q = low | (((b[Q5_K_QH + i % 32] >> (i / 32)) & 1) << 4);
    return f16_at(b, Q5_K_D) * sc * (float)q - f16_at(b, Q5_K_DMIN) * m;
}
__device__ __forceinline__ float dq_q6_k(const u8* b, int i) {
    const int j = i / 128, t = i % 128 / 32, l = i % 32;
    const int low = (b[Q6_K_QL + j * 64 + t % 2 * 32 + l] >> (4 * (t / 2))) & 15;
    const int high = (b[Q6_K_QH + j * 32 + l] >> (2 * t)) & 3;
    return f16_at(b, Q6_K_D) * (float)(signed char)b[Q6_K_SCALES + i / 16] * (float)((low | (high << 4)) - 32);
}
__device__ __forceinline__ float dq_f16(const u8* b, int i) { return f16_at(b, 0); }
"""

# per block type: a warp per row mat-vec, rows gathered, the whole tensor to F16 (prefill: then cuBLAS)
PER_TYPE = r"""
// y[v, r] = sum_k W[r, k] x[v, k]: a warp per (row r, vector v); blockDim (32, rows per block)
extern "C" __global__ void mmv_$T(const u8* w, const float* x, float* y, int ncols, int nrows,
                                  long long row_bytes, long long x_stride, long long y_stride) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y, v = blockIdx.y;
    if (row >= nrows) return;
    const u8* wr = w + row * row_bytes;
    const float* xv = x + v * x_stride;
    float sum = 0.0f;
    for (int k = threadIdx.x; k < ncols; k += WARP) sum += dq_$T(wr + (k / $QK) * $TS, k % $QK) * xv[k];
    sum = warp_sum(sum);
    if (threadIdx.x == 0) y[v * y_stride + row] = sum;
}
// out[r, :] = W[idx[r] + r / rows_per_batch * batch_rows, :] as float32; a thread per element
extern "C" __global__ void get_rows_$T(const u8* w, const void* idx, int idx64, float* out, int ncols,
                                       long long row_bytes, long long n, int rows_per_batch, long long batch_rows) {
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n) return;
    const long long r = e / ncols, k = e % ncols;
    const long long src = index_at(idx, idx64, r) + r / rows_per_batch * batch_rows;
    out[e] = dq_$T(w + src * row_bytes + (k / $QK) * $TS, k % $QK);
}
extern "C" __global__ void to_f16_$T(const u8* w, u16* out, int ncols, long long row_bytes, long long n) {
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= n) return;
    const long long r = e / ncols, k = e % ncols;
    out[e] = f2h(dq_$T(w + r * row_bytes + (k / $QK) * $TS, k % $QK));
}
"""

FUSED = r"""
// y = x / sqrt(mean(x^2) + eps) [* weight]: a block per row
extern "C" __global__ void rms_norm_f32(const float* x, const float* weight, float* y, int ncols, float eps,
                                        long long x_row, long long y_row) {
    const float* xr = x + blockIdx.x * x_row;
    float* yr = y + blockIdx.x * y_row;
    float ss = 0.0f;
    for (int k = threadIdx.x; k < ncols; k += blockDim.x) ss += xr[k] * xr[k];
    const float inv = rsqrtf(block_reduce(ss, false) / ncols + eps);
    for (int k = threadIdx.x; k < ncols; k += blockDim.x) yr[k] = xr[k] * inv * (weight ? weight[k] : 1.0f);
}

// rope (ggml_rope_ext with YaRN): a thread per rotated pair of (token t, head h); dims past n_dims copied
extern "C" __global__ void rope_f32(const float* x, float* y, const void* pos, int pos64, const float* freq_factors,
                                    int n_tokens, int n_heads, int head_dim, int n_dims, int neox,
                                    float freq_base, float freq_scale, float ext_factor, float attn_factor,
                                    float corr_low, float corr_high, long long xs_t, long long xs_h,
                                    long long ys_t, long long ys_h) {
    const int half = head_dim / 2;
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= (long long)n_tokens * n_heads * half) return;
    const int t = e / (n_heads * half), h = e / half % n_heads, i = e % half;
    const float* xr = x + t * xs_t + h * xs_h;
    float* yr = y + t * ys_t + h * ys_h;
    if (2 * i >= n_dims) { yr[2 * i] = xr[2 * i]; yr[2 * i + 1] = xr[2 * i + 1]; return; }
    const int a = neox ? i : 2 * i, b = neox ? i + n_dims / 2 : 2 * i + 1;
    const float inv_freq = powf(freq_base, -2.0f * i / n_dims) / (freq_factors ? freq_factors[i] : 1.0f);
    const float theta_extrap = (float)index_at(pos, pos64, t) * inv_freq;
    float theta = theta_extrap * freq_scale, mscale = attn_factor;
    if (ext_factor != 0.0f) {
        const float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, (i - corr_low) / fmaxf(0.001f, corr_high - corr_low)));
        const float mix = ramp * ext_factor;
        theta = theta * (1.0f - mix) + theta_extrap * mix;
        mscale *= 1.0f + 0.1f * logf(1.0f / freq_scale);
    }
    const float c = cosf(theta) * mscale, s = sinf(theta) * mscale, x0 = xr[a], x1 = xr[b];
    yr[a] = x0 * c - x1 * s;
    yr[b] = x0 * s + x1 * c;
}

// y = softmax(x * scale + mask * slope(head)): a block per row; rows are (head, row) pairs
extern "C" __global__ void soft_max_f32(const float* x, const float* mask, const u16* mask16, float* y, int ncols,
                                        int rows_per_head, int n_heads, int mask_rows, long long mask_head_stride,
                                        int mask_heads, float scale, float m0, float m1, int n_head_log2) {
    const int row = blockIdx.x, r = row % rows_per_head, h = row / rows_per_head % n_heads;
    const float slope = m0 == 1.0f && m1 == 1.0f ? 1.0f
        : (h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2 * (h - n_head_log2) + 1));
    const long long m_at = (long long)(h % mask_heads) * mask_head_stride + (long long)(r % mask_rows) * ncols;
    const float* xr = x + (long long)row * ncols;
    float* yr = y + (long long)row * ncols;
    float mx = -INF;
    for (int k = threadIdx.x; k < ncols; k += blockDim.x) {
        const float m = mask ? mask[m_at + k] : (mask16 ? h2f(mask16[m_at + k]) : 0.0f);
        const float v = xr[k] * scale + m * slope;
        yr[k] = v;
        mx = fmaxf(mx, v);
    }
    mx = block_reduce(mx, true);
    float sum = 0.0f;
    for (int k = threadIdx.x; k < ncols; k += blockDim.x) { const float e = expf(yr[k] - mx); yr[k] = e; sum += e; }
    const float inv = 1.0f / block_reduce(sum, false);
    for (int k = threadIdx.x; k < ncols; k += blockDim.x) yr[k] *= inv;
}

// y = act(gate) * up over rows of n: SwiGLU (silu) or GeGLU (gelu, tanh approximation)
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }
__device__ __forceinline__ float gelu(float g) {
    return 0.5f * g * (1.0f + tanhf(0.7978845608028654f * g * (1.0f + 0.044715f * g * g)));
}
extern "C" __global__ void glu_f32(const float* gate, const float* up, float* y, int n, long long total,
                                   long long gate_row, long long up_row, int use_gelu) {
    const long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (e >= total) return;
    const long long r = e / n, k = e % n;
    const float g = gate[r * gate_row + k];
    y[e] = (use_gelu ? gelu(g) : silu(g)) * up[r * up_row + k];
}
"""

# decode attention and small dense products, per K/V (or weight) element type: f32 or f16
PER_FLOAT = r"""
__device__ __forceinline__ float load_$F(const $E* p, long long i) { return $LOAD; }

// one query row per head (decode): a block per KV head, a warp per query head of its group, K/V read once per
// group from the cache; online softmax; out (H, Dv) rows; D, Dv <= 256
extern "C" __global__ void attn_decode_$F(const float* q, const $E* k, const $E* v, const float* mask, float* out,
                                          int n_kv, int d, int dv, int group, float scale, float softcap,
                                          long long q_head, long long k_head, long long k_row, long long v_head,
                                          long long v_row, long long out_head) {
    const int kvh = blockIdx.x, h = kvh * group + threadIdx.y, lane = threadIdx.x;
    if (threadIdx.y >= group) return;
    const float* qh = q + h * q_head;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float m = -INF, l = 0.0f;
    for (int j = 0; j < n_kv; ++j) {
        const float bias = mask ? mask[j] : 0.0f;
        if (bias == -INF) continue;
        float s = 0.0f;
        for (int c = lane; c < d; c += WARP) s += qh[c] * load_$F(k, kvh * k_head + j * k_row + c);
        s = warp_sum(s) * scale;
        if (softcap != 0.0f) s = softcap * tanhf(s / softcap);
        s += bias;
        const float m_new = fmaxf(m, s), correction = expf(m - m_new), p = expf(s - m_new);
        l = l * correction + p;
        for (int t = 0; t * WARP + lane < dv; ++t)
            acc[t] = acc[t] * correction + p * load_$F(v, kvh * v_head + j * v_row + t * WARP + lane);
        m = m_new;
    }
    for (int t = 0; t * WARP + lane < dv; ++t) out[h * out_head + t * WARP + lane] = acc[t] / l;
}

// out[b, n, m] = sum_k a[b / ratio, m, k] b[b, n, k] for a few rows n: a warp per output, any strides
extern "C" __global__ void mm_small_$F(const $E* a, const float* b, float* out, int m_rows, int depth, int ratio,
                                       long long a_batch, long long a_row, long long a_col, long long b_batch,
                                       long long b_row, long long b_col, long long o_batch, long long o_row) {
    const int mi = blockIdx.x * blockDim.y + threadIdx.y, n = blockIdx.y, batch = blockIdx.z;
    if (mi >= m_rows) return;
    const long long a_at = (batch / ratio) * a_batch + mi * a_row, b_at = batch * b_batch + n * b_row;
    float s = 0.0f;
    for (int k = threadIdx.x; k < depth; k += WARP) s += load_$F(a, a_at + k * a_col) * b[b_at + k * b_col];
    s = warp_sum(s);
    if (threadIdx.x == 0) out[batch * o_batch + n * o_row + mi] = s;
}
"""
FLOAT_TYPES = {"f32": ("float", "p[i]"), "f16": ("u16", "h2f(p[i])")}


def per_type(block_type: str) -> str:
    """The mat-vec, get_rows and to-F16 kernels of one block type."""
    qk, ts = BLOCK_TYPES[block_type]
    return PER_TYPE.replace("$QK", str(qk)).replace("$TS", str(ts)).replace("$T", block_type)


def per_float(name: str) -> str:
    """The decode attention and small product kernels reading `name` (f32/f16) elements."""
    element, load = FLOAT_TYPES[name]
    return PER_FLOAT.replace("$LOAD", load).replace("$F", name).replace("$E", element)


def source() -> str:
    """The whole CUDA C source of the raw kernels."""
    return "\n".join([COMMON, layout_defines(), DEQUANT, *(per_type(t) for t in BLOCK_TYPES), FUSED,
                      *(per_float(f) for f in FLOAT_TYPES)])
