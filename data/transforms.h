// The CPU augmentation reference: the pixel operations of DeiT III's training and evaluation
// transforms (RECIPE.md section 3) on 8-bit RGB images, and the final normalisation to float.
//
// The reference code runs torchvision 0.14 transforms on PIL images, so every op here reproduces
// what Pillow 9.4 computes, including its integer rounding; tests/test_augment_reference.cpp
// compares each op with outputs of scripts/make_augment_reference.py. The arithmetic itself is the
// augment kernels' CPU twin (kernels/augment.h), which these functions wrap for ImageU8 images
// after checking their arguments; the GPU stage computes the same values.
//
// Images are (H, W, 3) RGB uint8 (ImageU8). Ops return a new image. Invalid arguments (a crop
// outside the image, a negative factor, ...) throw std::invalid_argument with a message that
// says what is wrong.
#pragma once
#include <string>

#include "data/augment_params.h"
#include "data/image.h"
#include "engine/rng.h"
#include "kernels/augment_arith.h"

namespace deit::data {

// ---- Geometry: these only move pixels, so they match torchvision exactly. ----

// The w x h box whose top-left pixel is (x, y); the box must lie inside the image.
ImageU8 crop(const ImageU8& src, int x, int y, int w, int h);

// Mirror left-right.
ImageU8 hflip(const ImageU8& src);

// Pad every side by `padding` pixels mirrored about the edge pixel, which is not repeated
// (numpy's 'reflect', used by torchvision's pad on PIL images): row 0 1 2 3 with padding 2
// becomes 2 1 | 0 1 2 3 | 2 1. Requires padding < min(H, W).
ImageU8 pad_reflect(const ImageU8& src, int padding);

// Pillow's Image.resize(size, Image.BICUBIC) (Pillow 9.4, libImaging/Resample.c), which the
// reference's Resize and RandomResizedCrop call: Keys' cubic kernel (a = -0.5), stretched by the
// scale factor when shrinking (antialiasing); pixel centres at i + 0.5; taps outside the image
// dropped and the rest renormalised; a horizontal then a vertical pass, each with 22-bit
// fixed-point weights and rounding to uint8 in between, a pass whose size stays skipped.
// src: (H, W, 3) -> (out_height, out_width, 3).
ImageU8 resize_bicubic(const ImageU8& src, int out_height, int out_width);

// torchvision Resize(size) with an int: the shorter side becomes `size`, the longer side
// int(size * long / short); bicubic as Pillow (resize_bicubic).
ImageU8 resize_shorter_side(const ImageU8& src, int size);

// torchvision CenterCrop(size): top = round((H - size) / 2), left likewise, with Python's round
// (half to even). Requires size <= min(H, W).
ImageU8 center_crop(const ImageU8& src, int size);

// ---- 3-Augment. ----

// torchvision Grayscale(3): ITU-R 601-2 luma as Pillow's convert('L') computes it, in 16-bit fixed
// point with rounding, (19595 R + 38470 G + 7471 B + 32768) >> 16, copied to all three channels.
ImageU8 grayscale(const ImageU8& src);

// PIL ImageOps.solarize: every channel value v >= threshold becomes 255 - v (3-Augment's
// threshold is 128; RandAugment's varies).
ImageU8 solarize(const ImageU8& src, int threshold = 128);

// PIL's ImageFilter.GaussianBlur(radius=sigma), which the reference's GaussianBlur class applies.
// Pillow does not convolve with a sampled Gaussian: it runs 3 passes of an "extended box" filter
// (Gwosdek et al. 2011, whose variance matches sigma^2) along each row, then 3 along each column,
// rounding to uint8 after every pass and repeating the edge pixel beyond the border. This does
// the same, in Pillow's fixed-point arithmetic.
ImageU8 gaussian_blur(const ImageU8& src, float sigma);

// ---- Color jitter, as torchvision's adjust_* on PIL images (PIL.ImageEnhance). ----
// Each blends the image with a "degenerate" image, Pillow's Image.blend(degenerate, image, f):
// d + f * (v - d) in float32, clamped to [0, 255] and truncated (not rounded). f = 1 is identity.

// Degenerate image: black.
ImageU8 adjust_brightness(const ImageU8& src, float factor);
// Degenerate image: uniform grey at the mean luma of the image, int(mean + 0.5).
ImageU8 adjust_contrast(const ImageU8& src, float factor);
// Degenerate image: the image's own luma (its grayscale version).
ImageU8 adjust_saturation(const ImageU8& src, float factor);

// ---- RandAugment (timm's, applied to PIL images: kernels/augment.h RandAugmentOp). ----

// One step on the whole image (kNone copies it). Throws std::invalid_argument for an argument out
// of range.
ImageU8 rand_augment_step(const ImageU8& src, const RandAugmentStep& step);

// ---- Whole transforms. ----

// The crop of CropParams (random resized crop, or resize + reflect pad + crop).
ImageU8 apply_crop(const ImageU8& src, const CropParams& crop);

// One training view before normalisation: crop, flip, 3-Augment op, color jitter in order,
// RandAugment's steps. Output: (size, size, 3).
ImageU8 augment_train(const ImageU8& src, const AugmentParams& params);

// Evaluation: resize the shorter side to int(size / crop_ratio) (bicubic), centre crop size.
ImageU8 eval_transform(const ImageU8& src, int size, double crop_ratio);

// ---- To float. ----

// ImageNet mean and std, as float32 (torchvision's Normalize holds them as float32 tensors).
inline constexpr float kImageNetMean[3] = {kernels::augment_arith::imagenet_mean(0),
                                           kernels::augment_arith::imagenet_mean(1),
                                           kernels::augment_arith::imagenet_mean(2)};
inline constexpr float kImageNetStd[3] = {kernels::augment_arith::imagenet_std(0),
                                          kernels::augment_arith::imagenet_std(1),
                                          kernels::augment_arith::imagenet_std(2)};

// torchvision ToTensor + Normalize, in float32 as they compute it: (v / 255 - mean) / std.
// image: (H, W, 3) uint8 -> out: (3, H, W) float planes, the layout the patch embedding reads.
void normalize(const ImageU8& image, float* out);

// ---- Named ops of `deit augment`. ----

// One op given as NAME or NAME:ARGS, e.g. "hflip", "blur:1.5", "crop:0,0,16,16". Ops: hflip,
// grayscale, solarize[:THRESHOLD] (128 alone), blur:SIGMA, brightness:F, contrast:F,
// saturation:F, resize:SHORT_SIDE, center-crop:SIZE, crop:X,Y,W,H, pad-reflect:P, the random
// rrc:SIZE and src:SIZE (crop only, drawn from rng), and RandAugment's ops with explicit
// arguments: autocontrast, equalize, invert, posterize:BITS, solarize-add:AMOUNT, sharpness:F,
// rotate:DEGREES (about the centre, counterclockwise), shear-x:F, shear-y:F, translate-x:PIXELS,
// translate-y:PIXELS (rand_augment_step; the geometric ones with augment_params.h's matrices).
// Numbers are read as doubles. Throws std::invalid_argument naming the op and what is wrong
// with it.
ImageU8 apply_named_op(const ImageU8& image, const std::string& spec, Rng& rng);

// Throws what apply_named_op throws for an unknown op, or arguments that are not its count of
// numbers: what can be said of `spec` before there is an image (slow to decode, or to read from a
// pipe) to apply it to.
void check_named_op(const std::string& spec);

// The list of named ops with their arguments, one per line, for help and error messages.
std::string named_op_usage();

}  // namespace deit::data
