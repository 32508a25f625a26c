// The computational body of the DCNv3 CPU kernels (forward_kernel, backward_kernel and their
// helpers). No include guard: dcnv3_kernel.cpp includes it once per instruction set, each time
// inside its own namespace and under its own `#pragma GCC target`, with DCNV3_MAX_BLOCK_BYTES set
// to that set's vector width, and picks one at run time. Include only after every header it uses
// (the std and ATen headers of dcnv3_kernel.cpp), so none of their inline functions is compiled
// for a wider instruction set than the baseline.

// ---- sampling positions ------------------------------------------------------------------------

// One sampling point: its four bilinear corners as pixel indices y * width + x, in the order
// (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1), or -1 for a corner outside the image
// (which reads as zero: implicit zero padding); and the fractional position (lx, ly).
template <typename scalar_t>
struct Tap {
  int64_t corner[4];
  scalar_t lx, ly, hx, hy;
};

// Where corner k of `tap` reads a group's channels: the pixel's element in an image starting at
// `base`, plus the group's channel offset; `outside` for a corner outside the image.
template <typename scalar_t, typename T>
inline T* corner_address(const Tap<scalar_t>& tap, int k, T* base, int64_t channels,
                         int64_t group_offset, T* outside) {
  return tap.corner[k] >= 0 ? base + tap.corner[k] * channels + group_offset : outside;
}

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

// Blocks of channels as GCC/Clang vector-extension values of `Bytes` bytes. Each instruction-set
// variant walks the channels in its widest block first (DCNV3_MAX_BLOCK_BYTES: 16 for the x86-64/
// ARM64 baseline, 32 with AVX2, 64 with AVX-512), then in halves down to 16 bytes, then one by one:
// InternImage's 16 channels per group are one AVX-512 block. (at::vec::Vectorized outside ATen's
// per-ISA builds falls back to arrays on the stack, measured 2.5x slower here; blocks wider than
// the instruction set split badly.) Other compilers use the scalar loops alone.
#if defined(__GNUC__) || defined(__clang__)
#define DCNV3_CHANNEL_BLOCKS 1
template <typename scalar_t, int Bytes>
struct ChannelBlock {
  typedef scalar_t type __attribute__((vector_size(Bytes)));
  static constexpr int64_t size = Bytes / sizeof(scalar_t);
  static type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof v);  // unaligned load
    return v;
  }
  static void store(scalar_t* p, type v) { std::memcpy(p, &v, sizeof v); }
  // Halves added until two lanes are left: a few vector adds instead of a scalar add (and a
  // shuffle) per lane. The halves are taken with constant lane shuffles, which keep the value in
  // registers (copying them out through memory kept the backward's sums on the stack).
  static scalar_t sum(type v) {
    if constexpr (size > 2) {
      using Half = ChannelBlock<scalar_t, Bytes / 2>;
      return Half::sum(lanes<typename Half::type>(v, std::make_index_sequence<size / 2>{}, 0) +
                       lanes<typename Half::type>(v, std::make_index_sequence<size / 2>{}, 1));
    } else {
      return size == 2 ? v[0] + v[1] : v[0];
    }
  }
  // The low (part 0) or high (part 1) half of v (GCC before 12 has no __builtin_shufflevector:
  // there the halves are copied).
  template <typename HalfType, size_t... I>
  static HalfType lanes(type v, std::index_sequence<I...>, int part) {
#if defined(__clang__) || __GNUC__ >= 12
    return part == 0 ? __builtin_shufflevector(v, v, I...)
                     : __builtin_shufflevector(v, v, (I + size / 2)...);
#else
    HalfType half;
    std::memcpy(&half, reinterpret_cast<const char*>(&v) + part * sizeof half, sizeof half);
    return half;
#endif
  }
};
#else
#define DCNV3_CHANNEL_BLOCKS 0
#endif

