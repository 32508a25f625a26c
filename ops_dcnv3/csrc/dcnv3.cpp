// The dcnv3:: operator schema, the shared argument checks, the autocast wrappers and the Python
// module init of ops_dcnv3._C. The kernels register themselves per device (cpu/, cuda/); autograd
// and the fake (meta) kernels are registered once, in Python (functions/dcnv3_func.py).
#include <Python.h>

#include <cmath>
#include <initializer_list>
#include <limits>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/safe_numerics.h>
#include <torch/library.h>

#include "dcnv3.h"

namespace dcnv3 {

namespace {

// The product of factors >= 1, or INT64_MAX where it would not fit (then no tensor size equals it).
int64_t saturated_product(std::initializer_list<int64_t> factors) {
  int64_t product = 1;
  for (const int64_t factor : factors) {
    if (c10::mul_overflows(product, factor, &product)) {
      return std::numeric_limits<int64_t>::max();
    }
  }
  return product;
}

}  // namespace

std::pair<int64_t, int64_t> check_dcnv3_args(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
    int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
    double offset_scale) {
  const std::pair<const char*, const at::Tensor*> tensors[] = {
      {"input", &input}, {"offset", &offset}, {"mask", &mask}};
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK_VALUE(tensor->dim() == 4, "dcnv3: ", name,
                      " must be a 4-D channels-last (N, H, W, C) tensor, got ", tensor->dim(),
                      "-D shape ", tensor->sizes());
  }
  TORCH_CHECK_VALUE(kernel_h >= 1 && kernel_w >= 1, "dcnv3: kernel size must be >= 1, got kernel_h=",
                    kernel_h, ", kernel_w=", kernel_w);
  TORCH_CHECK_VALUE(stride_h >= 1 && stride_w >= 1, "dcnv3: stride must be >= 1, got stride_h=",
                    stride_h, ", stride_w=", stride_w);
  TORCH_CHECK_VALUE(pad_h >= 0 && pad_w >= 0, "dcnv3: padding must be >= 0, got pad_h=", pad_h,
                    ", pad_w=", pad_w);
  TORCH_CHECK_VALUE(dilation_h >= 1 && dilation_w >= 1,
                    "dcnv3: dilation must be >= 1, got dilation_h=", dilation_h,
                    ", dilation_w=", dilation_w);
  TORCH_CHECK_VALUE(group >= 1, "dcnv3: group must be >= 1, got ", group);
  TORCH_CHECK_VALUE(group_channels >= 1, "dcnv3: group_channels must be >= 1, got ", group_channels);
  // The CUDA kernel keeps these in int (and the output-size formula multiplies them).
  constexpr int64_t kLimit = int64_t{1} << 31;
  TORCH_CHECK_VALUE(kernel_h < kLimit && kernel_w < kLimit && stride_h < kLimit &&
                        stride_w < kLimit && pad_h < kLimit && pad_w < kLimit &&
                        dilation_h < kLimit && dilation_w < kLimit && group < kLimit &&
                        group_channels < kLimit,
                    "dcnv3: kernel size, stride, padding, dilation, group and group_channels must "
                    "be below 2^31, got kernel ", kernel_h, "x", kernel_w, ", stride ", stride_h,
                    "x", stride_w, ", pad ", pad_h, "x", pad_w, ", dilation ", dilation_h, "x",
                    dilation_w, ", group ", group, ", group_channels ", group_channels);
  // A NaN or infinite scale puts every sampling point nowhere: an all-zero output.
  TORCH_CHECK_VALUE(std::isfinite(offset_scale), "dcnv3: offset_scale must be finite, got ",
                    offset_scale);

  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat ||
                       dtype == at::kDouble,
                   "dcnv3: input must have a floating-point dtype (float16, bfloat16, float32 or "
                   "float64), got ", dtype);
  TORCH_CHECK_TYPE(
      input.scalar_type() == offset.scalar_type() && input.scalar_type() == mask.scalar_type(),
      "dcnv3: input, offset and mask must have the same dtype, got ", input.scalar_type(), ", ",
      offset.scalar_type(), " and ", mask.scalar_type());
  // A scale beyond float32 becomes infinite in the kernels' float32 arithmetic: an all-zero output.
  TORCH_CHECK_VALUE(dtype == at::kDouble ||
                        std::abs(offset_scale) <= std::numeric_limits<float>::max(),
                    "dcnv3: offset_scale must lie within float32's range (the kernels compute "
                    "float32, float16 and bfloat16 inputs in float32), got ", offset_scale);
  TORCH_CHECK_VALUE(input.device() == offset.device() && input.device() == mask.device(),
                    "dcnv3: input, offset and mask must be on the same device, got ",
                    input.device(), ", ", offset.device(), " and ", mask.device());

  const int64_t batch = input.size(0), height = input.size(1), width = input.size(2);
  const int64_t channels = input.size(3);
  TORCH_CHECK_VALUE(channels % group == 0, "dcnv3: input channels (", channels,
                    ") must be divisible by group (", group, ")");
  TORCH_CHECK_VALUE(channels == group * group_channels, "dcnv3: input channels (", channels,
                    ") must equal group * group_channels (", group, " * ", group_channels, " = ",
                    group * group_channels, ")");
  const int64_t mask_size = saturated_product({group, kernel_h, kernel_w});
  const int64_t offset_size = saturated_product({mask_size, 2});
  TORCH_CHECK_VALUE(offset.size(3) == offset_size,
                    "dcnv3: offset last dim must be group * kernel_h * kernel_w * 2 (", group, " * ",
                    kernel_h, " * ", kernel_w, " * 2 = ", offset_size, "), got ", offset.size(3));
  TORCH_CHECK_VALUE(mask.size(3) == mask_size,
                    "dcnv3: mask last dim must be group * kernel_h * kernel_w (", group, " * ",
                    kernel_h, " * ", kernel_w, " = ", mask_size, "), got ", mask.size(3));

  const auto [out_h, out_w] = dcnv3_output_size(height, width, kernel_h, kernel_w, stride_h,
                                                stride_w, pad_h, pad_w, dilation_h, dilation_w);
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "dcnv3: output size would be ", out_h, "x", out_w,
                    " (input ", height, "x", width, ", kernel ", kernel_h, "x", kernel_w,
                    ", stride ", stride_h, "x", stride_w, ", pad ", pad_h, "x", pad_w,
                    ", dilation ", dilation_h, "x", dilation_w, "); it must be at least 1x1");
  // The CUDA kernels compute sampling positions in int: they and the kernel's extent lie within
  // the padded input.
  const int64_t padded_h = height + 2 * pad_h, padded_w = width + 2 * pad_w;
  TORCH_CHECK_VALUE(padded_h < kLimit && padded_w < kLimit,
                    "dcnv3: the padded input (H + 2 * pad_h) x (W + 2 * pad_w) = ", padded_h, "x",
                    padded_w, " must be below 2^31 on each side");
  for (const auto& [name, tensor] : {tensors[1], tensors[2]}) {
    TORCH_CHECK_VALUE(
        tensor->size(0) == batch && tensor->size(1) == out_h && tensor->size(2) == out_w,
        "dcnv3: ", name, " must have shape (N, Ho, Wo, ...) = (", batch, ", ", out_h, ", ", out_w,
        ", ...) for this input and kernel settings, got ", tensor->sizes());
  }
  return {out_h, out_w};
}

