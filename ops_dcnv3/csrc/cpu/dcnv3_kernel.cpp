// DCNv3 CPU kernels: forward and backward for float32 and float64, parallel with at::parallel_for.
// Half and bfloat16 (e.g. from CPU autocast) are computed in float32 and cast back. With
// softmax=True the per-group mask softmax is taken per output position, in the kernel's precision,
// right before the taps that use it (and its Jacobian right after them, in the backward).
//
// Channels-last means one group's channels are contiguous in memory, so the bilinear corners and
// weights are worked out once per (n, ho, wo, group, point) and the inner loops run over channels.
// Both kernels walk output positions in memory order and handle every group of a position
// together, so offset, mask and the per-position rows stream through the cache once.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "dcnv3.h"

// ATen's OpenMP backend implements at::parallel_for in headers with `#pragma omp parallel`, so it
// only runs in parallel when this file is compiled with -fopenmp (and linked with it); without it,
// every loop below runs on one thread.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#define DCNV3_SINGLE_THREADED 1
#pragma message("dcnv3: compiled without OpenMP (-fopenmp): the CPU kernels will use one thread")
#else
#define DCNV3_SINGLE_THREADED 0
#endif

namespace dcnv3 {
namespace {

void warn_if_single_threaded() {
#if DCNV3_SINGLE_THREADED
  if (at::get_num_threads() > 1) {
    TORCH_WARN_ONCE("ops_dcnv3._C was compiled without OpenMP (-fopenmp), so its CPU kernels run on "
                    "one thread although torch uses ", at::get_num_threads(), ".");
  }
#endif
}

// Sizes and settings of one call.
struct Geometry {
  int64_t batch, height, width, channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t group, group_channels, points;
  // Offsets of the kernel centre from its first tap; offset_scale stretches the grid about it.
  int64_t centre_x, centre_y;
  double offset_scale;
};

Geometry make_geometry(const at::Tensor& input, int64_t out_h, int64_t out_w, int64_t kernel_h,
                       int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                       int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
                       int64_t group_channels, double offset_scale) {
  Geometry geo;
  geo.batch = input.size(0);
  geo.height = input.size(1);
  geo.width = input.size(2);
  geo.channels = input.size(3);
  geo.out_h = out_h;
  geo.out_w = out_w;
  geo.kernel_h = kernel_h;
  geo.kernel_w = kernel_w;
  geo.stride_h = stride_h;
  geo.stride_w = stride_w;
  geo.pad_h = pad_h;
  geo.pad_w = pad_w;
  geo.dilation_h = dilation_h;
  geo.dilation_w = dilation_w;
  geo.group = group;
  geo.group_channels = group_channels;
  geo.points = kernel_h * kernel_w;
  geo.centre_x = (dilation_w * (kernel_w - 1)) / 2;
  geo.centre_y = (dilation_h * (kernel_h - 1)) / 2;
  geo.offset_scale = offset_scale;
  return geo;
}

// ---- sampling positions ------------------------------------------------------------------------

// One sampling point: its four bilinear corners as pixel indices y * width + x, in the order
// (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1), or -1 for a corner outside the image
// (which reads as zero: implicit zero padding); and the fractional position (lx, ly).
template <typename scalar_t>
struct Tap {
  int64_t corner[4];
  scalar_t lx, ly, hx, hy;
};

// Fills `tap` and returns true unless the point reads nothing at all (every corner outside the
// image, or a NaN position).
template <typename scalar_t>
inline bool locate(scalar_t x, scalar_t y, int64_t height, int64_t width, Tap<scalar_t>& tap) {
  if (!(y > -1 && y < height && x > -1 && x < width)) return false;
  const scalar_t y_floor = std::floor(y), x_floor = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(y_floor), x0 = static_cast<int64_t>(x_floor);
  tap.ly = y - y_floor;
  tap.lx = x - x_floor;
  tap.hy = 1 - tap.ly;
  tap.hx = 1 - tap.lx;
  const bool top = y0 >= 0, bottom = y0 + 1 < height, left = x0 >= 0, right = x0 + 1 < width;
  tap.corner[0] = top && left ? y0 * width + x0 : -1;
  tap.corner[1] = top && right ? y0 * width + x0 + 1 : -1;
  tap.corner[2] = bottom && left ? (y0 + 1) * width + x0 : -1;
  tap.corner[3] = bottom && right ? (y0 + 1) * width + x0 + 1 : -1;
  return true;
}

// Visits every tap of output position (ho, wo) in group g, in point order p = i * kernel_h + j,
// with its index g * P + p and its sampling position (x, y) in input pixels.
template <typename scalar_t, typename Visit>
inline void for_each_tap(const Geometry& geo, const scalar_t* offset_row, int64_t ho, int64_t wo,
                         int64_t g, Visit&& visit) {
  const scalar_t scale = static_cast<scalar_t>(geo.offset_scale);
  const scalar_t base_x = static_cast<scalar_t>(wo * geo.stride_w - geo.pad_w + geo.centre_x);
  const scalar_t base_y = static_cast<scalar_t>(ho * geo.stride_h - geo.pad_h + geo.centre_y);
  for (int64_t i = 0; i < geo.kernel_w; ++i) {
    const scalar_t kernel_x = static_cast<scalar_t>(i * geo.dilation_w - geo.centre_x);
    for (int64_t j = 0; j < geo.kernel_h; ++j) {
      const scalar_t kernel_y = static_cast<scalar_t>(j * geo.dilation_h - geo.centre_y);
      const int64_t gp = g * geo.points + i * geo.kernel_h + j;
      const scalar_t x = base_x + (kernel_x + offset_row[2 * gp]) * scale;
      const scalar_t y = base_y + (kernel_y + offset_row[2 * gp + 1]) * scale;
      visit(gp, x, y);
    }
  }
}

// ---- channel loops -----------------------------------------------------------------------------

// Blocks of channels as GCC/Clang vector-extension values: 16 bytes, which the compiler keeps in
// registers on every x86-64/ARM64 baseline. (at::vec::Vectorized outside ATen's per-ISA builds
// falls back to arrays on the stack, measured 2.5x slower here; wider blocks split badly without
// AVX.) Other compilers use the scalar loops alone.
#if defined(__GNUC__) || defined(__clang__)
#define DCNV3_CHANNEL_BLOCKS 1
template <typename scalar_t>
struct ChannelBlock {
  typedef scalar_t type __attribute__((vector_size(16)));
  static constexpr int64_t size = 16 / sizeof(scalar_t);
  static type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof v);  // unaligned load
    return v;
  }
  static void store(scalar_t* p, type v) { std::memcpy(p, &v, sizeof v); }
  static scalar_t sum(type v) {
    scalar_t total = 0;
    for (int64_t lane = 0; lane < size; ++lane) total += v[lane];
    return total;
  }
};
#else
#define DCNV3_CHANNEL_BLOCKS 0
#endif