// out += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3 over channels [c, cg), in blocks of `Bytes` then
// narrower ones; returns where the blocks stopped.
template <typename scalar_t, int Bytes>
inline int64_t forward_blocks(int64_t c, int64_t cg, scalar_t* out, const scalar_t* v0,
                              const scalar_t* v1, const scalar_t* v2, const scalar_t* v3,
                              scalar_t w0, scalar_t w1, scalar_t w2, scalar_t w3) {
#if DCNV3_CHANNEL_BLOCKS
  using Block = ChannelBlock<scalar_t, Bytes>;
  for (; c + Block::size <= cg; c += Block::size) {
    Block::store(out + c, Block::load(out + c) + w0 * Block::load(v0 + c) +
                              w1 * Block::load(v1 + c) + w2 * Block::load(v2 + c) +
                              w3 * Block::load(v3 + c));
  }
  if constexpr (Bytes > 16) {
    c = forward_blocks<scalar_t, Bytes / 2>(c, cg, out, v0, v1, v2, v3, w0, w1, w2, w3);
  }
#endif
  return c;
}

// out += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3 over cg channels.
template <typename scalar_t>
inline void forward_channels(int64_t cg, scalar_t* out, const scalar_t* v0, const scalar_t* v1,
                             const scalar_t* v2, const scalar_t* v3, scalar_t w0, scalar_t w1,
                             scalar_t w2, scalar_t w3) {
  int64_t c = forward_blocks<scalar_t, DCNV3_MAX_BLOCK_BYTES>(0, cg, out, v0, v1, v2, v3, w0, w1,
                                                              w2, w3);
  for (; c < cg; ++c) out[c] += w0 * v0[c] + w1 * v1[c] + w2 * v2[c] + w3 * v3[c];
}

// The forward of one group's taps [first, first + P) of `plan` summed in `Blocks` vector registers
// of channels and stored once. Summing through the output row instead (a load and a store per
// tap) made the InternImage-T layers' forward about 30% slower. Same additions in the same order
// as forward_channels.
template <typename scalar_t, int Blocks, typename Plan>
inline void forward_group_in_registers(const Plan& plan, int64_t first, int64_t points,
                                       const scalar_t* mask_row, const scalar_t* image,
                                       int64_t channels, int64_t group_offset,
                                       const scalar_t* zeros, scalar_t* out) {
#if DCNV3_CHANNEL_BLOCKS
  using Block = ChannelBlock<scalar_t, DCNV3_MAX_BLOCK_BYTES>;
  typename Block::type sum[Blocks] = {};
  for (int64_t t = first; t < first + points; ++t) {
    if (!plan.reads[t]) continue;
    const Tap<scalar_t> tap = plan.tap(t);
    const scalar_t m = mask_row[t];
    const scalar_t w0 = tap.hy * tap.hx * m, w1 = tap.hy * tap.lx * m;
    const scalar_t w2 = tap.ly * tap.hx * m, w3 = tap.ly * tap.lx * m;
    const scalar_t* v[4];
    for (int k = 0; k < 4; ++k) v[k] = corner_address(tap, k, image, channels, group_offset, zeros);
    for (int b = 0; b < Blocks; ++b) {
      const int64_t c = b * Block::size;
      sum[b] = sum[b] + w0 * Block::load(v[0] + c) + w1 * Block::load(v[1] + c) +
               w2 * Block::load(v[2] + c) + w3 * Block::load(v[3] + c);
    }
  }
  for (int b = 0; b < Blocks; ++b) Block::store(out + b * Block::size, sum[b]);
#endif
}

// The forward of one output position with every group summed in registers, when a group's
// channels are 1, 2 or 4 vector blocks (InternImage's 16 float32 channels per group are one
// AVX-512 block, two AVX2 or four baseline ones). Returns false, having done nothing, otherwise.
template <typename scalar_t, typename Plan>
inline bool forward_position_in_registers(const Geometry& geo, const Plan& plan,
                                          const scalar_t* mask_row, const scalar_t* image,
                                          const scalar_t* zeros, scalar_t* out_row) {
#if DCNV3_CHANNEL_BLOCKS
  constexpr int64_t block = ChannelBlock<scalar_t, DCNV3_MAX_BLOCK_BYTES>::size;
  const int64_t cg = geo.group_channels;
  auto each_group = [&](auto blocks) {
    for (int64_t g = 0; g < geo.group; ++g) {
      forward_group_in_registers<scalar_t, decltype(blocks)::value>(
          plan, g * geo.points, geo.points, mask_row, image, geo.channels, g * cg, zeros,
          out_row + g * cg);
    }
    return true;
  };
  if (cg == block) return each_group(std::integral_constant<int, 1>{});
  if (cg == 2 * block) return each_group(std::integral_constant<int, 2>{});
  if (cg == 4 * block) return each_group(std::integral_constant<int, 4>{});
#endif
  return false;
}

