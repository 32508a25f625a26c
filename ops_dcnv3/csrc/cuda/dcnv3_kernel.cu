// CUDA kernels of the DCNv3 core (forward and backward), registered for the CUDA dispatch key.
//
// Layouts (all channels-last, made contiguous here):
//   input   (N, H, W, G*C)        grad_input  same
//   offset  (N, Ho, Wo, G*P*2)    grad_offset same; entry (g*P + p)*2 is x, +1 is y
//   mask    (N, Ho, Wo, G*P)      grad_mask   same; used as given, or with softmax=True logits
//                                 that the kernels normalise per (n, ho, wo, g) over the P points
//                                 (grad_mask is then the gradient w.r.t. the logits)
//   output  (N, Ho, Wo, G*C)      grad_output same
// with P = kernel_h*kernel_w and point p = i*kernel_h + j (kernel column i, the x index, outer).
//
// Thread mapping
//   The C channels of one group are split into `chunks` = C/VEC chunks of VEC consecutive
//   channels; VEC is the widest vector (at most 16 bytes) that divides C and keeps every access
//   aligned. A chunk is read/written with one vector load/store per bilinear corner.
//   forward:  one thread per (n, ho, wo, g, chunk). It computes the P sampling positions of
//             its (n, ho, wo, g) and accumulates mask * bilinear(input) for its VEC channels in
//             opmath precision (float for half/bfloat16). No atomics, no shared memory; every
//             output element is written exactly once.
//   backward: chunks of at most 16 bytes of opmath values (4 channels for half/bfloat16, whose
//             gradients accumulate in float32). One "sub-warp" of T lanes (T = next power of two
//             >= chunks, at most 32; T divides 32 so a sub-warp never straddles a warp) per
//             (n, ho, wo, g). Lane l handles chunks l, l+T, ... For every point it
//               - scatters grad_out * mask * w_corner into grad_input with atomicAdd (vector
//                 float2/float4 atomics on sm_90+; half/bfloat16 accumulate in a float32 buffer
//                 that is cast once at the end),
//               - forms per-lane partial sums over its channels of grad_out * value (-> grad_mask)
//                 and grad_out * d value/dx, d value/dy (-> grad_offset), reduces them across
//                 the sub-warp with xor shuffles, and one lane writes the three results.
//             grad_offset and grad_mask are therefore written exactly once each, without atomics.
//   softmax:  every thread (forward) or lane (backward) takes the max and the sum of exponentials
//             of its group's P logits itself (P is small: 9 for InternImage) in opmath precision.
//             In the backward each lane also accumulates sum_p w_p * dL/dw_p from the reduced
//             sums, and after the point loop rewrites the grad_mask entries it wrote as
//             w_p * (dL/dw_p - that sum); grad_mask is kept in opmath precision until then.
//   Index arithmetic is 32-bit when every tensor and the thread count fit, 64-bit otherwise.
//
// Bilinear sampling: a point at (y, x) is read only when -1 < y < H and -1 < x < W; each of its
// four integer neighbours outside the image contributes zero (implicit zero padding).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "dcnv3.h"

namespace dcnv3 {
namespace ops {

namespace {

constexpr int kThreadsPerBlock = 256;  // a multiple of 32: sub-warps stay inside one warp
// The backward kernel is latency bound (gathers and atomics): ask for 4 resident blocks (64
// registers) in float precision with 32-bit indexing, fewer where that would spill.
template <typename acc_t, typename index_t>
constexpr int kBackwardMinBlocks = sizeof(acc_t) == 4 ? (sizeof(index_t) == 4 ? 4 : 3) : 2;

// ---------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T val[N];
};

template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void load_pack(const scalar_t* __restrict__ ptr, acc_t (&out)[VEC]) {
  const Pack<scalar_t, VEC> pack = *reinterpret_cast<const Pack<scalar_t, VEC>*>(ptr);
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    out[v] = static_cast<acc_t>(pack.val[v]);
  }
}

template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void store_pack(scalar_t* __restrict__ ptr, const acc_t (&in)[VEC]) {
  Pack<scalar_t, VEC> pack;
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    pack.val[v] = static_cast<scalar_t>(in[v]);
  }
  *reinterpret_cast<Pack<scalar_t, VEC>*>(ptr) = pack;
}