// out += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3 over cg channels.
template <typename scalar_t>
inline void forward_channels(int64_t cg, scalar_t* out, const scalar_t* v0, const scalar_t* v1,
                             const scalar_t* v2, const scalar_t* v3, scalar_t w0, scalar_t w1,
                             scalar_t w2, scalar_t w3) {
  int64_t c = 0;
#if DCNV3_CHANNEL_BLOCKS
  using Block = ChannelBlock<scalar_t>;
  for (; c + Block::size <= cg; c += Block::size) {
    Block::store(out + c, Block::load(out + c) + w0 * Block::load(v0 + c) +
                              w1 * Block::load(v1 + c) + w2 * Block::load(v2 + c) +
                              w3 * Block::load(v3 + c));
  }
#endif
  for (; c < cg; ++c) out[c] += w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c];
}

// Results of backward_channels: dot products over channels of grad_out with the sampled value and
// with its derivatives along x and y.
template <typename scalar_t>
struct TapGradient {
  scalar_t value, dx, dy;
};

// The channel loop of one backward tap: adds m * (bilinear weight) * grad_out to the four corners'
// grad_input (gi0..gi3) and returns the three dot products. Block-wise partial sums keep the dot
// products vectorised.
template <typename scalar_t>
inline TapGradient<scalar_t> backward_channels(int64_t cg, const scalar_t* grad_out,
                                               const scalar_t* v0, const scalar_t* v1,
                                               const scalar_t* v2, const scalar_t* v3,
                                               scalar_t* gi0, scalar_t* gi1, scalar_t* gi2,
                                               scalar_t* gi3, const Tap<scalar_t>& tap,
                                               scalar_t m) {
  const scalar_t hx = tap.hx, lx = tap.lx, hy = tap.hy, ly = tap.ly;
  const scalar_t w0 = hy * hx, w1 = hy * lx, w2 = ly * hx, w3 = ly * lx;
  const scalar_t mw0 = w0 * m, mw1 = w1 * m, mw2 = w2 * m, mw3 = w3 * m;
  TapGradient<scalar_t> result{0, 0, 0};
  int64_t c = 0;
#if DCNV3_CHANNEL_BLOCKS
  using Block = ChannelBlock<scalar_t>;
  if (cg >= Block::size) {
    typename Block::type sum_value{}, sum_dx{}, sum_dy{};
    for (; c + Block::size <= cg; c += Block::size) {
      const auto go = Block::load(grad_out + c);
      const auto a = Block::load(v0 + c), b = Block::load(v1 + c);
      const auto d = Block::load(v2 + c), e = Block::load(v3 + c);
      sum_value += go * (w0 * a + w1 * b + w2 * d + w3 * e);
      sum_dx += go * (hy * (b - a) + ly * (e - d));
      sum_dy += go * (hx * (d - a) + lx * (e - b));
      Block::store(gi0 + c, Block::load(gi0 + c) + mw0 * go);
      Block::store(gi1 + c, Block::load(gi1 + c) + mw1 * go);
      Block::store(gi2 + c, Block::load(gi2 + c) + mw2 * go);
      Block::store(gi3 + c, Block::load(gi3 + c) + mw3 * go);
    }
    result = {Block::sum(sum_value), Block::sum(sum_dx), Block::sum(sum_dy)};
  }
#endif
  for (; c < cg; ++c) {
    const scalar_t go = grad_out[c];
    const scalar_t a = v0[c], b = v1[c], d = v2[c], e = v3[c];
    result.value += go * (w0 * a + w1 * b + w2 * d + w3 * e);
    result.dx += go * (hy * (b - a) + ly * (e - d));
    result.dy += go * (hx * (d - a) + lx * (e - b));
    gi0[c] += mw0 * go;
    gi1[c] += mw1 * go;
    gi2[c] += mw2 * go;
    gi3[c] += mw3 * go;
  }
  return result;
}

