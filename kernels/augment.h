// The augment family: DeiT III's per-image training and evaluation transforms (RECIPE.md section
// 3) on 8-bit RGB images, normalisation to float, and mixup / cutmix of a batch.
//
// Every random choice is drawn on the host into the plain parameter structs below (data/
// augment_params.h and data/mixup.h draw them); the functions here only apply them.
//
// - The per-op CPU functions are the reference arithmetic, reproducing Pillow 9.4 (what the
//   reference code's torchvision transforms run) including its uint8 rounding after every op.
//   data/transforms.h wraps them for ImageU8 images, and tests/test_augment_reference.cpp checks
//   them against Pillow's own outputs.
// - augment_batch_cpu / augment_batch_cuda: the whole per-sample chain over a batch of
//   variable-size source images -> the normalised batch. The CUDA twin evaluates the same
//   per-value arithmetic (kernels/augment_arith.h), so it produces the same uint8 levels and the
//   same floats.
// - mix_images / mix_targets: timm's Mixup(mode='batch'): sample i mixes with sample B-1-i.
//
// Images are (H, W, 3) RGB uint8, row-major (HWC). The normalised batch is (B, 3, S, S) float32
// planes (NCHW), what the patch unfold reads (kernels/tokens.h).
#pragma once
#include <array>
#include <cstdint>
#include <string>

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// ---------------------------------------------------------------------------------------------
// Parameters (plain structs: the GPU stage uploads arrays of them as they are).

enum class CropMode : uint8_t {
  kRandomResized,  // RandomResizedCrop (ImageNet-1k recipe)
  kSimpleRandom,   // Simple Random Crop (ImageNet-21k recipe, --src); also evaluation's crop
};

enum class ThreeAugmentOp : uint8_t { kNone, kGrayscale, kSolarize, kBlur };

enum class JitterOp : uint8_t { kBrightness, kContrast, kSaturation };

// Where the size x size output square comes from.
// kRandomResized: the box (x, y, w, h) of the source image is resampled (bicubic) to size x size.
// kSimpleRandom:  the whole source is resampled to (resized_height, resized_width), then padded
//                 by `padding` on every side by reflection; the output is the size x size square
//                 at (x, y) of that padded image (w = h = size). Simple Random Crop resizes the
//                 shorter side to `size`; evaluation resizes it to size / crop_ratio and takes the
//                 centred square with padding 0.
struct CropParams {
  CropMode mode = CropMode::kRandomResized;
  int size = 0;
  int x = 0, y = 0, w = 0, h = 0;
  int resized_height = 0, resized_width = 0;  // kSimpleRandom only
  int padding = 0;                            // kSimpleRandom only
};

// RandAugment (timm's rand_augment_transform, the recipe's fine-tuning augmentation in place of
// 3-Augment and colour jitter): each step is one of timm's ops with its drawn argument, applied
// as timm applies it to a PIL image. Rotate, ShearX/Y and TranslateX/YRel are all kAffine: the
// sampler (data/augment_params.h) turns each into the matrix Pillow's transform receives.
enum class RandAugmentOp : uint8_t {
  kNone,          // a step that was not drawn, or drawn and skipped (timm applies each with p 0.5)
  kAutoContrast,  // ImageOps.autocontrast: each channel stretched to [0, 255]
  kEqualize,      // ImageOps.equalize: each channel's histogram equalised
  kInvert,        // ImageOps.invert: 255 - v
  kPosterize,     // ImageOps.posterize: keep the `level` high bits (0..8)
  kSolarize,      // ImageOps.solarize: v >= `level` (0..256) becomes 255 - v
  kSolarizeAdd,   // timm's solarize_add: v < 128 becomes min(255, v + `level`) (0..255)
  kColor,         // ImageEnhance.Color(`factor`): the saturation blend of the colour jitter
  kContrast,      // ImageEnhance.Contrast(`factor`)
  kBrightness,    // ImageEnhance.Brightness(`factor`)
  kSharpness,     // ImageEnhance.Sharpness(`factor`): blend with the 3x3 SMOOTH filter's output
  kAffine,        // Image.transform(AFFINE, `affine`, BICUBIC, fillcolor=timm's img_mean; see
                  // rand_augment_fill in kernels/rand_augment_arith.h)
};

struct RandAugmentStep {
  RandAugmentOp op = RandAugmentOp::kNone;
  int32_t level = 0;    // kPosterize, kSolarize, kSolarizeAdd
  float factor = 1.0f;  // kColor, kContrast, kBrightness, kSharpness; float, as Pillow's blend
  // kAffine: Pillow's AFFINE data (a, b, c, d, e, f). Output pixel (x, y) reads the input at
  // (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5 and y' = y + 0.5, bicubic; a point outside
  // the input keeps the fill colour.
  double affine[6] = {1, 0, 0, 0, 1, 0};
};