// Results of backward_channels: dot products over channels of grad_out with the sampled value and
// with its derivatives along x and y.
template <typename scalar_t>
struct TapGradient {
  scalar_t value, dx, dy;
};

// The bilinear weights of one tap, and those times the mask.
template <typename scalar_t>
struct TapWeights {
  scalar_t hx, lx, hy, ly, w0, w1, w2, w3, mw0, mw1, mw2, mw3;
};

// backward_channels over channels [c, cg) in blocks of `Bytes` then narrower ones, adding the dot
// products to `result`; returns where the blocks stopped. Block-wise partial sums keep the dot
// products vectorised.
template <typename scalar_t, int Bytes>
inline int64_t backward_blocks(int64_t c, int64_t cg, const scalar_t* grad_out,
                               const scalar_t* v0, const scalar_t* v1, const scalar_t* v2,
                               const scalar_t* v3, scalar_t* gi0, scalar_t* gi1, scalar_t* gi2,
                               scalar_t* gi3, const TapWeights<scalar_t>& t,
                               TapGradient<scalar_t>& result) {
#if DCNV3_CHANNEL_BLOCKS
  using Block = ChannelBlock<scalar_t, Bytes>;
  if (c + Block::size <= cg) {
    typename Block::type sum_value{}, sum_dx{}, sum_dy{};
    for (; c + Block::size <= cg; c += Block::size) {
      const auto go = Block::load(grad_out + c);
      const auto a = Block::load(v0 + c), b = Block::load(v1 + c);
      const auto d = Block::load(v2 + c), e = Block::load(v3 + c);
      sum_value += go * (t.w0 * a + t.w1 * b + t.w2 * d + t.w3 * e);
      sum_dx += go * (t.hy * (b - a) + t.ly * (e - d));
      sum_dy += go * (t.hx * (d - a) + t.lx * (e - b));
      Block::store(gi0 + c, Block::load(gi0 + c) + t.mw0 * go);
      Block::store(gi1 + c, Block::load(gi1 + c) + t.mw1 * go);
      Block::store(gi2 + c, Block::load(gi2 + c) + t.mw2 * go);
      Block::store(gi3 + c, Block::load(gi3 + c) + t.mw3 * go);
    }
    result.value += Block::sum(sum_value);
    result.dx += Block::sum(sum_dx);
    result.dy += Block::sum(sum_dy);
  }
  if constexpr (Bytes > 16) {
    c = backward_blocks<scalar_t, Bytes / 2>(c, cg, grad_out, v0, v1, v2, v3, gi0, gi1, gi2, gi3,
                                             t, result);
  }
#endif
  return c;
}