// ---- the fused mask softmax ---------------------------------------------------------------------

// weights[g * P + p] = softmax over p of logits[g * P + p], for every group of one output position.
// NaN logits give NaN weights for their group, as torch.softmax does.
template <typename scalar_t>
inline void softmax_groups(const scalar_t* logits, int64_t group, int64_t points,
                           scalar_t* weights) {
  for (int64_t g = 0; g < group; ++g) {
    const scalar_t* l = logits + g * points;
    scalar_t* w = weights + g * points;
    scalar_t largest = l[0];
    for (int64_t p = 1; p < points; ++p) largest = std::max(largest, l[p]);
    scalar_t sum = 0;
    for (int64_t p = 0; p < points; ++p) sum += (w[p] = std::exp(l[p] - largest));
    const scalar_t inverse = scalar_t(1) / sum;
    for (int64_t p = 0; p < points; ++p) w[p] *= inverse;
  }
}

// Turns gradients with respect to the softmax weights into gradients with respect to the logits,
// in place: grad_l[p] = w[p] * (grad_w[p] - sum_q w[q] * grad_w[q]), per group.
template <typename scalar_t>
inline void softmax_groups_backward(const scalar_t* weights, int64_t group, int64_t points,
                                    scalar_t* grad) {
  for (int64_t g = 0; g < group; ++g) {
    const scalar_t* w = weights + g * points;
    scalar_t* gw = grad + g * points;
    scalar_t dot = 0;
    for (int64_t p = 0; p < points; ++p) dot += w[p] * gw[p];
    for (int64_t p = 0; p < points; ++p) gw[p] = w[p] * (gw[p] - dot);
  }
}

