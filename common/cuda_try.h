/* cuda_try.h — checking CUDA runtime calls in the .cu files of engine/ and
 * sketch/: a failure returns AP_ERR_RUNTIME from the enclosing function
 * (which has an `ap_error *err`), naming the call, CUDA's message and what was
 * being done. Include after cuda_runtime.h and status.h. */
#ifndef AP_CUDA_TRY_H
#define AP_CUDA_TRY_H

#define CUDA_TRY(call, what)                                                                  \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            return ap_error_set(err, AP_ERR_RUNTIME, "%s failed (%s) while %s", #call,        \
                                cudaGetErrorString(e_), what);                                \
    } while (0)

#define KERNEL_TRY(what) CUDA_TRY(cudaGetLastError(), what)

#endif
