/* libjpeg-turbo's libjpeg API for what TurboJPEG cannot do: decode a region of a DCT-scaled
 * image and stop right after its last row (tj3Decompress8 entropy-decodes the remaining rows to
 * finish cleanly). Errors longjmp back here and come out as a message; the Rust side
 * (src/ffi/jpeg.rs) is the only caller. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include "jpeglib.h"
#include "jerror.h"

struct rt_err {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int truncated;
};

static void rt_error_exit(j_common_ptr cinfo) {
  struct rt_err *e = (struct rt_err *)cinfo->err;
  longjmp(e->jump, 1);
}

static void rt_emit(j_common_ptr cinfo, int level) {
  /* Warnings (level -1) are ignored, as PIL ignores them, except a premature end of data:
   * PIL refuses truncated files, so they count as bad. */
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) ((struct rt_err *)cinfo->err)->truncated = 1;
}

static void fail(struct jpeg_decompress_struct *c, char *msg, size_t msg_len) {
  char buf[JMSG_LENGTH_MAX];
  c->err->format_message((j_common_ptr)c, buf);
  snprintf(msg, msg_len, "%s", buf);
}

int rt_jpeg_header(const unsigned char *data, unsigned long len, int *width, int *height, int *colorspace,
                   char *msg, size_t msg_len) {
  struct jpeg_decompress_struct c;
  struct rt_err e;
  c.err = jpeg_std_error(&e.pub);
  e.pub.error_exit = rt_error_exit;
  e.pub.emit_message = rt_emit;
  e.truncated = 0;
  if (setjmp(e.jump)) {
    fail(&c, msg, msg_len);
    jpeg_destroy_decompress(&c);
    return -1;
  }
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, data, len);
  jpeg_read_header(&c, TRUE);
  *width = (int)c.image_width;
  *height = (int)c.image_height;
  *colorspace = (int)c.jpeg_color_space;
  jpeg_destroy_decompress(&c);
  return 0;
}

/* Decodes rows [y, y + h) and columns from x (moved left to the iMCU boundary) of the image
 * scaled by num/8, as RGB into out (capacity out_cap bytes). w = 0 or h = 0: the whole image.
 * On success *rx, *ry, *rw, *rh describe the decoded region (row stride *rw * 3). */
int rt_jpeg_decode(const unsigned char *data, unsigned long len, int num, int x, int y, int w, int h,
                   unsigned char *out, size_t out_cap, int *rx, int *ry, int *rw, int *rh, char *msg,
                   size_t msg_len) {
  struct jpeg_decompress_struct c;
  struct rt_err e;
  c.err = jpeg_std_error(&e.pub);
  e.pub.error_exit = rt_error_exit;
  e.pub.emit_message = rt_emit;
  e.truncated = 0;
  if (setjmp(e.jump)) {
    fail(&c, msg, msg_len);
    jpeg_destroy_decompress(&c);
    return -1;
  }
  jpeg_create_decompress(&c);
  jpeg_mem_src(&c, data, len);
  jpeg_read_header(&c, TRUE);
  c.out_color_space = JCS_RGB;
  c.scale_num = (unsigned int)num;
  c.scale_denom = 8;
  jpeg_start_decompress(&c);
  JDIMENSION full_w = c.output_width, full_h = c.output_height;
  if (w <= 0 || h <= 0) {
    x = 0;
    y = 0;
    w = (int)full_w;
    h = (int)full_h;
  }
  if (x < 0 || y < 0 || (JDIMENSION)(x + w) > full_w || (JDIMENSION)(y + h) > full_h) {
    snprintf(msg, msg_len, "region %dx%d+%d+%d outside the %ux%u image", w, h, x, y, full_w, full_h);
    jpeg_destroy_decompress(&c);
    return -1;
  }
  JDIMENSION cx = (JDIMENSION)x, cw = (JDIMENSION)w;
  if (cx != 0 || cw != full_w) jpeg_crop_scanline(&c, &cx, &cw);
  if ((size_t)cw * (size_t)h * 3 > out_cap) {
    snprintf(msg, msg_len, "output buffer too small for %ux%d", cw, h);
    jpeg_destroy_decompress(&c);
    return -1;
  }
  if (y > 0) jpeg_skip_scanlines(&c, (JDIMENSION)y);
  for (int row = 0; row < h; row++) {
    JSAMPROW p = out + (size_t)row * cw * 3;
    if (jpeg_read_scanlines(&c, &p, 1) != 1) {
      snprintf(msg, msg_len, "decoder returned no row %d", y + row);
      jpeg_destroy_decompress(&c);
      return -1;
    }
  }
  if (e.truncated) {
    snprintf(msg, msg_len, "Premature end of JPEG file (truncated)");
    jpeg_destroy_decompress(&c);
    return -1;
  }
  /* The rows below are never needed: abort instead of finishing (which would decode them). */
  jpeg_abort_decompress(&c);
  jpeg_destroy_decompress(&c);
  *rx = (int)cx;
  *ry = y;
  *rw = (int)cw;
  *rh = h;
  return 0;
}