// The channel loop of one backward tap: adds m * (bilinear weight) * grad_out to the four corners'
// grad_input (gi0..gi3) and returns the three dot products.
template <typename scalar_t>
inline TapGradient<scalar_t> backward_channels(int64_t cg, const scalar_t* grad_out,
                                               const scalar_t* v0, const scalar_t* v1,
                                               const scalar_t* v2, const scalar_t* v3,
                                               scalar_t* gi0, scalar_t* gi1, scalar_t* gi2,
                                               scalar_t* gi3, const Tap<scalar_t>& tap,
                                               scalar_t m) {
  TapWeights<scalar_t> t;
  t.hx = tap.hx, t.lx = tap.lx, t.hy = tap.hy, t.ly = tap.ly;
  t.w0 = t.hy * t.hx, t.w1 = t.hy * t.lx, t.w2 = t.ly * t.hx, t.w3 = t.ly * t.lx;
  t.mw0 = t.w0 * m, t.mw1 = t.w1 * m, t.mw2 = t.w2 * m, t.mw3 = t.w3 * m;
  TapGradient<scalar_t> result{0, 0, 0};
  int64_t c = backward_blocks<scalar_t, DCNV3_MAX_BLOCK_BYTES>(0, cg, grad_out, v0, v1, v2, v3,
                                                               gi0, gi1, gi2, gi3, t, result);
  for (; c < cg; ++c) {
    const scalar_t go = grad_out[c];
    const scalar_t a = v0[c], b = v1[c], d = v2[c], e = v3[c];
    result.value += go * (t.w0 * a + t.w1 * b + t.w2 * d + t.w3 * e);
    result.dx += go * (t.hy * (b - a) + t.ly * (e - d));
    result.dy += go * (t.hx * (d - a) + t.lx * (e - b));
    gi0[c] += t.mw0 * go;
    gi1[c] += t.mw1 * go;
    gi2[c] += t.mw2 * go;
    gi3[c] += t.mw3 * go;
  }
  return result;
}

// ---- per-position plans -------------------------------------------------------------------------

// Per tap t = g * P + p of an output position (every group's taps in point order, as offset and
// mask rows hold them): the kernel grid's displacement before offset_scale and the channel offset
// of the tap's group. Built once per kernel call, padded with zeros to whole vector blocks.
template <typename scalar_t>
struct TapTable {
  int64_t taps, padded;
  std::vector<scalar_t> grid_x, grid_y;
  std::vector<int64_t> group_offset;
  explicit TapTable(const Geometry& geo) : taps(geo.group * geo.points), padded(taps + 16) {
    grid_x.assign(padded, 0), grid_y.assign(padded, 0), group_offset.assign(padded, 0);
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t p = t % geo.points, i = p / geo.kernel_h, j = p % geo.kernel_h;
      grid_x[t] = static_cast<scalar_t>(i * geo.dilation_w - geo.centre_x);
      grid_y[t] = static_cast<scalar_t>(j * geo.dilation_h - geo.centre_y);
      group_offset[t] = (t / geo.points) * geo.group_channels;
    }
  }
};

// The sampling geometry of every tap of one output position, worked out before the channel loops:
// whether the tap reads anything, and its Tap (fractional position, and corners as pixel indices
// y * width + x). For float32 with vector blocks it is computed a block of taps at a time, which
// made the InternImage-T layers with many groups (stages 3 and 4) about 10% faster forward and 20%
// backward; otherwise locate() does it one tap at a time.
template <typename scalar_t>
struct PositionPlan {
  std::vector<int32_t> reads, corner[4];  // corner: -1 outside the image
  std::vector<scalar_t> lx, ly;

  explicit PositionPlan(const TapTable<scalar_t>& table)
      : reads(table.padded), lx(table.padded), ly(table.padded) {
    for (auto& c : corner) c.resize(table.padded);
  }

  Tap<scalar_t> tap(int64_t t) const {
    Tap<scalar_t> result;
    result.lx = lx[t], result.ly = ly[t], result.hx = 1 - lx[t], result.hy = 1 - ly[t];
    for (int k = 0; k < 4; ++k) result.corner[k] = corner[k][t];
    return result;
  }