// RandAugment's most steps per view (timm's num_layers: the recipe's 2).
constexpr int kMaxRandAugmentSteps = 4;

// Everything about one view, in the order it is applied: crop, flip, 3-Augment op, colour jitter,
// RandAugment's steps.
struct AugmentParams {
  CropParams crop;
  bool flip = false;
  ThreeAugmentOp three_augment = ThreeAugmentOp::kNone;
  float blur_sigma = 0.0f;  // kBlur only; float, as Pillow receives it
  // Color jitter: one factor per op (1 = unchanged), applied in `jitter_order`. float32, as
  // torchvision draws them and Pillow receives them.
  float brightness = 1.0f, contrast = 1.0f, saturation = 1.0f;
  std::array<JitterOp, 3> jitter_order = {JitterOp::kBrightness, JitterOp::kContrast,
                                          JitterOp::kSaturation};
  std::array<RandAugmentStep, kMaxRandAugmentSteps> rand_augment{};
};

// One batch's mixing. lambda is the weight of the sample itself (1 = unchanged). With cutmix,
// the box rows [y0, y1) x columns [x0, x1) come from the partner sample and
// lambda = 1 - box area / image area.
struct MixParams {
  bool cutmix = false;
  double lambda = 1.0;
  int y0 = 0, y1 = 0, x0 = 0, x1 = 0;
};

// One source image of a packed batch: (height, width, 3) uint8 at pixels + offset.
struct SourceImage {
  int64_t offset = 0;
  int32_t height = 0, width = 0;
  // CUDA only: where this sample's scratch starts in the workspace (plan_augment_cuda sets it).
  int64_t scratch_offset = 0;
};

// Throws std::invalid_argument, saying what is wrong, unless `p` describes a size x size view
// that lies inside a height x width source (crop box, padding, padded window), with a blur sigma
// in [0, 1000], finite colour factors >= 0 and RandAugment steps whose arguments are in their
// ranges (a finite affine matrix). augment_image_cpu checks its sample with it first, and
// plan_augment_cuda checks every sample before any kernel runs, so the CUDA kernels never read
// outside a source.
void check_augment_params(const AugmentParams& p, int height, int width, int size);

// ---------------------------------------------------------------------------------------------
// The per-op CPU reference. src: (h, w, 3) -> dst, which must not overlap src. Arguments out of
// range (a box outside the image, padding >= min(h, w), a negative factor, ...) throw
// std::invalid_argument saying what is wrong.

// dst: (ch, cw, 3) = the cw x ch box of src whose top-left pixel is (x, y).
void crop_cpu(const uint8_t* src, int h, int w, int x, int y, int cw, int ch, uint8_t* dst);
// dst: (h, w, 3), mirrored left-right.
void hflip_cpu(const uint8_t* src, int h, int w, uint8_t* dst);
// dst: (h + 2p, w + 2p, 3), mirrored about the edge pixels (reflect_index); p < min(h, w).
void pad_reflect_cpu(const uint8_t* src, int h, int w, int p, uint8_t* dst);
// dst: (out_h, out_w, 3), Pillow's bicubic: a horizontal then a vertical pass, each rounded to
// uint8, a pass whose size does not change skipped (kernels/augment_arith.h has the arithmetic).
void resize_bicubic_cpu(const uint8_t* src, int h, int w, uint8_t* dst, int out_h, int out_w);
// dst: (h, w, 3), the luma in all three channels.
void grayscale_cpu(const uint8_t* src, int h, int w, uint8_t* dst);
// ImageOps.solarize: v >= threshold (0..256; 3-Augment's is 128) becomes 255 - v.
void solarize_cpu(const uint8_t* src, int h, int w, uint8_t* dst, int threshold = 128);
// Pillow's GaussianBlur(radius = sigma): 3 extended-box passes along the rows, then 3 along the
// columns, each rounded to uint8. sigma in [0, 1000].
void gaussian_blur_cpu(const uint8_t* src, int h, int w, float sigma, uint8_t* dst);
// ImageEnhance blends with a degenerate image: black, the mean-luma grey, the pixel's own luma.
void adjust_brightness_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst);
void adjust_contrast_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst);
void adjust_saturation_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst);
// RandAugment's ops (RandAugmentOp says what each computes); dst: (h, w, 3).
void autocontrast_cpu(const uint8_t* src, int h, int w, uint8_t* dst);
void equalize_cpu(const uint8_t* src, int h, int w, uint8_t* dst);
void invert_cpu(const uint8_t* src, int h, int w, uint8_t* dst);
void posterize_cpu(const uint8_t* src, int h, int w, int bits, uint8_t* dst);
void solarize_add_cpu(const uint8_t* src, int h, int w, int amount, uint8_t* dst);
void adjust_sharpness_cpu(const uint8_t* src, int h, int w, float factor, uint8_t* dst);
void affine_bicubic_cpu(const uint8_t* src, int h, int w, const double affine[6], uint8_t* dst);
// Throws std::invalid_argument unless the step's op is known and its argument in its range.
void check_rand_augment_step(const RandAugmentStep& step);
// One step (kNone copies). Throws std::invalid_argument for an argument out of range.
void rand_augment_step_cpu(const uint8_t* src, int h, int w, const RandAugmentStep& step,
                           uint8_t* dst);