// ---- forward -----------------------------------------------------------------------------------

template <typename scalar_t>
void forward_kernel(const Geometry& geo, const scalar_t* input, const scalar_t* offset,
                    const scalar_t* mask, bool softmax, scalar_t* output) {
  const int64_t cg = geo.group_channels;
  const int64_t positions = geo.batch * geo.out_h * geo.out_w;
  const int64_t grain = std::max<int64_t>(1, 16384 / (geo.group * geo.points * cg));

  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(cg, scalar_t(0));  // what an outside corner reads
    std::vector<scalar_t> weights(softmax ? geo.group * geo.points : 0);
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t wo = pos % geo.out_w, ho = (pos / geo.out_w) % geo.out_h;
      const int64_t n = pos / (geo.out_w * geo.out_h);
      const scalar_t* image = input + n * geo.height * geo.width * geo.channels;
      const scalar_t* offset_row = offset + pos * geo.group * geo.points * 2;
      const scalar_t* mask_row = mask + pos * geo.group * geo.points;
      if (softmax) {
        softmax_groups(mask_row, geo.group, geo.points, weights.data());
        mask_row = weights.data();
      }
      scalar_t* out_row = output + pos * geo.channels;
      std::fill(out_row, out_row + geo.channels, scalar_t(0));

      for (int64_t g = 0; g < geo.group; ++g) {
        const scalar_t* image_g = image + g * cg;
        for_each_tap(geo, offset_row, ho, wo, g, [&](int64_t gp, scalar_t x, scalar_t y) {
          Tap<scalar_t> tap;
          if (!locate(x, y, geo.height, geo.width, tap)) return;
          const scalar_t m = mask_row[gp];
          const scalar_t* v[4];
          for (int k = 0; k < 4; ++k) {
            v[k] = tap.corner[k] >= 0 ? image_g + tap.corner[k] * geo.channels : zeros.data();
          }
          forward_channels(cg, out_row + g * cg, v[0], v[1], v[2], v[3], tap.hy * tap.hx * m,
                           tap.hy * tap.lx * m, tap.ly * tap.hx * m, tap.ly * tap.lx * m);
        });
      }
    }
  });
}

// ---- backward ----------------------------------------------------------------------------------

// The range [first, last) of global input rows (n * height + y) that output rows
// [row_begin, row_end) (global: n * out_h + ho) scatter gradients into.
template <typename scalar_t>
std::pair<int64_t, int64_t> touched_input_rows(const Geometry& geo, const scalar_t* offset,
                                               int64_t row_begin, int64_t row_end) {
  int64_t first = geo.batch * geo.height, last = 0;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / geo.out_h, ho = row % geo.out_h;
    for (int64_t wo = 0; wo < geo.out_w; ++wo) {
      const scalar_t* offset_row = offset + (row * geo.out_w + wo) * geo.group * geo.points * 2;
      for (int64_t g = 0; g < geo.group; ++g) {
        for_each_tap(geo, offset_row, ho, wo, g, [&](int64_t, scalar_t x, scalar_t y) {
          if (!(y > -1 && y < geo.height && x > -1 && x < geo.width)) return;
          const int64_t y0 = static_cast<int64_t>(std::floor(y));
          first = std::min(first, n * geo.height + std::max<int64_t>(y0, 0));
          last = std::max(last, n * geo.height + std::min<int64_t>(y0 + 1, geo.height - 1) + 1);
        });
      }
    }
  }
  return {first, std::max(first, last)};
}

