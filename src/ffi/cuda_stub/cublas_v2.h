// Stub: the CUDA math library types that ATen's CUDA headers name in declarations (handles,
// status enums), so that c10d's ProcessGroupNCCL.hpp compiles from the PyPI CUDA runtime, CRT and
// NCCL headers alone. dist_nccl.cpp calls none of these libraries.
#pragma once
typedef struct cublasContext *cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
