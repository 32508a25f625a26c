// DCNv3 CPU kernels: forward and backward for float32 and float64, parallel with at::parallel_for.
// Half and bfloat16 (e.g. from CPU autocast) are computed in float32 and cast back. With
// softmax=True the per-group mask softmax is taken per output position, in the kernel's precision,
// right before the taps that use it (and its Jacobian right after them, in the backward).
//
// Channels-last means one group's channels are contiguous in memory, so the bilinear corners and
// weights are worked out once per (n, ho, wo, group, point) and the inner loops run over channels.
// Both kernels walk output positions in memory order and handle every group of a position
// together, so offset, mask and the per-position rows stream through the cache once.
//
// The kernels themselves (dcnv3_kernel_body.h) are compiled here once per instruction set: the
// x86-64 baseline, and with GCC on x86-64 also AVX2 and AVX-512, whose wider channel blocks and
// fused multiply-adds (with the backward's horizontal sums taken by halves) made the
// InternImage-T layers' forward about 13% and backward about 24% faster on an AVX-512 CPU
// (docs/benchmarks.md). The one ATen itself runs with is picked at run
// time (at::get_cpu_capability(): the CPU's best, or the ATEN_CPU_CAPABILITY environment variable).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
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
  // The kernels' tap plans hold pixel indices (y * width + x) as int32.
  TORCH_CHECK(geo.height * geo.width <= INT32_MAX, "dcnv3: the CPU kernels take images of at most ",
              INT32_MAX, " pixels, got ", geo.height, "x", geo.width);
  return geo;
}

// ---- the kernels, once per instruction set ------------------------------------------------------

namespace baseline {
#define DCNV3_MAX_BLOCK_BYTES 16
#include "cpu/dcnv3_kernel_body.h"
#undef DCNV3_MAX_BLOCK_BYTES
}  // namespace baseline

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DCNV3_X86_VARIANTS 1
// The feature sets ATen requires for its own AVX2 and AVX512 kernels.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define DCNV3_MAX_BLOCK_BYTES 32
#include "cpu/dcnv3_kernel_body.h"
#undef DCNV3_MAX_BLOCK_BYTES
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
namespace avx512 {
#define DCNV3_MAX_BLOCK_BYTES 64
#include "cpu/dcnv3_kernel_body.h"
#undef DCNV3_MAX_BLOCK_BYTES
}  // namespace avx512
#pragma GCC pop_options
#else
#define DCNV3_X86_VARIANTS 0
#endif

enum class InstructionSet { kBaseline, kAvx2, kAvx512 };

InstructionSet kernel_instruction_set() {
  static const InstructionSet chosen = [] {
#if DCNV3_X86_VARIANTS
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512") return InstructionSet::kAvx512;
    if (capability == "AVX2") return InstructionSet::kAvx2;
#endif
    return InstructionSet::kBaseline;
  }();
  return chosen;
}

template <typename scalar_t>
void forward_kernel(const Geometry& geo, const scalar_t* input, const scalar_t* offset,
                    const scalar_t* mask, bool softmax, scalar_t* output) {
  switch (kernel_instruction_set()) {
#if DCNV3_X86_VARIANTS
    case InstructionSet::kAvx512:
      return avx512::forward_kernel(geo, input, offset, mask, softmax, output);
    case InstructionSet::kAvx2:
      return avx2::forward_kernel(geo, input, offset, mask, softmax, output);
#endif
    default:
      return baseline::forward_kernel(geo, input, offset, mask, softmax, output);
  }
}

template <typename scalar_t>
void backward_kernel(const Geometry& geo, const scalar_t* grad_output, const scalar_t* input,
                     const scalar_t* offset, const scalar_t* mask, bool softmax,
                     scalar_t* grad_input, scalar_t* grad_offset, scalar_t* grad_mask) {
  switch (kernel_instruction_set()) {
#if DCNV3_X86_VARIANTS
    case InstructionSet::kAvx512:
      return avx512::backward_kernel(geo, grad_output, input, offset, mask, softmax, grad_input,
                                     grad_offset, grad_mask);
    case InstructionSet::kAvx2:
      return avx2::backward_kernel(geo, grad_output, input, offset, mask, softmax, grad_input,
                                   grad_offset, grad_mask);
#endif
    default:
      return baseline::backward_kernel(geo, grad_output, input, offset, mask, softmax, grad_input,
                                       grad_offset, grad_mask);
  }
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

// Which of the compiled variants the CPU kernels run: what ATen's capability picked, as far as
// this build has a variant for it (tests check the pick, benchmarks report it).
std::string cpu_kernel_variant() {
  switch (kernel_instruction_set()) {
    case InstructionSet::kAvx512:
      return "avx512";
    case InstructionSet::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(dcnv3, m) {
  m.def("cpu_kernel_variant() -> str", &cpu_kernel_variant);
}

TORCH_LIBRARY_IMPL(dcnv3, CPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward_cpu);
  m.impl("dcnv3_backward", &dcnv3_backward_cpu);
}

}  // namespace dcnv3