// grad_offset and grad_mask of one (n, ho, wo, g, p) are dot products over the group's channels,
// written by whichever thread handles that output position. grad_input is a scatter, and offsets
// let any output position reach any input pixel, so the output rows are split into one contiguous
// chunk per thread: chunk 0 accumulates straight into grad_input, every other chunk into a private
// buffer covering only the input rows it reaches (a few rows more than its share, for offsets of
// a few pixels); the buffers are then added in chunk order. No atomics, and the result is
// deterministic for a given thread count.
template <typename scalar_t>
void backward_kernel(const Geometry& geo, const scalar_t* grad_output, const scalar_t* input,
                     const scalar_t* offset, const scalar_t* mask, bool softmax,
                     scalar_t* grad_input,
                     scalar_t* grad_offset, scalar_t* grad_mask) {
  const int64_t cg = geo.group_channels;
  const int64_t image_pixels = geo.height * geo.width;
  const int64_t row_size = geo.width * geo.channels;  // elements of one input row
  const int64_t out_rows = geo.batch * geo.out_h;
  if (out_rows == 0) return;
  const int64_t chunks = std::clamp<int64_t>(at::get_num_threads(), 1, out_rows);

  // Chunk c > 0 accumulates global input rows [row_begin, row_end) here.
  struct ChunkBuffer {
    int64_t row_begin = 0, row_end = 0;
    std::vector<scalar_t> data;
  };
  std::vector<ChunkBuffer> buffers(chunks);

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    const std::vector<scalar_t> zeros(cg, scalar_t(0));  // what an outside corner reads
    std::vector<scalar_t> discard(4 * cg);  // where an outside corner's gradient goes
    std::vector<scalar_t> weights(softmax ? geo.group * geo.points : 0);

    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const int64_t row_begin = chunk * out_rows / chunks;
      const int64_t row_end = (chunk + 1) * out_rows / chunks;
      // Global input pixel q (n * H * W + y * W + x) accumulates at dest + (q - dest_origin) * C.
      scalar_t* dest = grad_input;
      int64_t dest_origin = 0;
      if (chunk > 0) {
        ChunkBuffer& buffer = buffers[chunk];
        std::tie(buffer.row_begin, buffer.row_end) =
            touched_input_rows(geo, offset, row_begin, row_end);
        buffer.data.assign((buffer.row_end - buffer.row_begin) * row_size, scalar_t(0));
        dest = buffer.data.data();
        dest_origin = buffer.row_begin * geo.width;
      }

      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t n = row / geo.out_h, ho = row % geo.out_h;
        const scalar_t* image = input + n * image_pixels * geo.channels;
        const int64_t image_origin = n * image_pixels - dest_origin;
        for (int64_t wo = 0; wo < geo.out_w; ++wo) {
          const int64_t pos = row * geo.out_w + wo;
          const scalar_t* offset_row = offset + pos * geo.group * geo.points * 2;
          const scalar_t* mask_row = mask + pos * geo.group * geo.points;
          scalar_t* grad_offset_row = grad_offset + pos * geo.group * geo.points * 2;
          scalar_t* grad_mask_row = grad_mask + pos * geo.group * geo.points;
          if (softmax) {
            softmax_groups(mask_row, geo.group, geo.points, weights.data());
            mask_row = weights.data();
          }

          for (int64_t g = 0; g < geo.group; ++g) {
            const scalar_t* image_g = image + g * cg;
            const scalar_t* grad_out = grad_output + pos * geo.channels + g * cg;
            for_each_tap(geo, offset_row, ho, wo, g, [&](int64_t gp, scalar_t x, scalar_t y) {
              Tap<scalar_t> tap;
              if (!locate(x, y, geo.height, geo.width, tap)) {
                grad_offset_row[2 * gp] = grad_offset_row[2 * gp + 1] = grad_mask_row[gp] = 0;
                return;
              }
              const scalar_t* v[4];
              scalar_t* gi[4];
              for (int k = 0; k < 4; ++k) {
                const bool inside = tap.corner[k] >= 0;
                v[k] = inside ? image_g + tap.corner[k] * geo.channels : zeros.data();
                gi[k] = inside ? dest + (image_origin + tap.corner[k]) * geo.channels + g * cg
                               : discard.data() + k * cg;
              }
              const scalar_t m = mask_row[gp];
              const TapGradient<scalar_t> grad = backward_channels(
                  cg, grad_out, v[0], v[1], v[2], v[3], gi[0], gi[1], gi[2], gi[3], tap, m);
              const scalar_t scale = static_cast<scalar_t>(geo.offset_scale);
              grad_mask_row[gp] = grad.value;
              grad_offset_row[2 * gp] = grad.dx * m * scale;
              grad_offset_row[2 * gp + 1] = grad.dy * m * scale;
            });
          }
          if (softmax) softmax_groups_backward(mask_row, geo.group, geo.points, grad_mask_row);
        }
      }
    }
  });

  if (chunks == 1) return;
  at::parallel_for(0, geo.batch * geo.height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t input_row = begin; input_row < end; ++input_row) {
      scalar_t* target = grad_input + input_row * row_size;
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        const ChunkBuffer& buffer = buffers[chunk];
        if (input_row < buffer.row_begin || input_row >= buffer.row_end) continue;
        const scalar_t* source = buffer.data.data() + (input_row - buffer.row_begin) * row_size;
        for (int64_t i = 0; i < row_size; ++i) target[i] += source[i];
      }
    }
  });
}

