// The one translation unit that compiles the stb implementations the data layer uses: decoding
// (stb_image) and PNG/JPEG/BMP writing (stb_image_write). Every other file includes the headers
// without the IMPLEMENTATION macros.
#define STB_IMAGE_IMPLEMENTATION
// Only the decoders deit hands files to. JPEG goes to libjpeg-turbo (data/jpeg_decode.h), yet
// stb_image would take a file that opens with fill bytes before its start marker (FF FF D8 ...),
// which Pillow refuses, into a JPEG decoder that writes past a Huffman table's arrays when a
// table's code counts add up to more than 256 (nothings/stb#1289, found by fuzzing). Radiance HDR
// and Softimage PIC are formats Pillow cannot read at all, and stb_image 2.27's HDR decoder loops
// for ever on a run cut short (CVE-2021-42715). Binary PNMs data/image_io.cpp parses and decodes
// itself.
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PSD
#define STB_IMAGE_WRITE_IMPLEMENTATION

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#include <stb_image.h>
#include <stb_image_write.h>
#pragma GCC diagnostic pop