// image: (h, w, 3) -> out: (3, h, w) float planes, (v / 255 - mean) / std.
void normalize_cpu(const uint8_t* image, int h, int w, float* out);

// The crop of `c` (RandomResizedCrop: box, then resize; Simple Random Crop / evaluation: resize,
// reflect pad, then the window, resizing only the pixels the window reads): src (h, w, 3) -> out
// (c.size, c.size, 3). `c` must have passed check_augment_params.
void crop_view_cpu(const uint8_t* src, int h, int w, const CropParams& c, uint8_t* out);

// The checks of the ops whose output size comes from their arguments, for callers that size the
// output first; they throw as the ops do.
void check_crop_box(int x, int y, int w, int h, int height, int width);
void check_reflect_padding(int padding, int height, int width);
void check_resize(int h, int w, int out_h, int out_w);
// A number in these checks' messages, as a user writes it: 128.5 and -1, not 128.500000 and
// -1.000000.
std::string number_text(double v);

// One view before normalisation: src (h, w, 3) -> out (size, size, 3): crop_view_cpu, flip, the
// 3-Augment op, the colour jitter in p.jitter_order, RandAugment's steps. Checks `p`
// (check_augment_params).
void augment_image_cpu(const uint8_t* src, int h, int w, const AugmentParams& p, int size,
                       uint8_t* out);

// ---------------------------------------------------------------------------------------------
// The batch stage.

// pixels: packed sources, sources: (batch), params: (batch) -> out: (batch, 3, size, size),
// normalised. Sample i is augment_image_cpu of source i, then normalize_cpu.
void augment_batch_cpu(const uint8_t* pixels, const SourceImage* sources,
                       const AugmentParams* params, int64_t batch, int size, float* out);

// images: (batch, channels, height, width) float, mixed in place: sample i with sample
// batch-1-i (blended with mixup, the box swapped with cutmix). batch must be even (it throws
// otherwise), and a cutmix box must lie inside height x width (not checked, by either twin:
// data/mixup.h draws it clipped, as timm's rand_bbox does).
void mix_images_cpu(const MixParams& p, float* images, int64_t batch, int channels, int height,
                    int width);

// Throws std::invalid_argument naming the first label outside [0, num_classes). labels: (batch),
// host memory.
void check_labels(const int32_t* labels, int64_t batch, int num_classes);

// labels: (batch) -> targets: (batch, num_classes): one-hot with label smoothing, mixed as
// lambda * y[i] + (1 - lambda) * y[batch-1-i]; with `binarize`, then target > 0 -> 1 else 0 (the
// reference's BCE targets). Labels must lie in [0, num_classes).
void mix_targets_cpu(const MixParams& p, const int32_t* labels, int64_t batch, int num_classes,
                     double smoothing, bool binarize, float* targets);

#if DEIT_HAVE_CUDA
// CUDA. Host arrays in: checks every sample (check_augment_params), sets each source's
// scratch_offset, and returns the bytes of device workspace augment_batch_cuda needs for them.
int64_t plan_augment_cuda(SourceImage* sources, const AugmentParams* params, int64_t batch,
                          int size);

// The same as augment_batch_cpu, on the device: pixels, sources (planned by plan_augment_cuda),
// params and workspace are device memory; batch <= 65535. Output bit for bit the CPU twin's.
void augment_batch_cuda(const uint8_t* pixels, const SourceImage* sources,
                        const AugmentParams* params, int64_t batch, int size, float* out,
                        uint8_t* workspace, cudaStream_t stream);

// The same as the CPU twins; images, labels and targets are device memory. The labels must have
// been checked on the host with check_labels (a kernel cannot report a bad one).
void mix_images_cuda(const MixParams& p, float* images, int64_t batch, int channels, int height,
                     int width, cudaStream_t stream);
void mix_targets_cuda(const MixParams& p, const int32_t* labels, int64_t batch, int num_classes,
                      double smoothing, bool binarize, float* targets, cudaStream_t stream);
#endif

}  // namespace deit::kernels