// ---- ops ---------------------------------------------------------------------------------------

bool is_reduced_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

at::Tensor dcnv3_forward_cpu(const at::Tensor& input, const at::Tensor& offset,
                             const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                             int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                             int64_t dilation_h, int64_t dilation_w, int64_t group,
                             int64_t group_channels, double offset_scale, bool softmax) {
  const auto [out_h, out_w] =
      check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, group, group_channels, offset_scale);
  if (is_reduced_float(input)) {
    return dcnv3_forward_cpu(input.to(at::kFloat), offset.to(at::kFloat), mask.to(at::kFloat),
                             kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                             dilation_w, group, group_channels, offset_scale, softmax)
        .to(input.scalar_type());
  }
  const Geometry geo = make_geometry(input, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                                     pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                                     offset_scale);
  const at::Tensor input_c = input.contiguous(), offset_c = offset.contiguous();
  const at::Tensor mask_c = mask.contiguous();
  at::Tensor output = at::empty({geo.batch, out_h, out_w, geo.channels}, input.options());
  warn_if_single_threaded();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_forward_cpu", [&] {
    forward_kernel<scalar_t>(geo, input_c.const_data_ptr<scalar_t>(),
                             offset_c.const_data_ptr<scalar_t>(), mask_c.const_data_ptr<scalar_t>(),
                             softmax, output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t group,
    int64_t group_channels, double offset_scale, bool softmax) {
  const auto [out_h, out_w] =
      check_dcnv3_args(input, offset, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w, group, group_channels, offset_scale);
  check_dcnv3_grad_output(grad_output, input, out_h, out_w);
  if (is_reduced_float(input)) {
    const auto dtype = input.scalar_type();
    auto [grad_input, grad_offset, grad_mask] = dcnv3_backward_cpu(
        grad_output.to(at::kFloat), input.to(at::kFloat), offset.to(at::kFloat),
        mask.to(at::kFloat), kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
        dilation_w, group, group_channels, offset_scale, softmax);
    return {grad_input.to(dtype), grad_offset.to(dtype), grad_mask.to(dtype)};
  }
  const Geometry geo = make_geometry(input, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w,
                                     pad_h, pad_w, dilation_h, dilation_w, group, group_channels,
                                     offset_scale);
  const at::Tensor grad_output_c = grad_output.contiguous(), input_c = input.contiguous();
  const at::Tensor offset_c = offset.contiguous(), mask_c = mask.contiguous();
  // Every grad_offset/grad_mask entry is written; grad_input is accumulated into.
  at::Tensor grad_input = at::zeros(input_c.sizes(), input.options());
  at::Tensor grad_offset = at::empty(offset_c.sizes(), offset.options());
  at::Tensor grad_mask = at::empty(mask_c.sizes(), mask.options());
  warn_if_single_threaded();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_backward_cpu", [&] {
    backward_kernel<scalar_t>(
        geo, grad_output_c.const_data_ptr<scalar_t>(), input_c.const_data_ptr<scalar_t>(),
        offset_c.const_data_ptr<scalar_t>(), mask_c.const_data_ptr<scalar_t>(), softmax,
        grad_input.mutable_data_ptr<scalar_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
        grad_mask.mutable_data_ptr<scalar_t>());
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcnv3, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward_cpu);
  m.impl("dcnv3_backward", &dcnv3_backward_cpu);
}

}  // namespace dcnv3