void check_dcnv3_grad_output(const at::Tensor& grad_output, const at::Tensor& input, int64_t out_h,
                             int64_t out_w) {
  const std::vector<int64_t> expected = {input.size(0), out_h, out_w, input.size(3)};
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected),
                    "dcnv3: grad_output must have the output shape ", at::IntArrayRef(expected),
                    ", got ", grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(),
                   "dcnv3: grad_output must have the input dtype ", input.scalar_type(), ", got ",
                   grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.device() == input.device(),
                    "dcnv3: grad_output must be on the input device ", input.device(), ", got ",
                    grad_output.device());
}

namespace {

// Under autocast the op runs in the dtype of `input` (the projected values): a mask computed with a
// softmax in Python stays float32 under autocast, next to half-precision values. Casting offset and
// mask here, rather than to one autocast dtype, keeps float32 models in float32. (Mask logits for
// softmax=True are cast the same way; the kernels take the softmax in float32 or wider.)
template <c10::DispatchKey autocast_key>
at::Tensor dcnv3_forward_autocast(const at::Tensor& input, const at::Tensor& offset,
                                  const at::Tensor& mask, int64_t kernel_h, int64_t kernel_w,
                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                                  int64_t dilation_h, int64_t dilation_w, int64_t group,
                                  int64_t group_channels, double offset_scale, bool softmax) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("dcnv3::dcnv3_forward", "")
                             .typed<decltype(dcnv3_forward_autocast<autocast_key>)>();
  // Only floating tensors are cast, so a wrong dtype still reaches the check and its message.
  const auto cast = [&](const at::Tensor& t) {
    return at::isFloatingType(t.scalar_type()) && at::isFloatingType(input.scalar_type())
               ? t.to(input.scalar_type())
               : t;
  };
  return op.call(input, cast(offset), cast(mask), kernel_h, kernel_w, stride_h, stride_w, pad_h,
                 pad_w, dilation_h, dilation_w, group, group_channels, offset_scale, softmax);
}

}  // namespace

TORCH_LIBRARY(dcnv3, m) {
  m.def(
      "dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int kernel_h, int kernel_w, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, "
      "int group, int group_channels, float offset_scale, bool softmax=False) -> Tensor");
  m.def(
      "dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, "
      "int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, "
      "int dilation_h, int dilation_w, int group, int group_channels, float offset_scale, "
      "bool softmax=False) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(dcnv3, AutocastCPU, m) {
  m.impl("dcnv3_forward", &dcnv3_forward_autocast<c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(dcnv3, AutocastCUDA, m) {
  m.impl("dcnv3_forward", &dcnv3_forward_autocast<c10::DispatchKey::AutocastCUDA>);
}

}  // namespace dcnv3

// Importing ops_dcnv3._C loads this library, whose static initialisers register the ops above;
// the module itself holds nothing.
static PyModuleDef dcnv3_module = {PyModuleDef_HEAD_INIT, "_C",
                                   "DCNv3 operator library: see torch.ops.dcnv3", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&dcnv3_module); }
