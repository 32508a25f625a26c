// DCNv3 shape rules and argument checks, shared by the CPU and CUDA kernels (one home for them).
//
// Layout (everything channels-last, P = kernel_h * kernel_w):
//   input  (N, H, W, group * group_channels)    channel g * group_channels + c belongs to group g
//   offset (N, Ho, Wo, group * P * 2)            entry (g * P + p) * 2 is x, + 1 is y, in pixels
//   mask   (N, Ho, Wo, group * P)                entry g * P + p: the weights as given, or with
//                                                softmax=True logits, normalised by the kernels
//                                                with a softmax over the P points of each group
//   output (N, Ho, Wo, group * group_channels)
// Point p = i * kernel_h + j, with i the kernel column (x) as the outer index.
// With softmax=True the backward returns the gradient with respect to the logits. Fusing the
// softmax saves a separate pass (and, in training, a saved tensor) per DCNv3 layer.
//
// Kept to ATen/c10 headers so nvcc can include it. The checks are defined in dcnv3.cpp.
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

namespace dcnv3 {

// Floor division (Python's //), so a too-small input gives Ho <= 0 rather than rounding up to 1.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// Spatial size (Ho, Wo) of the output, and of offset and mask: the convolution formula.
inline std::pair<int64_t, int64_t> dcnv3_output_size(
    int64_t height, int64_t width, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
    int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const int64_t out_h = floor_div(height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1), stride_h) + 1;
  const int64_t out_w = floor_div(width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1), stride_w) + 1;
  return {out_h, out_w};
}

// Checks every rule above (dims, channel counts, offset/mask sizes against the computed Ho x Wo,
// floating and equal dtypes, one device, kernel/stride/dilation >= 1, pad >= 0, group and
// group_channels >= 1, all of these below 2^31, a finite offset_scale (within float32's range
// for other dtypes than float64), output size >= 1, padded input below 2^31 a side) and
// returns (Ho, Wo). Throws c10::ValueError
// (c10::TypeError for dtype problems) with a message naming the problem. Does not require
// contiguity: the ops call .contiguous() before the kernels run.
std::pair<int64_t, int64_t> check_dcnv3_args(
    const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask, int64_t kernel_h,
    int64_t kernel_w, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
    int64_t dilation_h, int64_t dilation_w, int64_t group, int64_t group_channels,
    double offset_scale);

// For dcnv3_backward, after check_dcnv3_args: grad_output must be (N, Ho, Wo, C) with the
// input's dtype and device.
void check_dcnv3_grad_output(const at::Tensor& grad_output, const at::Tensor& input, int64_t out_h,
                             int64_t out_w);

}  // namespace dcnv3