__device__ __forceinline__ float floor_acc(float v) {
  return floorf(v);
}
__device__ __forceinline__ double floor_acc(double v) {
  return floor(v);
}
__device__ __forceinline__ float exp_acc(float v) {
  return expf(v);
}
__device__ __forceinline__ double exp_acc(double v) {
  return exp(v);
}

// The softmax over one group's P mask logits: weight p is exp(logit_p - max) * inverse_sum.
// NaN logits make the group's weights NaN, as torch.softmax does.
template <typename acc_t>
struct MaskSoftmax {
  acc_t max, inverse_sum;
};

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ MaskSoftmax<acc_t> mask_softmax(const scalar_t* __restrict__ logits,
                                                           int points) {
  acc_t largest = static_cast<acc_t>(logits[0]);
  for (int p = 1; p < points; ++p) {
    const acc_t v = static_cast<acc_t>(logits[p]);
    largest = v > largest ? v : largest;
  }
  acc_t sum = acc_t(0);
  for (int p = 0; p < points; ++p) {
    sum += exp_acc(static_cast<acc_t>(logits[p]) - largest);
  }
  return {largest, acc_t(1) / sum};
}

// The mask weight of point p: the logit softmaxed with `stats`, or the mask value as given.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t mask_weight(const scalar_t* __restrict__ mask, int p, bool softmax,
                                             const MaskSoftmax<acc_t>& stats) {
  const acc_t v = static_cast<acc_t>(mask[p]);
  return softmax ? exp_acc(v - stats.max) * stats.inverse_sum : v;
}

// dst[v] += val[v] for v < VEC. dst is aligned to VEC elements. Hopper (sm_90) and newer have
// vector float2/float4 atomics: one instruction instead of VEC.
template <int VEC>
__device__ __forceinline__ void atomic_add_scalars(float* dst, const float (&val)[VEC]) {
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    atomicAdd(dst + v, val[v]);
  }
}

template <int VEC>
__device__ __forceinline__ void atomic_add_pack(float* dst, const float (&val)[VEC]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int v = 0; v < VEC; v += 4) {
      atomicAdd(reinterpret_cast<float4*>(dst + v),
                make_float4(val[v], val[v + 1], val[v + 2], val[v + 3]));
    }
  } else if constexpr (VEC == 2) {
    atomicAdd(reinterpret_cast<float2*>(dst), make_float2(val[0], val[1]));
  } else {
    atomic_add_scalars<VEC>(dst, val);
  }
#else
  atomic_add_scalars<VEC>(dst, val);
#endif
}

template <int VEC>
__device__ __forceinline__ void atomic_add_pack(double* dst, const double (&val)[VEC]) {
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    atomicAdd(dst + v, val[v]);
  }
}

// One bilinear neighbour I_k of a sampling point in the backward pass, for one chunk:
//   dot = <grad_out, I_k> over the chunk feeds the three per-point sums (weights w, dx, dy),
//   grad_out * mask * w is scattered into grad_input at the neighbour.
template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void backward_corner(const scalar_t* __restrict__ in,
                                                acc_t* __restrict__ grad_in,
                                                const acc_t (&go)[VEC], acc_t m, acc_t w,
                                                acc_t dx, acc_t dy, acc_t& sum_v, acc_t& sum_dx,
                                                acc_t& sum_dy) {
  acc_t val[VEC];
  load_pack<scalar_t, VEC>(in, val);
  acc_t dot = acc_t(0);
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    dot += go[v] * val[v];
  }
  sum_v += w * dot;
  sum_dx += dx * dot;
  sum_dy += dy * dot;
  const acc_t mw = m * w;
  acc_t contrib[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    contrib[v] = go[v] * mw;
  }
  atomic_add_pack<VEC>(grad_in, contrib);
}