  void fill(const Geometry& geo, const TapTable<scalar_t>& table, const scalar_t* offset_row,
            int64_t ho, int64_t wo) {
    const scalar_t scale = static_cast<scalar_t>(geo.offset_scale);
    const scalar_t base_x = static_cast<scalar_t>(wo * geo.stride_w - geo.pad_w + geo.centre_x);
    const scalar_t base_y = static_cast<scalar_t>(ho * geo.stride_h - geo.pad_h + geo.centre_y);
#if DCNV3_CHANNEL_BLOCKS
    if constexpr (std::is_same_v<scalar_t, float>) {
      fill_blocks(geo, table, offset_row, base_x, base_y, scale);
      return;
    }
#endif
    for (int64_t t = 0; t < table.taps; ++t) {
      const scalar_t x = base_x + (table.grid_x[t] + offset_row[2 * t]) * scale;
      const scalar_t y = base_y + (table.grid_y[t] + offset_row[2 * t + 1]) * scale;
      Tap<scalar_t> found;
      reads[t] = locate(x, y, geo.height, geo.width, found);
      if (!reads[t]) continue;  // the kernels skip such taps
      lx[t] = found.lx, ly[t] = found.ly;
      for (int k = 0; k < 4; ++k) corner[k][t] = static_cast<int32_t>(found.corner[k]);
    }
  }

#if DCNV3_CHANNEL_BLOCKS
  // Lanes Part, Part + 2, Part + 4, ... of the two blocks a and b taken together: the x (Part 0)
  // or y (Part 1) of a block of (x, y) pairs.
  template <int Part, size_t... I>
  static typename ChannelBlock<float, DCNV3_MAX_BLOCK_BYTES>::type every_other(
      typename ChannelBlock<float, DCNV3_MAX_BLOCK_BYTES>::type a,
      typename ChannelBlock<float, DCNV3_MAX_BLOCK_BYTES>::type b, std::index_sequence<I...>) {
#if defined(__clang__) || __GNUC__ >= 12
    return __builtin_shufflevector(a, b, (2 * I + Part)...);
#else
    typedef int32_t Ints __attribute__((vector_size(DCNV3_MAX_BLOCK_BYTES)));
    return __builtin_shuffle(a, b, Ints{static_cast<int32_t>(2 * I + Part)...});
#endif
  }

  // fill() for float32, one vector block of taps at a time: the same arithmetic as locate(), with
  // selects for its branches and floor done as truncation corrected downwards.
  void fill_blocks(const Geometry& geo, const TapTable<scalar_t>& table, const float* offset_row,
                   float base_x, float base_y, float scale) {
    using Block = ChannelBlock<float, DCNV3_MAX_BLOCK_BYTES>;
    using Floats = typename Block::type;
    typedef int32_t Ints __attribute__((vector_size(DCNV3_MAX_BLOCK_BYTES)));
    constexpr int64_t lanes = Block::size;
    const float height = static_cast<float>(geo.height), width = static_cast<float>(geo.width);
    const int32_t h = static_cast<int32_t>(geo.height), w = static_cast<int32_t>(geo.width);
    float tail[2 * lanes];  // the last block's offsets, zero-padded: the row may end mid-block
    for (int64_t t = 0; t < table.taps; t += lanes) {
      const float* pairs = offset_row + 2 * t;
      if (t + lanes > table.taps) {
        std::fill(tail, tail + 2 * lanes, 0.0f);
        std::copy(pairs, offset_row + 2 * table.taps, tail);
        pairs = tail;
      }
      const Floats first = Block::load(pairs), second = Block::load(pairs + lanes);
      const auto lane = std::make_index_sequence<lanes>{};
      const Floats x = base_x + (Block::load(table.grid_x.data() + t) +
                                 every_other<0>(first, second, lane)) * scale;
      const Floats y = base_y + (Block::load(table.grid_y.data() + t) +
                                 every_other<1>(first, second, lane)) * scale;
      // Comparisons with NaN are false: a NaN position reads nothing.
      const Ints inside = (y > -1.0f) & (y < height) & (x > -1.0f) & (x < width);
      const Floats zero{};
      const Floats xs = inside ? x : zero, ys = inside ? y : zero;  // in int range from here on
      Ints x0 = __builtin_convertvector(xs, Ints), y0 = __builtin_convertvector(ys, Ints);
      x0 += __builtin_convertvector(x0, Floats) > xs;  // -1 where truncation rounded up
      y0 += __builtin_convertvector(y0, Floats) > ys;
      const Ints top = inside & (y0 >= 0), bottom = inside & (y0 + 1 < h);
      const Ints left = x0 >= 0, right = x0 + 1 < w;
      const Ints pixel = y0 * w + x0, outside = Ints{} - 1;
      std::memcpy(reads.data() + t, &inside, sizeof inside);
      Block::store(lx.data() + t, xs - __builtin_convertvector(x0, Floats));
      Block::store(ly.data() + t, ys - __builtin_convertvector(y0, Floats));
      const Ints corners[4] = {(top & left) ? pixel : outside, (top & right) ? pixel + 1 : outside,
                               (bottom & left) ? pixel + w : outside,
                               (bottom & right) ? pixel + w + 1 : outside};
      for (int k = 0; k < 4; ++k) std::memcpy(corner[k].data() + t, &corners[k], sizeof(Ints));
    }
  }
#endif
};

