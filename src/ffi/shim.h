// C interface of the shim: what tch does not expose. Every function catches C++ exceptions and
// returns 0 on success or -1 with a malloc'ed message in *err (freed by the caller via rt_free).
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void *rt_tensor;  // a torch::Tensor*, as tch's C_tensor

void rt_free(char *p);

// device_type: 0 = CPU, 1 = CUDA. dtype: c10::ScalarType code (5 = Half, 15 = BFloat16).
int rt_autocast_set_enabled(int device_type, int enabled, char **err);
int rt_autocast_is_enabled(int device_type, int *out, char **err);
int rt_autocast_set_dtype(int device_type, int dtype, char **err);
int rt_autocast_get_dtype(int device_type, int *out, char **err);
int rt_autocast_increment_nesting(char **err);
int rt_autocast_decrement_nesting(int *out, char **err);
int rt_autocast_clear_cache(char **err);

// Returns a new tensor (caller owns) in the channels_last memory format / contiguous format.
int rt_to_channels_last(rt_tensor t, rt_tensor *out, char **err);
int rt_is_channels_last(rt_tensor t, int *out, char **err);

// TF32 on CUDA matmuls and cuDNN convolutions.
int rt_set_allow_tf32(int allow, char **err);

#ifdef __cplusplus
}
#endif