// Geometry shared by both kernels.
template <typename acc_t>
struct Geometry {
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_h, pad_w;
  int dilation_h, dilation_w;
  int centre_h, centre_w;  // (dilation*(kernel-1)) / 2
  acc_t offset_scale;
};

// Bilinear footprint of one sampling point inside (-1, H) x (-1, W).
template <typename acc_t>
struct Footprint {
  int y0, x0;           // top-left neighbour (may be -1)
  acc_t ly, lx;         // fractional parts: weight of the bottom row / right column
  bool top, bottom;     // rows y0 and y0+1 inside the image
  bool left, right;     // columns x0 and x0+1 inside the image
};

// Returns false when the point lies outside (-1, H) x (-1, W): it then reads nothing.
template <typename acc_t, typename index_t>
__device__ __forceinline__ bool make_footprint(acc_t y, acc_t x, index_t height, index_t width,
                                               Footprint<acc_t>& f) {
  if (!(y > acc_t(-1) && x > acc_t(-1) && y < static_cast<acc_t>(height) &&
        x < static_cast<acc_t>(width))) {
    return false;
  }
  const acc_t yf = floor_acc(y);
  const acc_t xf = floor_acc(x);
  f.y0 = static_cast<int>(yf);
  f.x0 = static_cast<int>(xf);
  f.ly = y - yf;
  f.lx = x - xf;
  f.top = f.y0 >= 0;
  f.bottom = f.y0 + 1 < height;
  f.left = f.x0 >= 0;
  f.right = f.x0 + 1 < width;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, int VEC, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock) dcnv3_forward_kernel(
    const index_t total,  // N*Ho*Wo*G*chunks
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask,
    scalar_t* __restrict__ output,
    const index_t height, const index_t width,
    const index_t out_h, const index_t out_w,
    const index_t group, const index_t group_channels, const index_t chunks,
    const bool softmax,
    const Geometry<at::opmath_type<scalar_t>> geo) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t idx =
      static_cast<index_t>(blockIdx.x) * kThreadsPerBlock + static_cast<index_t>(threadIdx.x);
  if (idx >= total) {
    return;
  }
  const index_t chunk = idx % chunks;
  const index_t pg = idx / chunks;  // (n, ho, wo, g) flattened
  const index_t g = pg % group;
  const index_t pix = pg / group;   // (n, ho, wo) flattened
  const index_t wo = pix % out_w;
  const index_t ho = (pix / out_w) % out_h;
  const index_t n = pix / (out_w * out_h);

  const index_t channels = group * group_channels;
  const index_t points = static_cast<index_t>(geo.kernel_h) * geo.kernel_w;
  const index_t cofs = g * group_channels + chunk * VEC;  // first channel of this thread
  const scalar_t* __restrict__ in_img = input + n * height * width * channels + cofs;
  const scalar_t* __restrict__ off = offset + pg * points * 2;
  const scalar_t* __restrict__ msk = mask + pg * points;

  const acc_t base_x = static_cast<acc_t>(wo * geo.stride_w - geo.pad_w + geo.centre_w);
  const acc_t base_y = static_cast<acc_t>(ho * geo.stride_h - geo.pad_h + geo.centre_h);

  acc_t acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    acc[v] = acc_t(0);
  }
  const MaskSoftmax<acc_t> stats =
      softmax ? mask_softmax<scalar_t>(msk, static_cast<int>(points)) : MaskSoftmax<acc_t>{};

  int p = 0;
  for (int i = 0; i < geo.kernel_w; ++i) {
    const acc_t kx = static_cast<acc_t>(i * geo.dilation_w - geo.centre_w);
    for (int j = 0; j < geo.kernel_h; ++j, ++p) {
      const acc_t ky = static_cast<acc_t>(j * geo.dilation_h - geo.centre_h);
      const acc_t x = base_x + (kx + static_cast<acc_t>(off[2 * p])) * geo.offset_scale;
      const acc_t y = base_y + (ky + static_cast<acc_t>(off[2 * p + 1])) * geo.offset_scale;
      Footprint<acc_t> f;
      if (!make_footprint(y, x, height, width, f)) {
        continue;
      }
      const acc_t m = mask_weight(msk, p, softmax, stats);
      const acc_t hy = acc_t(1) - f.ly, hx = acc_t(1) - f.lx;
      const index_t row0 = static_cast<index_t>(f.y0) * width;
      const index_t row1 = row0 + width;
      acc_t corner[VEC];
      if (f.top && f.left) {
        load_pack<scalar_t, VEC>(in_img + (row0 + f.x0) * channels, corner);
        const acc_t w = m * hy * hx;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += w * corner[v];
      }
      if (f.top && f.right) {
        load_pack<scalar_t, VEC>(in_img + (row0 + f.x0 + 1) * channels, corner);
        const acc_t w = m * hy * f.lx;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += w * corner[v];
      }
      if (f.bottom && f.left) {
        load_pack<scalar_t, VEC>(in_img + (row1 + f.x0) * channels, corner);
        const acc_t w = m * f.ly * hx;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += w * corner[v];
      }
      if (f.bottom && f.right) {
        load_pack<scalar_t, VEC>(in_img + (row1 + f.x0 + 1) * channels, corner);
        const acc_t w = m * f.ly * f.lx;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] += w * corner[v];
      }
    }
  }
  store_pack<scalar_t, VEC>(output + pix * channels + cofs, acc);
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