// ---- the fused mask softmax ---------------------------------------------------------------------

// exp(x) for x <= 0 in blocks of float32 lanes, within 2 ulp of std::exp: x = k ln2 + r with
// |r| <= ln2 / 2, exp(r) by Cephes' expf polynomial, 2^k through the exponent bits. Below -87.3 it
// gives about 1e-38 instead of smaller or 0, which cannot move a softmax whose sum is at least 1;
// NaN stays NaN. Scalar std::exp, called once per point, took a fifth of the stage-1 forward.
#if DCNV3_CHANNEL_BLOCKS
template <int Bytes>
inline typename ChannelBlock<float, Bytes>::type exp_block(typename ChannelBlock<float, Bytes>::type x) {
  using Floats = typename ChannelBlock<float, Bytes>::type;
  typedef int32_t Ints __attribute__((vector_size(Bytes)));
  const Floats lowest = Floats{} - 87.3f;
  x = x < lowest ? lowest : x;  // lane-wise select; false for NaN, which stays
  const Floats round = Floats{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  Floats k = (x * 1.44269504088896341f + round) - round;
  k = k == k ? k : Floats{};  // NaN lanes: any finite k, their r is NaN anyway
  const Floats r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  Floats p = Floats{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Ints bits = (__builtin_convertvector(k, Ints) + 127) << 23;
  Floats two_to_k;
  std::memcpy(&two_to_k, &bits, sizeof two_to_k);
  return p * two_to_k;
}
#endif

// weights[g * P + p] = softmax over p of logits[g * P + p], for every group of one output position.
// NaN logits give NaN weights for their group, as torch.softmax does. `shifted` is scratch space of
// at least group * points + 64 / sizeof(scalar_t) elements.
template <typename scalar_t>
inline void softmax_groups(const scalar_t* logits, int64_t group, int64_t points, scalar_t* shifted,
                           scalar_t* weights) {
  const int64_t taps = group * points;
  for (int64_t g = 0; g < group; ++g) {
    const scalar_t* l = logits + g * points;
    scalar_t largest = l[0];
    for (int64_t p = 1; p < points; ++p) largest = std::max(largest, l[p]);
    for (int64_t p = 0; p < points; ++p) shifted[g * points + p] = l[p] - largest;
  }
#if DCNV3_CHANNEL_BLOCKS
  if constexpr (std::is_same_v<scalar_t, float>) {
    using Block = ChannelBlock<float, DCNV3_MAX_BLOCK_BYTES>;
    std::fill(shifted + taps, shifted + taps + Block::size, 0.0f);  // the last block's spare lanes
    for (int64_t t = 0; t < taps; t += Block::size) {
      Block::store(shifted + t, exp_block<DCNV3_MAX_BLOCK_BYTES>(Block::load(shifted + t)));
    }
  } else {
    for (int64_t t = 0; t < taps; ++t) shifted[t] = std::exp(shifted[t]);
  }
#else
  for (int64_t t = 0; t < taps; ++t) shifted[t] = std::exp(shifted[t]);
#endif
  for (int64_t g = 0; g < group; ++g) {
    const scalar_t* e = shifted + g * points;
    scalar_t sum = 0;
    for (int64_t p = 0; p < points; ++p) sum += e[p];
    const scalar_t inverse = scalar_t(1) / sum;
    for (int64_t p = 0; p < points; ++p) weights[g * points + p] = e[p] * inverse;
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
  const TapTable<scalar_t> table(geo);

  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    const std::vector<scalar_t> zeros(cg, scalar_t(0));  // what an outside corner reads
    PositionPlan<scalar_t> plan(table);
    std::vector<scalar_t> weights(softmax ? geo.group * geo.points : 0);
    std::vector<scalar_t> scratch(softmax ? geo.group * geo.points + 64 / sizeof(scalar_t) : 0);
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t wo = pos % geo.out_w, ho = (pos / geo.out_w) % geo.out_h;
      const int64_t n = pos / (geo.out_w * geo.out_h);
      const scalar_t* image = input + n * geo.height * geo.width * geo.channels;
      const scalar_t* offset_row = offset + pos * geo.group * geo.points * 2;
      const scalar_t* mask_row = mask + pos * geo.group * geo.points;
      if (softmax) {
        softmax_groups(mask_row, geo.group, geo.points, scratch.data(), weights.data());
        mask_row = weights.data();
      }
      scalar_t* out_row = output + pos * geo.channels;
      plan.fill(geo, table, offset_row, ho, wo);
      if (forward_position_in_registers(geo, plan, mask_row, image, zeros.data(), out_row)) {
        continue;
      }
      std::fill(out_row, out_row + geo.channels, scalar_t(0));
      for (int64_t t = 0; t < table.taps; ++t) {
        if (!plan.reads[t]) continue;
        const Tap<scalar_t> tap = plan.tap(t);
        const scalar_t m = mask_row[t];
        const scalar_t* v[4];
        for (int k = 0; k < 4; ++k) {
          v[k] = corner_address(tap, k, image, geo.channels, table.group_offset[t], zeros.data());
        }
        forward_channels(cg, out_row + table.group_offset[t], v[0], v[1], v[2], v[3],
                         tap.hy * tap.hx * m, tap.hy * tap.lx * m, tap.ly * tap.hx * m,
                         tap.ly * tap.lx * m);
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
  const TapTable<scalar_t> table(geo);

  at::parallel_for(0, chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    const std::vector<scalar_t> zeros(cg, scalar_t(0));  // what an outside corner reads
    PositionPlan<scalar_t> plan(table);
    std::vector<scalar_t> discard(4 * cg);  // where an outside corner's gradient goes
    std::vector<scalar_t> weights(softmax ? geo.group * geo.points : 0);
    std::vector<scalar_t> scratch(softmax ? geo.group * geo.points + 64 / sizeof(scalar_t) : 0);

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
            softmax_groups(mask_row, geo.group, geo.points, scratch.data(), weights.data());
            mask_row = weights.data();
          }

          plan.fill(geo, table, offset_row, ho, wo);
          for (int64_t t = 0; t < table.taps; ++t) {
            if (!plan.reads[t]) {
              grad_offset_row[2 * t] = grad_offset_row[2 * t + 1] = grad_mask_row[t] = 0;
              continue;
            }
            const Tap<scalar_t> tap = plan.tap(t);
            const int64_t channel = table.group_offset[t];
            const scalar_t* v[4];
            scalar_t* gi[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = corner_address(tap, k, image, geo.channels, channel, zeros.data());
              // (dest + image_origin * C alone may lie before a chunk's buffer: not a base.)
              gi[k] = tap.corner[k] >= 0
                          ? dest + (image_origin + tap.corner[k]) * geo.channels + channel
                          : discard.data() + k * cg;
            }
            const scalar_t m = mask_row[t];
            const TapGradient<scalar_t> grad =
                backward_channels(cg, grad_output + pos * geo.channels + channel, v[0], v[1], v[2],
                                  v[3], gi[0], gi[1], gi[2], gi[3], tap, m);
            const scalar_t scale = static_cast<scalar_t>(geo.offset_scale);
            grad_mask_row[t] = grad.value;
            grad_offset_row[2 * t] = grad.dx * m * scale;
            grad_offset_row[2 * t + 1] = grad.dy * m * scale;
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