template <typename scalar_t, typename grad_in_t, int VEC, typename index_t>
__global__ void __launch_bounds__(kThreadsPerBlock,
                                  kBackwardMinBlocks<at::opmath_type<scalar_t>, index_t>)
    dcnv3_backward_kernel(
    const index_t total,  // N*Ho*Wo*G*lanes
    const scalar_t* __restrict__ grad_output,
    const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ offset,
    const scalar_t* __restrict__ mask,
    grad_in_t* __restrict__ grad_input,   // zero-initialised, opmath dtype
    scalar_t* __restrict__ grad_offset,
    grad_in_t* __restrict__ grad_mask,    // opmath dtype
    const index_t height, const index_t width,
    const index_t out_h, const index_t out_w,
    const index_t group, const index_t group_channels, const index_t chunks,
    const int lanes_log2,
    const bool softmax,
    const Geometry<at::opmath_type<scalar_t>> geo) {
  using acc_t = at::opmath_type<scalar_t>;
  static_assert(std::is_same_v<acc_t, grad_in_t>, "grad_input is accumulated in opmath precision");
  const index_t idx =
      static_cast<index_t>(blockIdx.x) * kThreadsPerBlock + static_cast<index_t>(threadIdx.x);
  // total is a multiple of the sub-warp size, so a sub-warp is either wholly in range or wholly
  // out of it: returning here never leaves a shuffle partner behind.
  if (idx >= total) {
    return;
  }
  const int lanes = 1 << lanes_log2;
  const int lane = static_cast<int>(idx & (lanes - 1));
  const int warp_lane = static_cast<int>(threadIdx.x & 31);
  const unsigned sub_mask =
      lanes == 32 ? 0xffffffffu : (((1u << lanes) - 1u) << (warp_lane & ~(lanes - 1)));

  const index_t pg = idx >> lanes_log2;  // (n, ho, wo, g) flattened
  const index_t g = pg % group;
  const index_t pix = pg / group;
  const index_t wo = pix % out_w;
  const index_t ho = (pix / out_w) % out_h;
  const index_t n = pix / (out_w * out_h);

  const index_t channels = group * group_channels;
  const index_t points = static_cast<index_t>(geo.kernel_h) * geo.kernel_w;
  const index_t gofs = g * group_channels;
  const index_t img_base = n * height * width * channels + gofs;
  const scalar_t* __restrict__ in_img = input + img_base;
  grad_in_t* __restrict__ gin_img = grad_input + img_base;
  const scalar_t* __restrict__ gout = grad_output + pix * channels + gofs;
  const scalar_t* __restrict__ off = offset + pg * points * 2;
  const scalar_t* __restrict__ msk = mask + pg * points;
  scalar_t* __restrict__ goff = grad_offset + pg * points * 2;
  acc_t* __restrict__ gmsk = grad_mask + pg * points;
  const MaskSoftmax<acc_t> stats =
      softmax ? mask_softmax<scalar_t>(msk, static_cast<int>(points)) : MaskSoftmax<acc_t>{};
  acc_t weighted_grad_sum = acc_t(0);  // softmax: sum_p w_p * dL/dw_p (the same in every lane)

  // The lane's first chunk of grad_output is reused for every point; keep it in registers, in
  // its storage type (half the registers for half/bfloat16).
  Pack<scalar_t, VEC> gout_first;
  if (lane < chunks) {
    gout_first = *reinterpret_cast<const Pack<scalar_t, VEC>*>(gout + lane * VEC);
  }

  const acc_t base_x = static_cast<acc_t>(wo * geo.stride_w - geo.pad_w + geo.centre_w);
  const acc_t base_y = static_cast<acc_t>(ho * geo.stride_h - geo.pad_h + geo.centre_h);

  int p = 0;
  for (int i = 0; i < geo.kernel_w; ++i) {
    const acc_t kx = static_cast<acc_t>(i * geo.dilation_w - geo.centre_w);
    for (int j = 0; j < geo.kernel_h; ++j, ++p) {
      const acc_t ky = static_cast<acc_t>(j * geo.dilation_h - geo.centre_h);
      const acc_t x = base_x + (kx + static_cast<acc_t>(off[2 * p])) * geo.offset_scale;
      const acc_t y = base_y + (ky + static_cast<acc_t>(off[2 * p + 1])) * geo.offset_scale;
      const acc_t m = mask_weight(msk, p, softmax, stats);

      // Partial sums over this lane's channels of grad_out * value, grad_out * dvalue/dx and
      // grad_out * dvalue/dy.
      acc_t sum_v = acc_t(0), sum_dx = acc_t(0), sum_dy = acc_t(0);
      Footprint<acc_t> f;
      // The footprint depends only on (n, ho, wo, g, p): the branch is uniform per sub-warp.
      const bool reads = make_footprint(y, x, height, width, f);
      if (reads) {
        const acc_t hy = acc_t(1) - f.ly, hx = acc_t(1) - f.lx;
        const index_t row0 = static_cast<index_t>(f.y0) * width;
        const index_t row1 = row0 + width;
        const index_t a00 = (row0 + f.x0) * channels, a01 = a00 + channels;
        const index_t a10 = (row1 + f.x0) * channels, a11 = a10 + channels;

        for (index_t k = lane; k < chunks; k += lanes) {
          const index_t c = k * VEC;
          acc_t go[VEC];
          if (k == lane) {
#pragma unroll
            for (int v = 0; v < VEC; ++v) go[v] = static_cast<acc_t>(gout_first.val[v]);
          } else {
            load_pack<scalar_t, VEC>(gout + c, go);
          }
          // value = sum_k w_k I_k; d value/dx and d value/dy are sums of the I_k with the
          // coefficients (dx, dy) below. Neighbours outside the image are zero: skipped.
          //             pointers                         w          dx     dy
          if (f.top && f.left)
            backward_corner<scalar_t, VEC>(in_img + a00 + c, gin_img + a00 + c, go, m, hy * hx,
                                           -hy, -hx, sum_v, sum_dx, sum_dy);
          if (f.top && f.right)
            backward_corner<scalar_t, VEC>(in_img + a01 + c, gin_img + a01 + c, go, m, hy * f.lx,
                                           hy, -f.lx, sum_v, sum_dx, sum_dy);
          if (f.bottom && f.left)
            backward_corner<scalar_t, VEC>(in_img + a10 + c, gin_img + a10 + c, go, m, f.ly * hx,
                                           -f.ly, hx, sum_v, sum_dx, sum_dy);
          if (f.bottom && f.right)
            backward_corner<scalar_t, VEC>(in_img + a11 + c, gin_img + a11 + c, go, m, f.ly * f.lx,
                                           f.ly, f.lx, sum_v, sum_dx, sum_dy);
        }
      }
      // Reduce the partial sums across the sub-warp (every lane ends with the totals).
      for (int s = lanes >> 1; s > 0; s >>= 1) {
        sum_v += __shfl_xor_sync(sub_mask, sum_v, s);
        sum_dx += __shfl_xor_sync(sub_mask, sum_dx, s);
        sum_dy += __shfl_xor_sync(sub_mask, sum_dy, s);
      }
      weighted_grad_sum += m * sum_v;
      // Spread the writes of the P points over the lanes.
      if (lane == (p & (lanes - 1))) {
        // A point that reads nothing has zero offset gradients, even where its weight is not
        // finite (0 * inf would be NaN), as on the CPU.
        const acc_t scale = reads ? m * geo.offset_scale : acc_t(0);
        gmsk[p] = sum_v;
        goff[2 * p] = static_cast<scalar_t>(sum_dx * scale);
        goff[2 * p + 1] = static_cast<scalar_t>(sum_dy * scale);
      }
    }
  }
  if (softmax) {
    // Through the softmax: each lane revisits exactly the entries it wrote above.
    for (int p = lane; p < points; p += lanes) {
      gmsk[p] = mask_weight(msk, p, true, stats) * (gmsk[p] - weighted_grad_sum);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

bool is_aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// The widest vector (in elements, at most max_vec, by default 16 bytes) that divides
// group_channels and keeps every given pointer aligned.
template <typename scalar_t>
int pick_vec(int64_t group_channels, std::initializer_list<const void*> ptrs,
             int max_vec = static_cast<int>(16 / sizeof(scalar_t))) {
  for (int vec = max_vec; vec > 1; vec /= 2) {
    if (group_channels % vec != 0) {
      continue;
    }
    bool ok = true;
    for (const void* ptr : ptrs) {
      ok = ok && is_aligned(ptr, vec * sizeof(scalar_t));
    }
    if (ok) {
      return vec;
    }
  }
  return 1;
}

// Calls f(std::integral_constant<int, VEC>{}) for the runtime vec. Only widths of at most 16
// bytes of lane_t are compiled: the forward's scalar_t, the backward's opmath accumulators (whose
// pick_vec caps half/bfloat16 at 4 channels, so no 8-channel backward is built for them).
template <typename lane_t, typename F>
void dispatch_vec(int vec, F&& f) {
  switch (vec) {
    case 8:
      if constexpr (sizeof(lane_t) * 8 <= 16) {
        f(std::integral_constant<int, 8>{});
        return;
      }
      break;
    case 4:
      if constexpr (sizeof(lane_t) * 4 <= 16) {
        f(std::integral_constant<int, 4>{});
        return;
      }
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      return;
    default:
      break;
  }
  f(std::integral_constant<int, 1>{});
}

bool fits_int32(std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes) {
    if (s > std::numeric_limits<int32_t>::max() - kThreadsPerBlock) {
      return false;
    }
  }
  return true;
}

unsigned int num_blocks(int64_t total) {
  const int64_t blocks = (total + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
              "dcnv3: problem too large for one CUDA launch (", total, " threads)");
  return static_cast<unsigned int>(blocks);
}

template <typename acc_t>
Geometry<acc_t> make_geometry(int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                              int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                              int64_t dilation_w, double offset_scale) {
  Geometry<acc_t> geo;
  geo.kernel_h = static_cast<int>(kernel_h);
  geo.kernel_w = static_cast<int>(kernel_w);
  geo.stride_h = static_cast<int>(stride_h);
  geo.stride_w = static_cast<int>(stride_w);
  geo.pad_h = static_cast<int>(pad_h);
  geo.pad_w = static_cast<int>(pad_w);
  geo.dilation_h = static_cast<int>(dilation_h);
  geo.dilation_w = static_cast<int>(dilation_w);
  geo.centre_h = static_cast<int>((dilation_h * (kernel_h - 1)) / 2);
  geo.centre_w = static_cast<int>((dilation_w * (kernel_w - 1)) / 2);
  geo.offset_scale = static_cast<acc_t>(offset_scale);
  return geo;
}

at::Tensor dcnv3_forward_cuda(const at::Tensor& input, const at::Tensor& offset,
                              const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                              int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                              int64_t dilation_h, int64_t dilation_w, int64_t group,
                              int64_t group_channels, double offset_scale, bool softmax) {
  // Also rejects tensors on different devices (the dispatcher sends mixed CPU/CUDA calls here).
  const auto out_size = check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h,
                                         stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                                         group_channels, offset_scale);
  const int64_t out_h = out_size.first, out_w = out_size.second;

  c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor in = input.contiguous();
  const at::Tensor off = offset.contiguous();
  const at::Tensor msk = mask.contiguous();
  const int64_t batch = in.size(0), height = in.size(1), width = in.size(2);
  at::Tensor output = at::empty({batch, out_h, out_w, group * group_channels}, in.options());
  if (output.numel() == 0) {
    return output;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, in.scalar_type(), "dcnv3_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto geo = make_geometry<acc_t>(kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                              pad_w, dilation_h, dilation_w, offset_scale);
        const int vec = pick_vec<scalar_t>(group_channels,
                                           {in.const_data_ptr(), output.const_data_ptr()});
        dispatch_vec<scalar_t>(vec, [&](auto vec_constant) {
          constexpr int VEC = decltype(vec_constant)::value;
          const int64_t chunks = group_channels / VEC;
          const int64_t total = batch * out_h * out_w * group * chunks;
          const unsigned int blocks = num_blocks(total);
          auto launch = [&](auto index_zero) {
            using index_t = decltype(index_zero);
            dcnv3_forward_kernel<scalar_t, VEC, index_t><<<blocks, kThreadsPerBlock, 0, stream>>>(
                static_cast<index_t>(total), in.const_data_ptr<scalar_t>(),
                off.const_data_ptr<scalar_t>(), msk.const_data_ptr<scalar_t>(),
                output.mutable_data_ptr<scalar_t>(), static_cast<index_t>(height),
                static_cast<index_t>(width), static_cast<index_t>(out_h),
                static_cast<index_t>(out_w), static_cast<index_t>(group),
                static_cast<index_t>(group_channels), static_cast<index_t>(chunks), softmax, geo);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          };
          if (fits_int32({in.numel(), off.numel(), output.numel(), total})) {
            launch(int32_t{0});
          } else {
            launch(int64_t{0});
          }
        });
      });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
    int64_t group, int64_t group_channels, double offset_scale, bool softmax) {
  const auto out_size = check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h,
                                         stride_w, pad_h, pad_w, dilation_h, dilation_w, group,
                                         group_channels, offset_scale);
  const int64_t out_h = out_size.first, out_w = out_size.second;
  check_dcnv3_grad_output(grad_output, input, out_h, out_w);
  // grad_input is summed with atomics, in an order that varies from run to run: an error under
  // torch.use_deterministic_algorithms(True), a warning with warn_only=True (as torchvision's
  // roi_align backward does).
  at::globalContext().alertNotDeterministic("dcnv3_backward_cuda");

  c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor gout = grad_output.contiguous();
  const at::Tensor in = input.contiguous();
  const at::Tensor off = offset.contiguous();
  const at::Tensor msk = mask.contiguous();
  const int64_t batch = in.size(0), height = in.size(1), width = in.size(2);

  // grad_input is a scatter target: accumulate it in opmath precision (float32 for half types).
  // grad_mask is kept in opmath precision too, for the softmax's second pass; both are cast once.
  const auto acc_dtype = at::toOpMathType(in.scalar_type());
  at::Tensor grad_input_acc = at::zeros(in.sizes(), in.options().dtype(acc_dtype));
  at::Tensor grad_offset = at::empty(off.sizes(), off.options());
  at::Tensor grad_mask_acc = at::empty(msk.sizes(), msk.options().dtype(acc_dtype));
  const int64_t pixel_groups = batch * out_h * out_w * group;
  if (pixel_groups == 0 || group_channels == 0) {
    grad_offset.zero_();
    return {grad_input_acc.to(in.scalar_type()), grad_offset,
            at::zeros(msk.sizes(), msk.options())};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, in.scalar_type(), "dcnv3_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto geo = make_geometry<acc_t>(kernel_h, kernel_w, stride_h, stride_w, pad_h,
                                              pad_w, dilation_h, dilation_w, offset_scale);
        // grad_input_acc is freshly allocated, so aligned for any vector width we pick. At most
        // 16 bytes of opmath values a chunk: for half/bfloat16 4 channels, not 8, so a chunk's
        // grad_input update is one float4 atomic, as in float32, with twice the lanes of 8-channel
        // chunks sharing a position's atomics (see docs/benchmarks.md, session 13).
        const int vec = pick_vec<scalar_t>(group_channels,
                                           {in.const_data_ptr(), gout.const_data_ptr()},
                                           static_cast<int>(16 / sizeof(acc_t)));
        dispatch_vec<acc_t>(vec, [&](auto vec_constant) {
          constexpr int VEC = decltype(vec_constant)::value;
          const int64_t chunks = group_channels / VEC;
          int lanes_log2 = 0;
          while ((int64_t{1} << lanes_log2) < chunks && lanes_log2 < 5) {
            ++lanes_log2;
          }
          const int64_t total = pixel_groups << lanes_log2;
          const unsigned int blocks = num_blocks(total);
          auto launch = [&](auto index_zero) {
            using index_t = decltype(index_zero);
            dcnv3_backward_kernel<scalar_t, acc_t, VEC, index_t>
                <<<blocks, kThreadsPerBlock, 0, stream>>>(
                    static_cast<index_t>(total), gout.const_data_ptr<scalar_t>(),
                    in.const_data_ptr<scalar_t>(), off.const_data_ptr<scalar_t>(),
                    msk.const_data_ptr<scalar_t>(), grad_input_acc.mutable_data_ptr<acc_t>(),
                    grad_offset.mutable_data_ptr<scalar_t>(),
                    grad_mask_acc.mutable_data_ptr<acc_t>(), static_cast<index_t>(height),
                    static_cast<index_t>(width), static_cast<index_t>(out_h),
                    static_cast<index_t>(out_w), static_cast<index_t>(group),
                    static_cast<index_t>(group_channels), static_cast<index_t>(chunks),
                    lanes_log2, softmax, geo);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          };
          if (fits_int32({in.numel(), off.numel(), gout.numel(), total})) {
            launch(int32_t{0});
          } else {
            launch(int64_t{0});
          }
        });
      });

  const auto to_input_dtype = [&](const at::Tensor& t) {
    return acc_dtype == in.scalar_type() ? t : t.to(in.scalar_type());
  };
  return {to_input_dtype(grad_input_acc), grad_offset, to_input_dtype(grad_mask_acc)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnv3, CUDA, m) {
  m.impl("dcnv3_forward", TORCH_FN(dcnv3_forward_cuda));
  m.impl("dcnv3_backward", TORCH_FN(dcnv3_backward_cuda));
}

}  // namespace ops
}  // namespace dcnv3
